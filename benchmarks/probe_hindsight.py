"""How right is hindsight relabelling (online/hindsight.py) on a round? The judge against the
reward model's choice of prompt.

For every sample of the round the fine-tuning's verdict calls bad, the round's reward model scores
the image against the perturbations of its prompt that the rollout draws (as the loop does); the
best one becomes the sample's new prompt if it scores at least τ. This prints, per τ, how many
samples that relabels and how many of those the oracle judge calls good for their new prompt,
per category, and what an exact relabeller (the judge's first good perturbation) would find.
`--out DIR` writes the round's extra rows for each τ (and `exact`), to fine-tune on beside the
round: `t2i-rlhf finetune --samples ROUND/scored.parquet DIR/<name>/hindsight.parquet ...`.

    .venv/bin/python benchmarks/probe_hindsight.py runs/shapes-demo/round-0000/scored.parquet \\
        runs/shapes-demo/reward_models/rm-r0000 --config configs/shapes.yaml
"""

from __future__ import annotations

import argparse
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from t2i_rlhf.config import load_config
from t2i_rlhf.online.hindsight import best_prompts, needs_relabel, relabel_candidates, relabelled_rows
from t2i_rlhf.samples import decode_png
from t2i_rlhf.shapes.judge import judge
from t2i_rlhf.shapes.vocab import CATEGORIES
from t2i_rlhf.training.reward.model import load_reward_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scored", type=Path, help="a round's scored.parquet (scored and labelled)")
    ap.add_argument("reward_model", type=Path, help="the reward model that scored it")
    ap.add_argument("--config", type=Path, default=Path("configs/shapes.yaml"),
                    help="the run's config: its rollout prompts, perturbation and verdict")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    ap.add_argument("--prompts", type=int, help="perturbations scored per image (default: the config's)")
    ap.add_argument("--out", type=Path, help="write each threshold's extra rows here")
    args = ap.parse_args()

    cfg = load_config(args.config, {"hindsight.prompts": args.prompts} if args.prompts else None)
    table = pq.read_table(args.scored)
    table = table.filter(pc.is_valid(table.column("reward")))
    n_bad = int(needs_relabel(table, cfg.finetune.verdict_threshold).sum())
    options = relabel_candidates(table, cfg)
    rows = list(options)
    images = dict(zip(rows, map(decode_png, table.column("image").take(pa.array(rows, pa.int64())).to_pylist()),
                      strict=True))

    @cache
    def right(i: int, prompt: str) -> bool:
        return judge(images[i], prompt).good

    scores = load_reward_model(args.reward_model).score_each([images[i] for i in rows], list(options.values()))
    found = {i: next((q for q in options[i] if right(i, q)), None) for i in rows}
    exact = [(i, q) for i, q in found.items() if q is not None]
    arms = {"exact": ([i for i, _ in exact], [q for _, q in exact], [1.0] * len(exact))}
    for tau in args.thresholds:
        arms[f"tau-{tau}"] = best_prompts(options, scores, tau)

    categories = table.column("category").to_pylist()
    print(f"{table.num_rows} samples, {n_bad} bad by the fine-tuning's verdict, {len(rows)} with perturbations "
          f"the rollout draws ({cfg.hindsight.prompts} scored each); relabelled / right, per category:")
    print("| relabeller | all | " + " | ".join(CATEGORIES) + " |")
    print("|---|---|" + "---|" * len(CATEGORIES))
    for name, (picked, prompts, rewards) in arms.items():
        cells = []
        for cat in ("all", *CATEGORIES):
            mine = [(i, q) for i, q in zip(picked, prompts, strict=True) if cat == "all" or categories[i] == cat]
            cells.append(f"{len(mine)} / {sum(right(i, q) for i, q in mine)}")
        label = "the judge (exact)" if name == "exact" else f"reward model, τ = {name[4:]}"
        print(f"| {label} | " + " | ".join(cells) + " |")
        if args.out:
            (args.out / name).mkdir(parents=True, exist_ok=True)
            pq.write_table(relabelled_rows(table, picked, prompts, rewards), args.out / name / "hindsight.parquet")
    if args.out:
        print(f"extra rows under {args.out}")


if __name__ == "__main__":
    main()
