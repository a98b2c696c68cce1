"""The objectives benchmark's table: one row per (model, round, split), the paper's table with
the loop's health beside it (clean rate, FD, labels, wall time).

Kept apart from bench_objectives.py so the table, the ceiling's rows and the low-clean alarm can be
read (and re-printed from a results JSON) without the training code's imports.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from t2i_rlhf.evaluation import CategoryResult, EvalResult, paired_change
from t2i_rlhf.shapes.vocab import CATEGORIES

log = logging.getLogger("bench_objectives")

# Below this share of clean images (recognisable objects on a scene colour) a run is reward hacking
# or collapsing, whatever its alignment says (issue 23: "says so loudly").
CLEAN_FLOOR = 0.85


@dataclass
class Row:
    """One table row: a model judged on one split, and what it cost to get there."""

    model: str  # "base", "ceiling", or the arm's objective
    round: int | None
    split: str
    result: EvalResult
    baseline: EvalResult | None = None  # the base on the same items: the change's reference
    labels: int | None = None  # simulated labels used so far (None: the oracle is the reward)
    samples: int | None = None  # model samples fine-tuned on so far
    minutes: float | None = None  # rollouts + rewards + fine-tuning so far, evaluation excluded

    @property
    def low_clean(self) -> bool:
        return self.result.overall.clean < CLEAN_FLOOR


def result_from_dict(d: dict) -> EvalResult:
    """An EvalResult back from its to_dict() (eval.json, bench_ceiling's JSON): stderr is derived."""
    def cat(c: dict) -> CategoryResult:
        return CategoryResult(c["category"], c["n"], c["good"], c["clean"], c.get("verdicts", ""))

    return EvalResult(model=d["model"], categories=[cat(c) for c in d["categories"]], overall=cat(d["overall"]),
                      fid=d.get("fid"), extra=d.get("extra") or {})


def load_eval(path: Path) -> EvalResult | None:
    return result_from_dict(json.loads(path.read_text())) if path.exists() else None


def ceiling_rows(path: Path, per_category: int, seed: int) -> list[Row]:
    """The ceiling (bench_ceiling.py's JSON) as upper rows, its change against its own base's rows:
    its base may be another model or another evaluation seed than this run's."""
    data = json.loads(Path(path).read_text())
    res = {k: result_from_dict(v) for k, v in data["results"].items()}
    args = data.get("args", {})
    if args.get("seed") != seed or args.get("per_category") != per_category:
        log.warning("ceiling %s was judged at seed %s with %s per category; this run at seed %d with %d: "
                    "compare its rows with care", path, args.get("seed"), args.get("per_category"), seed,
                    per_category)
    return [Row("ceiling", None, split, res[f"tuned/{split}"], res.get(f"base/{split}"),
                minutes=data.get("finetune_minutes"))
            for split in ("train", "heldout") if f"tuned/{split}" in res]


def warn_low_clean(rows: list[Row]) -> list[str]:
    """A warning for every row under the clean floor; returns them for the results JSON."""
    out = []
    for r in rows:
        if r.low_clean:
            msg = (f"{r.model} round {r.round} on {r.split} prompts: clean rate {100 * r.result.overall.clean:.1f}% "
                   f"< {100 * CLEAN_FLOOR:.0f}%: reward hacking or collapse, its alignment figures mislead")
            log.warning("!!! LOW CLEAN RATE !!! %s", msg)
            out.append(msg)
    return out


def table(rows: list[Row]) -> str:
    """Judged good ± SE per category and overall, the paired change against the base on the same
    items, clean rate (flagged under the floor), FD, labels, samples and minutes."""
    head = (f"| model | round | prompts | {' | '.join(CATEGORIES)} | overall | change | clean | FD | labels | "
            "samples | min |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        by_name = {c.category: c for c in r.result.categories}
        cells = [f"{100 * by_name[c].good:.1f} ± {100 * by_name[c].stderr:.1f}" if c in by_name else ""
                 for c in CATEGORIES]
        change = (paired_change(r.baseline.overall.verdicts, r.result.overall.verdicts)
                  if r.baseline is not None and r.baseline is not r.result else None)
        delta = f"{100 * change[0]:+.1f} ± {100 * change[1]:.1f}" if change else ""
        clean = f"{100 * r.result.overall.clean:.1f}%" + (" ⚠ LOW" if r.low_clean else "")
        fid = f"{r.result.fid:.3f}" if r.result.fid is not None else ""
        labels = "oracle" if r.labels is None and r.samples is not None else _num(r.labels)
        minutes = f"{r.minutes:.1f}" if r.minutes is not None else ""
        lines.append(f"| {r.model} | {'' if r.round is None else r.round} | {r.split} | {' | '.join(cells)} | "
                     f"{100 * r.result.overall.good:.1f} ± {100 * r.result.overall.stderr:.1f} | {delta} | {clean} | "
                     f"{fid} | {labels} | {_num(r.samples)} | {minutes} |")
    return "\n".join(lines)


def _num(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


def row_dict(r: Row) -> dict:
    """A row for the results JSON: the full evaluation (verdicts included, for paired tests later)."""
    change = paired_change(r.baseline.overall.verdicts, r.result.overall.verdicts) if r.baseline else None
    return {"model": r.model, "round": r.round, "split": r.split, "labels": r.labels, "samples": r.samples,
            "minutes": r.minutes, "low_clean": r.low_clean,
            "change": None if change is None else {"mean": change[0], "stderr": change[1]},
            "result": r.result.to_dict()}
