"""What a run needs from its Ray cluster at once, checked before anything starts.

Ray queues an actor or task that does not fit, since an autoscaler may add a node for it; on a
fixed cluster nothing ever does. Observed: on a 2-CPU cluster the two generator actors took both
CPUs and round 0's reward-model task waited for a CPU, silently, until the job was killed. So
`t2i-rlhf run` computes from the config, with the same fields and bundles the actors and tasks are
started with, what it holds for the whole run (generators, and scorers from round 0's reward model
on) and what each step adds beside them (the reward-model task; the Ray Train worker group and
Ray Data), and compares that with the cluster's totals per resource, and each single bundle with
the nodes, before it starts an actor.

Not counted, as they reserve nothing: the sample buffer actor (num_cpus=0), Ray Train V2's
controller (num_cpus=0, on the driver's node), a submitted job's driver (entrypoint resources 0
unless asked). The feedback service and the simulated labellers are processes outside Ray.
Totals are necessary, not sufficient: bundles of one step may still not pack onto the nodes.

`run_needs` and `shortfalls` are pure (config and resource dicts in, dicts and messages out), so
they are tested without Ray; `check_cluster` and `get_when_scheduled` read the running cluster.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from t2i_rlhf.config import ExperimentConfig
from t2i_rlhf.ray_runtime import resource_bundle
from t2i_rlhf.training.finetune.config import RAY_DATA_CPUS

log = logging.getLogger(__name__)

Resources = dict[str, float]
_EPS = 1e-6  # Ray keeps resources in fixed point (1e-4); sums of fractions must not fail on rounding


class ClusterTooSmallError(ValueError):
    """The cluster can never hold what the config needs at once (a user error: the CLI prints it)."""


@dataclass(frozen=True)
class Part:
    """`count` alike actors, workers or tasks, each reserving `bundle` on one node."""

    what: str  # singular: "generator", "training worker", ...
    plural: str
    count: int
    bundle: Resources
    keys: str  # the config keys that set it, named in the fix

    def total(self) -> Resources:
        return {k: v * self.count for k, v in self.bundle.items()}

    def term(self, resource: str) -> str:
        """This part's share of `resource`, as the message writes it: "2 generators × 1"."""
        each = _num(self.bundle[resource])
        return f"{self.count} {self.plural} × {each}" if self.count > 1 else f"{self.what} {each}"


@dataclass(frozen=True)
class Phase:
    """A step of the run and everything reserved while it runs: the held parts and its own."""

    step: str  # "reward-model training", "fine-tuning"
    parts: tuple[Part, ...]

    def total(self) -> Resources:
        return _sum(p.total() for p in self.parts)


@dataclass(frozen=True)
class RunNeeds:
    """What a run reserves in each phase: the parts held for the whole run and the step's own."""

    phases: tuple[Phase, ...]
    generator_strategy: str  # the generators' placement-group strategy (STRICT_* constrain nodes)

    def peak(self) -> Resources:
        """Per resource, the most any phase needs at once: what the cluster must have in total."""
        out: Resources = {}
        for phase in self.phases:
            for k, v in phase.total().items():
                out[k] = max(out.get(k, 0.0), v)
        return out

    def parts(self) -> list[Part]:
        """Every distinct part once (each bundle must fit on some node)."""
        seen: dict[str, Part] = {}
        for phase in self.phases:
            for p in phase.parts:
                seen.setdefault(p.what, p)
        return list(seen.values())

    def local_cpus(self) -> int:
        """Logical CPUs a local instance needs so that every phase fits (at least 1)."""
        return max(1, math.ceil(self.peak().get("CPU", 0.0) - _EPS))

    def summary(self) -> str:
        return "; ".join(f"{ph.step}: {_fmt(ph.total())}" for ph in self.phases)


def run_needs(cfg: ExperimentConfig) -> RunNeeds:
    """The resources `t2i-rlhf run` reserves for `cfg`, from the fields its actors and tasks are
    started with (rollout.start_actors, steps.start_scorers, train_reward_model_remote,
    trainer.finetune_round's ScalingConfig), phase by phase."""
    r, ft, rm = cfg.rollout, cfg.finetune, cfg.reward
    generators = Part("generator", "generators", r.generators,
                      resource_bundle(r.generation.num_cpus, r.generation.num_gpus, r.generator_resources),
                      "rollout.generators, rollout.generation.num_cpus/num_gpus, rollout.generator_resources")
    scorers = Part("scorer", "scorers", r.scorers, resource_bundle(r.scorer_num_cpus, r.scorer_num_gpus),
                   "rollout.scorers, rollout.scorer_num_cpus/scorer_num_gpus")
    reward_task = Part("reward-model task", "reward-model tasks", 1, resource_bundle(rm.num_cpus, rm.num_gpus),
                       "reward.num_cpus/num_gpus")
    workers = Part("training worker", "training workers", ft.num_workers, ft.worker_bundle,
                   "finetune.num_workers, finetune.threads_per_worker or resources_per_worker, finetune.use_gpu")
    ray_data = Part("Ray Data task", "Ray Data tasks", 1, resource_bundle(RAY_DATA_CPUS, 0), "")

    def live(*parts: Part) -> tuple[Part, ...]:
        return tuple(p for p in parts if p.bundle and p.count > 0)

    # The scorers start once round 0's reward model exists, so only a later round's reward-model
    # task runs beside them; every fine-tuning step does.
    rm_held = live(generators, scorers) if cfg.run.rounds > 1 else live(generators)
    phases = (Phase("reward-model training", rm_held + live(reward_task)),
              Phase("fine-tuning", live(generators, scorers, workers, ray_data)))
    return RunNeeds(phases=phases, generator_strategy=r.placement_strategy)


@dataclass(frozen=True)
class Shortfall:
    """One thing the cluster lacks: its line in the message, and the parts that ask for it."""

    line: str
    resources: frozenset[str]
    parts: tuple[Part, ...]


def shortfalls(needs: RunNeeds, totals: Mapping[str, float],
               nodes: Sequence[Mapping[str, float]] = ()) -> list[Shortfall]:
    """What the cluster lacks: per phase and resource, its need at once against the cluster's
    total; per bundle, whether some node can hold it (skipped when `nodes` is empty)."""
    out = []
    for phase in needs.phases:
        for res, need in phase.total().items():
            have = float(totals.get(res, 0.0))
            if need > have + _EPS:
                asking = tuple(p for p in phase.parts if res in p.bundle)
                line = (f"{phase.step} needs {_amount(res, need)} at once: "
                        f"{' + '.join(p.term(res) for p in asking)}; "
                        f"the cluster has {_amount(res, have) if have else 'none'}")
                out.append(Shortfall(line, frozenset([res]), asking))
    if nodes:
        for part in needs.parts():
            strategy = needs.generator_strategy if part.what == "generator" else "PACK"
            line = _node_line(part, strategy, nodes)
            if line:
                out.append(Shortfall(line, frozenset(part.bundle), (part,)))
    return out


def _node_line(part: Part, strategy: str, nodes: Sequence[Mapping[str, float]]) -> str | None:
    """A bundle only ever runs on one node; STRICT_PACK puts all of a group on one node,
    STRICT_SPREAD each on its own."""
    if strategy == "STRICT_PACK" and part.count > 1:
        group = part.total()
        if any(_fits(group, n) for n in nodes):
            return None
        return (f"{part.count} {part.plural} placed STRICT_PACK need {_fmt(group)} on one node; "
                f"no node has that (nodes: {_nodes(nodes, group)})")
    fitting = sum(_fits(part.bundle, n) for n in nodes)
    if fitting == 0:
        return (f"a {part.what} needs {_fmt(part.bundle)} on one node; no node has that "
                f"(nodes: {_nodes(nodes, part.bundle)})")
    if strategy == "STRICT_SPREAD" and fitting < part.count:
        return (f"{part.count} {part.plural} placed STRICT_SPREAD need {part.count} nodes with "
                f"{_fmt(part.bundle)} each; {fitting} have it")
    return None


def explain(shorts: Sequence[Shortfall], needs: RunNeeds) -> str:
    """The error: each shortfall, then the fix, naming the config keys of what asks for it."""
    short = set().union(*(s.resources for s in shorts))
    keys = list(dict.fromkeys(p.keys for s in shorts for p in s.parts if p.keys))
    peak = needs.peak()
    grow = []
    if "CPU" in short:
        cpus = needs.local_cpus()
        grow.append(f"{cpus} CPUs in all (`ray start --num-cpus {cpus}` on one machine, or more nodes)")
    if "GPU" in short:
        grow.append(f"{_amount('GPU', peak.get('GPU', 0.0))} in all, on nodes that have them")
    custom = {k: _num(peak[k]) for k in sorted(short - {"CPU", "GPU"}) if k in peak}
    if custom:
        grow.append("nodes started with `ray start --resources '{"
                    + ", ".join(f'"{k}": {v}' for k, v in custom.items()) + "}'`")
    return ("the Ray cluster is too small for this config; the run would wait for resources forever:\n  "
            + "\n  ".join(s.line for s in shorts)
            + "\nFix: ask for less (" + "; ".join(keys) + ")"
            + (", or give the cluster more: " + ", ".join(grow) if grow else "")
            + ".\nOn a cluster with an autoscaler that adds nodes on demand, set `run.resource_check: warn`.")


def check_cluster(cfg: ExperimentConfig, needs: RunNeeds | None = None) -> RunNeeds:
    """Compare the run's needs with the connected cluster (`ray.init` done) as `run.resource_check`
    says: raise ClusterTooSmallError, log a warning, or skip. Returns the needs."""
    import ray

    needs = needs or run_needs(cfg)
    mode = cfg.run.resource_check
    totals = ray.cluster_resources()
    log.info("resources the run needs at once: %s; the cluster has %s", needs.summary(),
             _fmt({k: totals.get(k, 0.0) for k in needs.peak()}))
    if mode == "off":
        return needs
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    found = shortfalls(needs, totals, nodes)
    if not found:
        return needs
    message = explain(found, needs)
    if mode == "error":
        raise ClusterTooSmallError(message)
    log.warning("%s\n(run.resource_check: warn; going on, waiting for the cluster to grow)", message)
    return needs


def task_state(ref: Any) -> str | None:
    """The scheduling state of a task (e.g. PENDING_NODE_ASSIGNMENT, RUNNING), from Ray's State
    API; None where that is unavailable (it needs the dashboard)."""
    try:
        from ray.util.state import get_task

        found = get_task(ref.task_id().hex(), timeout=10)
    except Exception:  # best effort: the warning then says what it cannot know
        return None
    attempts = found if isinstance(found, list) else [found] if found else []
    if not attempts:
        return None
    return str(max(attempts, key=lambda t: t.attempt_number or 0).state)


def get_when_scheduled(ref: Any, *, what: str, need: Mapping[str, float], warn_after_s: float) -> Any:
    """`ray.get(ref)`, logging a warning every `warn_after_s` while the task waits to be scheduled
    (once, if the State API cannot tell): what it needs and what the cluster has free, so a wait
    for resources is never silent."""
    import ray

    waited = 0.0
    while True:
        ready, _ = ray.wait([ref], timeout=warn_after_s)
        if ready:
            break
        waited += warn_after_s
        state = task_state(ref)
        if state is not None and not state.startswith("PENDING"):
            break  # running: its own time, not a wait for resources
        free = ray.available_resources()
        log.warning("%s has not %s after %.0f s: it needs %s, the cluster has %s free%s", what,
                    "started" if state else "finished", waited, _fmt(need),
                    _fmt({k: free.get(k, 0.0) for k in need}),
                    f" ({state})" if state else "; if it is waiting for resources, free some or grow the cluster")
        if state is None:
            break
    return ray.get(ref)


# --- formatting --------------------------------------------------------------------------------

def _sum(dicts: Any) -> Resources:
    out: Resources = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _fits(bundle: Mapping[str, float], node: Mapping[str, float]) -> bool:
    return all(node.get(k, 0.0) + _EPS >= v for k, v in bundle.items())


def _num(x: float) -> str:
    return f"{x:g}"


def _amount(resource: str, x: float) -> str:
    if resource in ("CPU", "GPU"):
        return f"{_num(x)} {resource}{'' if x == 1 else 's'}"
    return f"{_num(x)} {resource}"


def _fmt(res: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {_num(v)}" for k, v in res.items()) + "}"


def _nodes(nodes: Sequence[Mapping[str, float]], bundle: Mapping[str, float]) -> str:
    return ", ".join(sorted({_fmt({k: n.get(k, 0.0) for k in bundle}) for n in nodes}))
