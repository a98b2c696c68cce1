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
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from t2i_rlhf.config import load_config
from t2i_rlhf.online.hindsight import alternatives, needs_relabel, relabelled_rows, rollout_prompts
from t2i_rlhf.samples import decode_png
from t2i_rlhf.shapes.judge import judge
from t2i_rlhf.shapes.vocab import CATEGORIES
from t2i_rlhf.training.reward.data import resolve_perturbation
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

    cfg = load_config(args.config)
    n_prompts = args.prompts or cfg.hindsight.prompts
    table = pq.read_table(args.scored)
    table = table.filter(pc.is_valid(table.column("reward")))
    perturb, drawn = resolve_perturbation(cfg.reward.perturbation), rollout_prompts(cfg)
    bad = np.flatnonzero(needs_relabel(table, cfg.finetune.verdict_threshold))
    texts, categories = table.column("prompt").to_pylist(), table.column("category").to_pylist()
    options = {int(i): alternatives(texts[i], perturb, drawn, n_prompts) for i in bad}
    rows = [i for i in options if options[i]]
    images = [decode_png(b) for b in table.column("image").take(pa.array(rows, pa.int64())).to_pylist()]
    model = load_reward_model(args.reward_model)
    best = []
    for image, i in zip(images, rows, strict=True):
        scores = model.score_each([image], [options[i]])[0]
        j = int(np.argmax(scores))
        best.append((options[i][j], float(scores[j]), judge(image, options[i][j]).good))
    exact = [next((q for q in options[i] if judge(image, q).good), None) for image, i in zip(images, rows, strict=True)]

    print(f"{table.num_rows} samples, {len(bad)} bad by the fine-tuning's verdict, {len(rows)} with perturbations "
          f"the rollout draws ({n_prompts} scored each); relabelled / right, per category:")
    print("| relabeller | all | " + " | ".join(CATEGORIES) + " |")
    print("|---|---|" + "---|" * len(CATEGORIES))
    arms = {"exact (the judge)": [(k, q, 1.0) for k, q in enumerate(exact) if q is not None]}
    for tau in args.thresholds:
        arms[f"reward model, τ = {tau}"] = [(k, q, s) for k, (q, s, _) in enumerate(best) if s >= tau]
    for name, picked in arms.items():
        cells = []
        for cat in ("all", *CATEGORIES):
            mine = [(k, q) for k, q, _ in picked if cat == "all" or categories[rows[k]] == cat]
            right = sum(judge(images[k], q).good for k, q in mine)
            cells.append(f"{len(mine)} / {right}")
        print(f"| {name} | " + " | ".join(cells) + " |")
        if args.out:
            where = args.out / name.split(",")[0].split(" ")[0] if name.startswith("exact") else \
                args.out / f"tau-{name.rsplit(' ', 1)[1]}"
            where.mkdir(parents=True, exist_ok=True)
            extra = relabelled_rows(table, [rows[k] for k, _, _ in picked], [q for _, q, _ in picked],
                                    [s for _, _, s in picked])
            pq.write_table(extra, where / "hindsight.parquet")
    if args.out:
        print(f"extra rows under {args.out}")


if __name__ == "__main__":
    main()
