"""Reports of a run: metrics per round as JSON lines and TensorBoard events, and at the end a
Markdown report with PNG plots (alignment per category per round, reward distribution, labels
per round, the same prompts and seeds before and after)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from t2i_rlhf.evaluation import paired_change  # noqa: E402
from t2i_rlhf.online.state import RunState  # noqa: E402
from t2i_rlhf.shapes.vocab import CATEGORIES  # noqa: E402

log = logging.getLogger(__name__)


def round_records(state: RunState) -> list[dict]:
    """One flat record per finished step set, in round order: what metrics.jsonl holds."""
    records = []
    if state.base_eval:
        records.append({"round": -1, "model_version": "base", "eval": state.base_eval})
    for key in sorted(state.rounds, key=int):
        steps = state.rounds[key]
        records.append({"round": int(key), **steps})
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
            ev = r.get("eval") or r.get("evaluate")
            if ev:
                for cat, (good, _) in _alignment(ev).items():
                    w.add_scalar(f"alignment/{cat}", good, step)
                if ev.get("fid") is not None:
                    w.add_scalar("fidelity/frechet_distance", ev["fid"], step)
            if "rescore" in r:
                w.add_scalar("reward/mean", r["rescore"]["reward_mean"], step)
            if "labels" in r:
                w.add_scalar("labels/count", r["labels"]["labels"], step)
            if "reward_model" in r:
                w.add_scalar("reward_model/heldout_accuracy", r["reward_model"]["heldout"].get("accuracy") or 0, step)
            if "finetune" in r:
                for k, v in (r["finetune"].get("metrics") or {}).items():
                    w.add_scalar(f"finetune/{k}", v, step)


def paper_table(base: dict, tuned: dict, tuned_label: str) -> str:
    """Per category: judged alignment of the base and the tuned model, with standard errors; the
    change's own SE is from paired differences when both were judged on the same items."""
    b, t = _alignment(base), _alignment(tuned)
    base_bits, tuned_bits = _verdicts(base), _verdicts(tuned)
    lines = [f"| category | base | {tuned_label} | change (± paired SE) |", "|---|---|---|---|"]
    for cat in [*CATEGORIES, "overall"]:
        if cat in b and cat in t:
            paired = paired_change(base_bits.get(cat, ""), tuned_bits.get(cat, ""))
            change = f"{100 * (t[cat][0] - b[cat][0]):+.1f}" + (f" ± {100 * paired[1]:.1f}" if paired else "")
            lines.append(f"| {cat} | {100 * b[cat][0]:.1f}% ± {100 * b[cat][1]:.1f} | "
                         f"{100 * t[cat][0]:.1f}% ± {100 * t[cat][1]:.1f} | {change} |")
    if base.get("fid") is not None and tuned.get("fid") is not None:
        lines.append(f"| fidelity (Fréchet distance, lower is better) | {base['fid']:.3f} | {tuned['fid']:.3f} | "
                     f"{100 * (tuned['fid'] / base['fid'] - 1):+.1f}% |")
    return "\n".join(lines)


def _plot_alignment(records: list[dict], path: Path) -> None:
    evals = [(r["round"] + 1, r.get("eval") or r.get("evaluate")) for r in records]
    evals = [(x, e) for x, e in evals if e]
    fig, ax = plt.subplots(figsize=(6, 4))
    for cat in [*CATEGORIES, "overall"]:
        pts = [(x, _alignment(e)[cat]) for x, e in evals if cat in _alignment(e)]
        if pts:
            ax.errorbar([p[0] for p in pts], [100 * p[1][0] for p in pts], yerr=[100 * p[1][1] for p in pts],
                        marker="o", capsize=3, label=cat, linewidth=2.5 if cat == "overall" else 1.2)
    ax.set_xlabel("fine-tuning rounds done")
    ax.set_ylabel("judged good on held-out prompts (%)")
    ax.legend()
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
    ax1.legend(fontsize=7)
    rounds = [r for r in records if "labels" in r]
    x = [r["round"] for r in rounds]
    ax2.bar(x, [r["labels"]["good"] for r in rounds], label="good")
    ax2.bar(x, [r["labels"]["bad"] for r in rounds], bottom=[r["labels"]["good"] for r in rounds], label="bad")
    ax2.set_xlabel("round")
    ax2.set_title("labels per round")
    ax2.legend()
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
    if state.base_eval and last:
        lines += ["## Judged alignment on held-out prompts", "",
                  paper_table(state.base_eval, last["evaluate"], f"after {last['round'] + 1} rounds"), ""]
    lines += [f"Rounds: {len([r for r in records if r['round'] >= 0])}; labels used: {labels}; "
              f"model version: {state.model_version}; reward model: {state.reward_model_version}."]
    if wall_s is not None:
        lines += [f"Wall time of this invocation: {wall_s / 60:.1f} min."]
    lines += ["", "![alignment per category per round](alignment.png)", "",
              "![reward distribution and labels per round](rewards_labels.png)", ""]
    for name, grid in (("before (base model)", grid_before), ("after", grid_after)):
        if grid is not None and grid.exists():
            lines += [f"### Same prompts and seeds, {name}", "", f"![{name}]({grid.relative_to(run_dir)})", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
