"""How right is each verdict a round could train on? The judge against the loop's own.

A round's scored samples carry the reward model's score and the labellers' mean label. The
paper's target is the parent's good images, so what a wrong verdict costs depends on which way it
errs: a wrong positive is trained on, a missed one is only left out. For every image of the round
this asks the oracle judge, then prints the precision and recall of "good" per category for the
score, the label, both together (`finetune.reward_source: agreement`) and a stricter score.
`--out DIR` writes copies of the round whose `reward` is one verdict each (`exact` is the
judge's), to fine-tune on with `t2i-rlhf finetune --samples DIR/<verdict>/scored.parquet`.

    .venv/bin/python benchmarks/probe_verdicts.py runs/shapes-demo/round-0000/scored.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from t2i_rlhf.samples import decode_png
from t2i_rlhf.shapes.judge import judge
from t2i_rlhf.shapes.vocab import CATEGORIES
from t2i_rlhf.training.finetune.rewards import LabelAgreement, RewardThreshold


def verdicts(table: pa.Table) -> dict[str, np.ndarray]:
    """Each candidate verdict as fine-tuning reads it (rewards.py), as a bool array; a sample
    without a label is not good by its label, and keeps the score's verdict under agreement."""
    candidates = {
        "score >= 0.5": (RewardThreshold(0.5), "reward"),
        "label >= 0.5": (RewardThreshold(0.5), "label"),
        "agreement": (LabelAgreement(0.5), "reward"),
        "score >= 0.8": (RewardThreshold(0.8), "reward"),
    }
    return {name: verdict.of_table(table, column) == 1.0 for name, (verdict, column) in candidates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scored", type=Path, help="a round's scored.parquet (SAMPLE_SCHEMA, scored and labelled)")
    ap.add_argument("--out", type=Path, help="write one copy of the round per verdict here")
    args = ap.parse_args()

    table = pq.read_table(args.scored)
    table = table.filter(pc.is_valid(table.column("reward")))
    images, prompts = table.column("image").to_pylist(), table.column("prompt").to_pylist()
    exact = np.array([judge(decode_png(i), p).good for i, p in zip(images, prompts, strict=True)])
    candidates = verdicts(table)
    category = np.array(table.column("category").to_pylist())
    print(f"{len(exact)} samples, {exact.mean():.1%} judged good; precision / recall of 'good':")
    print("| verdict | all | " + " | ".join(CATEGORIES) + " |")
    print("|---|---|" + "---|" * len(CATEGORIES))
    for name, verdict in candidates.items():
        cells = []
        for cat in ("all", *CATEGORIES):
            m = np.ones(len(exact), bool) if cat == "all" else category == cat
            hits = (verdict[m] & exact[m]).sum()
            cells.append(f"{hits / max(verdict[m].sum(), 1):.2f} / {hits / max(exact[m].sum(), 1):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.out:
        index = table.schema.get_field_index("reward")
        for name, verdict in {"exact": exact, **candidates}.items():
            where = args.out / name.replace(" ", "").replace(">=", "-ge-")
            where.mkdir(parents=True, exist_ok=True)
            column = pa.array(verdict.astype(np.float32), type=pa.float32())
            pq.write_table(table.set_column(index, table.schema.field(index), column), where / "scored.parquet")
        print(f"copies under {args.out}")


if __name__ == "__main__":
    main()
