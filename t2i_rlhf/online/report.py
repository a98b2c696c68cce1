"""Reports of a run: metrics per round as JSON lines and TensorBoard events, and at the end a
Markdown report with PNG plots (alignment per category per round, reward distribution, labels
per round, the same prompts and seeds before and after) and where each round's wall time went
(online/timing.py: how long the labellers and the compute sat idle).

The report leads with what a user runs the loop for: the paper's table in miniature (base vs
tuned, per category, on seen and on unseen prompts apart, each figure with its SE and the change
with its paired SE, clean rate and FD on every row), then one line per evaluation with its clean
rate and FD, so reward hacking (alignment up, images breaking) shows the round it starts. A clean
rate below MIN_CLEAN is marked at the top of the report and logged as a warning."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from t2i_rlhf.evaluation import paired_change  # noqa: E402
from t2i_rlhf.online.eval_results import MIN_CLEAN, SPLIT_NAMES, clean_warnings, eval_splits  # noqa: E402
from t2i_rlhf.online.state import RunState  # noqa: E402
from t2i_rlhf.online.timing import overall_timing, round_timings, step_intervals, timing_records  # noqa: E402
from t2i_rlhf.shapes.vocab import CATEGORIES  # noqa: E402

log = logging.getLogger(__name__)


def round_records(state: RunState) -> list[dict]:
    """One flat record per finished step set, in round order: what metrics.jsonl holds."""
    records = []
    if state.base_eval:
        records.append({"round": -1, "model_version": "base", "eval": state.base_eval})
    timings = timing_records(state.rounds)
    for key in sorted(state.rounds, key=int):
        steps = state.rounds[key]
        records.append({"round": int(key), **steps, **({"timing": timings[key]} if key in timings else {})})
    return records


def _alignment(ev: dict) -> dict[str, tuple[float, float]]:
    rows = {c["category"]: (c["good"], c["stderr"]) for c in ev["categories"]}
    rows["overall"] = (ev["overall"]["good"], ev["overall"]["stderr"])
    return rows


def _verdicts(ev: dict) -> dict[str, str]:
    return {c["category"]: c.get("verdicts", "") for c in [*ev["categories"], ev["overall"]]}


def write_metrics(run_dir: Path, state: RunState) -> None:
    """Rewrite metrics.jsonl and the TensorBoard events from the state (so a resumed run never
    logs a step twice)."""
    from tensorboardX import SummaryWriter

    records = round_records(state)
    tmp = run_dir / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    tmp.replace(run_dir / "metrics.jsonl")
    tb = run_dir / "tensorboard"
    shutil.rmtree(tb, ignore_errors=True)
    with SummaryWriter(str(tb)) as w:
        for r in records:
            step = r["round"] + 1
            for split, ev in eval_splits(r.get("eval") or r.get("evaluate")).items():
                for cat, (good, _) in _alignment(ev).items():
                    w.add_scalar(f"alignment/{split}/{cat}", good, step)
                w.add_scalar(f"clean/{split}", ev["overall"]["clean"], step)
                if ev.get("fid") is not None:
                    w.add_scalar(f"fidelity/frechet_distance/{split}", ev["fid"], step)
            if "rescore" in r:
                w.add_scalar("reward/mean", r["rescore"]["reward_mean"], step)
            if "labels" in r:
                w.add_scalar("labels/count", r["labels"]["labels"], step)
            if "reward_model" in r:
                w.add_scalar("reward_model/heldout_accuracy", r["reward_model"]["heldout"].get("accuracy") or 0, step)
            if "finetune" in r:
                for k, v in (r["finetune"].get("metrics") or {}).items():
                    w.add_scalar(f"finetune/{k}", v, step)
            for k, v in (r.get("timing") or {}).items():
                w.add_scalar(f"timing/{k}", v, step)


def _pct(x: float, se: float | None = None) -> str:
    return f"{100 * x:.1f}%" + (f" ± {100 * se:.1f}" if se is not None else "")


def _fid(ev: dict) -> str:
    return f"{ev['fid']:.3f}" if ev.get("fid") is not None else "n/a"


def _change_row(base: dict, tuned: dict) -> list[str]:
    """The change per category in points, ± the SE of the paired per-image differences when both
    were judged on the same items (else the SEs combined, marked `unpaired`); then clean and FD."""
    b, t = _alignment(base), _alignment(tuned)
    base_bits, tuned_bits = _verdicts(base), _verdicts(tuned)
    cells = []
    for cat in [*CATEGORIES, "overall"]:
        if cat not in b or cat not in t:
            cells.append("")
            continue
        paired = paired_change(base_bits.get(cat, ""), tuned_bits.get(cat, ""))
        se = f"{100 * paired[1]:.1f}" if paired else f"{100 * float(np.hypot(b[cat][1], t[cat][1])):.1f} unpaired"
        cells.append(f"{100 * (t[cat][0] - b[cat][0]):+.1f} ± {se}")
    cells.append(f"{100 * (tuned['overall']['clean'] - base['overall']['clean']):+.1f}")
    both = base.get("fid") is not None and tuned.get("fid") is not None
    cells.append(f"{100 * (tuned['fid'] / base['fid'] - 1):+.1f}%" if both else "")
    return cells


def _model_row(ev: dict) -> list[str]:
    a = _alignment(ev)
    cells = [_pct(*a[cat]) if cat in a else "" for cat in [*CATEGORIES, "overall"]]
    flag = " ⚠" if ev["overall"]["clean"] < MIN_CLEAN else ""
    return [*cells, _pct(ev["overall"]["clean"]) + flag, _fid(ev)]


def paper_table(base: dict | None, tuned: dict, tuned_label: str) -> str:
    """The paper's table in miniature: per prompt split (unseen first, as configured), the base's
    and the tuned model's judged alignment per category with binomial SEs, and the change with the
    SE of paired per-image differences (the same prompts and seeds judged for both: much smaller
    than the two SEs combined); clean rate and FD on every row. Either evaluation may be of the
    per-split or the old held-out-only shape; a split the base was not judged on (a run resumed
    from older code) shows the tuned model's row alone."""
    header = ["prompts", "model", *CATEGORIES, "overall", "clean", "FD (lower is better)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base_splits = eval_splits(base)
    for split, t in eval_splits(tuned).items():
        name = SPLIT_NAMES.get(split, split)
        rows = []
        b = base_splits.get(split)
        rows.append(["base", *_model_row(b)] if b else
                    ["base", "not judged on these prompts (run state from older code)", *[""] * 6])
        rows.append([tuned_label, *_model_row(t)])
        if b:
            rows.append(["change (± paired SE)", *_change_row(b, t)])
        lines += ["| " + " | ".join([name, *row]) + " |" for row in rows]
    return "\n".join(lines)


def after_rounds(n: int) -> str:
    """The label of a model tuned for `n` rounds."""
    return f"after {n} round{'' if n == 1 else 's'}"


def evaluations(state: RunState) -> list[tuple[str, dict]]:
    """(label, evaluation) for the base and every evaluated round, in order."""
    out = [("base", state.base_eval)] if state.base_eval else []
    for r in round_records(state):
        if r["round"] >= 0 and "evaluate" in r:
            version = (r.get("finetune") or {}).get("version", "")
            out.append((after_rounds(r["round"] + 1) + (f" ({version})" if version else ""), r["evaluate"]))
    return out


def evaluation_line(label: str, ev: dict) -> str:
    """One evaluation in a line: overall alignment ± SE, clean rate and FD per split."""
    parts = []
    for split, e in eval_splits(ev).items():
        flag = f" ⚠ below {100 * MIN_CLEAN:.0f}%" if e["overall"]["clean"] < MIN_CLEAN else ""
        parts.append(f"{SPLIT_NAMES.get(split, split)} {_pct(e['overall']['good'], e['overall']['stderr'])}, "
                     f"clean {_pct(e['overall']['clean'])}{flag}, FD {_fid(e)}")
    return f"{label}: " + "; ".join(parts)


def round_lines(state: RunState) -> list[str]:
    """The report's list of every evaluation of the run, base first."""
    return [f"- {evaluation_line(label, ev)}" for label, ev in evaluations(state)]


def run_warnings(state: RunState) -> list[str]:
    """The clean-rate warnings of every evaluation of the run (clean_warnings)."""
    return [line for label, ev in evaluations(state) for line in clean_warnings(ev, label)]


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def timing_line(t: dict) -> str:
    """A round's Timing.as_dict() in a line, for the log."""
    return (f"wall {_duration(t['wall_s'])}; labellers idle {_duration(t['labeller_idle_s'])} "
            f"({_pct(t['labeller_idle_fraction'])}), compute idle {_duration(t['compute_idle_s'])} "
            f"({_pct(t['compute_idle_fraction'])})")


def timing_table(state: RunState) -> str:
    """Per round and for the whole run: wall time (the time its steps ran, a resumed run's
    downtime left out), and how much of it labellers had nothing to label and compute waited
    for labels. "" when no step time is recorded."""
    intervals = step_intervals(state.rounds)
    whole = overall_timing(intervals)
    if whole is None:
        return ""
    rows = [(str(k), t.as_dict()) for k, t in round_timings(intervals).items()] + [("all", whole.as_dict())]
    lines = ["| round | wall | labellers idle | compute idle |", "|---|---|---|---|"]
    for key, t in rows:
        lines.append(f"| {key} | {_duration(t['wall_s'])} | {_duration(t['labeller_idle_s'])} "
                     f"({_pct(t['labeller_idle_fraction'])}) | {_duration(t['compute_idle_s'])} "
                     f"({_pct(t['compute_idle_fraction'])}) |")
    return "\n".join(lines)


def _legend(ax, **kwargs) -> None:
    """A legend where the panel has labelled data (a run before its first evaluation has none)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _plot_alignment(records: list[dict], path: Path) -> None:
    """One panel per prompt split: judged good per category against rounds done, with SEs."""
    evals = [(r["round"] + 1, eval_splits(r.get("eval") or r.get("evaluate"))) for r in records]
    splits = list(dict.fromkeys(split for _, ev in evals for split in ev)) or ["heldout"]
    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 4), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        for cat in [*CATEGORIES, "overall"]:
            pts = [(x, _alignment(ev[split])[cat]) for x, ev in evals if split in ev and cat in _alignment(ev[split])]
            if pts:
                ax.errorbar([p[0] for p in pts], [100 * p[1][0] for p in pts], yerr=[100 * p[1][1] for p in pts],
                            marker="o", capsize=3, label=cat, linewidth=2.5 if cat == "overall" else 1.2)
        ax.set_xlabel("fine-tuning rounds done")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("judged good (%)")
        ax.set_title(SPLIT_NAMES.get(split, split))
        _legend(ax)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_rewards_and_labels(records: list[dict], path: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for r in records:
        if "rescore" in r:
            hist = r["rescore"]["reward_hist"]
            ax1.plot([(i + 0.5) / len(hist) for i in range(len(hist))], hist, marker=".", label=f"round {r['round']}")
    ax1.set_xlabel("reward")
    ax1.set_ylabel("samples")
    ax1.set_title("reward distribution")
    _legend(ax1, fontsize=7)
    rounds = [r for r in records if "labels" in r]
    x = [r["round"] for r in rounds]
    ax2.bar(x, [r["labels"]["good"] for r in rounds], label="good")
    ax2.bar(x, [r["labels"]["bad"] for r in rounds], bottom=[r["labels"]["good"] for r in rounds], label="bad")
    ax2.set_xlabel("round")
    ax2.set_title("labels per round")
    _legend(ax2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(run_dir: Path, state: RunState, grid_before: Path | None, grid_after: Path | None,
                 wall_s: float | None = None) -> Path:
    records = round_records(state)
    _plot_alignment(records, run_dir / "alignment.png")
    _plot_rewards_and_labels(records, run_dir / "rewards_labels.png")
    last = next((r for r in reversed(records) if r["round"] >= 0 and "evaluate" in r), None)
    labels = sum(r["labels"]["labels"] for r in records if "labels" in r)
    lines = [f"# Run report: {run_dir.name}", ""]
    warnings = run_warnings(state)
    lines += [f"> **⚠ WARNING: {w}.**" for w in warnings] + ([""] if warnings else [])
    if last:
        names = [SPLIT_NAMES.get(s, s).split(" (")[0] for s in eval_splits(last["evaluate"])]
        lines += [f"## Judged alignment, base vs tuned, on {' and '.join(names)} prompts", "",
                  paper_table(state.base_eval, last["evaluate"], after_rounds(last["round"] + 1)), "",
                  "Judged by the oracle judge; ± is a binomial SE, a change's ± the SE of paired per-image "
                  "differences (the same prompts and seeds for both models); clean: images with recognisable "
                  f"objects on a scene colour (⚠ below {100 * MIN_CLEAN:.0f}%: reward hacking likely).", ""]
    lines += ["## Every evaluation", "", *round_lines(state), ""]
    lines += [f"Rounds: {len([r for r in records if r['round'] >= 0])}; labels used: {labels}; "
              f"model version: {state.model_version}; reward model: {state.reward_model_version}."]
    if wall_s is not None:
        lines += [f"Wall time of this invocation: {wall_s / 60:.1f} min."]
    if table := timing_table(state):
        lines += ["", "## Time per round", "", table, "",
                  "Wall: the time the round's steps ran. Labellers idle: no published sample waited for a "
                  "label (every step but `labels`, in the sequential loop); compute idle: generation and "
                  "training waited for labels (the `labels` step)."]
    lines += ["", "![alignment per category per round](alignment.png)", "",
              "![reward distribution and labels per round](rewards_labels.png)", ""]
    for name, grid in (("before (base model)", grid_before), ("after", grid_after)):
        if grid is not None and grid.exists():
            lines += [f"### Same prompts and seeds, {name}", "", f"![{name}]({grid.relative_to(run_dir)})", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
