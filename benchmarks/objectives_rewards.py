"""A round's rewards for the objectives benchmark, as the loop would give them.

`--reward oracle`: r is the judge's verdict, already in the rollouts (a perfect reward model, so
the benchmark measures the objective alone).

`--reward model`: the loop's own reward model, trained each round on simulated labels. The labels
are what services/simulate.py's labellers post (the judge's verdict, flipped with probability
`noise`), made here directly instead of through the feedback service over HTTP: the service adds
nothing to the labels but latency. Then, as online/steps.py's train_reward and rescore_samples do,
the reward model (RewardTrainingConfig's defaults, which the loop's configs keep) is trained on
every label of the arm so far, this round's included, and scores this round's samples.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from t2i_rlhf.samples import SAMPLE_SCHEMA, decode_png
from t2i_rlhf.training.reward.config import RewardTrainingConfig
from t2i_rlhf.training.reward.metrics import score_metrics
from t2i_rlhf.training.reward.model import load_reward_model
from t2i_rlhf.training.reward.train import train_reward_model

log = logging.getLogger("bench_objectives")


def _with(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), SAMPLE_SCHEMA.field(name), values)


def simulated_labels(rollouts: pa.Table, n_labels: int | None, noise: float, seed: list[int]) -> tuple[pa.Table, dict]:
    """The rollouts with `n_labels` of them (all: None) labelled by the judge's verdict flipped with
    probability `noise`, the rest unlabelled, and no reward yet. Seeded by `seed` alone, so the
    shared first round gets the same labels in every arm."""
    truth = rollouts.column("reward").to_numpy().astype(np.float64)
    n = len(truth)
    rng = np.random.default_rng(seed)
    chosen = np.zeros(n, dtype=bool)
    chosen[rng.choice(n, n if n_labels is None else min(n, n_labels), replace=False)] = True
    flipped = (rng.random(n) < noise) & chosen
    label = np.where(flipped, 1.0 - truth, truth)
    table = _with(rollouts, "label", pa.array([float(v) if c else None for v, c in zip(label, chosen, strict=True)],
                                               pa.float32()))
    table = _with(table, "n_labels", pa.array(chosen.astype(np.int32)))
    table = _with(table, "reward", pa.nulls(n, pa.float32()))
    table = _with(table, "reward_model_version", pa.nulls(n, pa.string()))
    return table, {"labels": int(chosen.sum()), "flipped": int(flipped.sum())}


def model_rewards(rollouts: Path, labelled_so_far: list[Path], round_dir: Path, clip: Path, n_labels: int | None,
                  noise: float, seed: list[int], threads: int, embedding_cache: Path) -> dict:
    """Label the round, train the reward model on every label so far, score the round's samples.
    Writes round_dir/labelled.parquet (what the reward model learns from), reward_model/ and
    scored.parquet (what fine-tuning learns from). Returns the labels used and how good r is
    against the judge's truth on the round's samples."""
    table = pq.read_table(rollouts)
    labelled, counts = simulated_labels(table, n_labels, noise, seed)
    pq.write_table(labelled, round_dir / "labelled.parquet")
    version = f"rm-{round_dir.parent.name}-{round_dir.name}"
    cfg = RewardTrainingConfig(backbone=str(clip), threads=threads, embedding_cache=str(embedding_cache))
    metrics = train_reward_model([*labelled_so_far, round_dir / "labelled.parquet"], cfg, round_dir / "reward_model",
                                 version)
    rm = load_reward_model(round_dir / "reward_model")
    images = [decode_png(b) for b in table.column("image").to_pylist()]
    scores = rm.score(images, table.column("prompt").to_pylist())
    scored = _with(table, "reward", pa.array(scores, pa.float32()))
    scored = _with(scored, "reward_model_version", pa.array([version] * len(scores), pa.string()))
    pq.write_table(scored, round_dir / "scored.parquet")
    truth = table.column("reward").to_numpy()
    vs_judge = score_metrics(scores, truth)
    log.info("%s: %d labels (%d flipped); reward model vs the judge on the round's samples: accuracy %.3f, "
             "AUC %.3f", version, counts["labels"], counts["flipped"], vs_judge["accuracy"], vs_judge["auc"])
    return {**counts, "reward_model": version, "labelled_total": metrics["n_train"] + metrics["n_heldout"],
            "rm_vs_judge": vs_judge, "rm_train": metrics["train"], "rm_heldout": metrics["heldout"]}
