"""The run's persisted state: which steps of which round are done, and what they produced.

A step is marked done only after everything it wrote is on disk, so killing the driver at any
point and starting it again repeats at most the step that was running, and every step is
written to be safe to repeat (deterministic sample ids, idempotent publishing, labels
re-aggregated from the service, Ray Train resuming from its last checkpoint).

Evaluations are kept per prompt split (online/eval_results.py); an old-shape, held-out-only
evaluation is rewrapped on load, so a run started by older code resumes."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from t2i_rlhf.online.eval_results import normalise_eval

log = logging.getLogger(__name__)


@dataclass
class RunState:
    model_version: str = "base"
    model_location: str | None = None  # version directory; None: the base pipeline
    reward_model_version: str | None = None
    reward_model_location: str | None = None
    rounds: dict[str, dict[str, dict]] = field(default_factory=dict)  # round -> step -> result
    base_eval: dict | None = None  # per split (online/eval_results.py)
    finished: bool = False
    # round -> wall time and labeller and compute idle time (online/timing.py), derived from the
    # steps' times above whenever a step is recorded; read by people and tools, not by the loop
    timing: dict[str, dict] = field(default_factory=dict)

    def done(self, round: int, step: str) -> dict | None:
        return self.rounds.get(str(round), {}).get(step)

    def mark(self, round: int, step: str, result: dict) -> None:
        self.rounds.setdefault(str(round), {})[step] = result

    def normalise(self) -> RunState:
        """Bring evaluations written by older code into the per-split shape, in place."""
        self.base_eval = normalise_eval(self.base_eval)
        for steps in self.rounds.values():
            if "evaluate" in steps:
                steps["evaluate"] = normalise_eval(steps["evaluate"])
        return self


class StateStore:
    """state.json under the run directory, replaced atomically on every change."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "state.json"

    def load(self) -> RunState:
        if not self.path.exists():
            return RunState()
        state = RunState(**json.loads(self.path.read_text()))
        evals = [state.base_eval, *(steps.get("evaluate") for steps in state.rounds.values())]
        old = any(ev and "splits" not in ev for ev in evals)
        state.normalise()
        log.info("resuming run from %s", self.path)
        if old:
            log.info("this run's evaluations were written before seen/unseen evaluation: they are read as "
                     "held-out only")
        return state

    def save(self, state: RunState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2, sort_keys=True))
        tmp.replace(self.path)
