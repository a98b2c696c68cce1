"""Reward scorer with a reward-model directory (loaded lazily, swapped by update_reward_model);
in-process, as the scorer actor runs the same class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from t2i_rlhf.actors.scorer import RewardScorer, judge_reward
from t2i_rlhf.samples import SAMPLE_SCHEMA, png_bytes
from t2i_rlhf.shapes import parse_prompt, render

PROMPTS = ["two circles", "a red square", "a triangle in the sea"]


def batch() -> pa.RecordBatch:
    rows = [
        {"sample_id": f"r0-s{i}-x", "round": 0, "prompt": p, "category": parse_prompt(p).category, "seed": i,
         "model_version": "base", "image": png_bytes(render(parse_prompt(p), i)), "latents": [0.0],
         "latent_shape": [1], "reward": None, "reward_model_version": None, "label": None, "n_labels": None}
        for i, p in enumerate(PROMPTS)
    ]
    return pa.RecordBatch.from_pylist(rows, schema=SAMPLE_SCHEMA)


def reward_model_dir(root: Path, clip_model_dir: Path, version: str, seed: int) -> Path:
    from t2i_rlhf.training.reward.model import RewardMLP, RewardModelSpec, save_reward_model

    dim = json.loads((clip_model_dir / "config.json").read_text())["projection_dim"]
    torch.manual_seed(seed)
    spec = RewardModelSpec(version=version, backbone=str(clip_model_dir), embed_dim=dim, hidden=32)
    return save_reward_model(root / version, spec, RewardMLP(dim, hidden=32))


def test_scores_with_a_reward_model_directory(clip_model_dir: Path, tmp_path: Path) -> None:
    scorer = RewardScorer(reward_model_dir(tmp_path, clip_model_dir, "rm-0", seed=0), "rm-0")
    first = scorer.score_batch(batch())
    assert first.schema.equals(SAMPLE_SCHEMA)
    assert first.column("reward_model_version").to_pylist() == ["rm-0"] * 3
    r0 = np.array(first.column("reward").to_pylist())
    assert np.all((r0 >= 0) & (r0 <= 1))
    assert first.column("sample_id").to_pylist() == batch().column("sample_id").to_pylist()

    scorer.update_reward_model("rm-1", str(reward_model_dir(tmp_path, clip_model_dir, "rm-1", seed=1)))
    second = scorer.score_batch(batch())
    assert scorer.version() == "rm-1" and second.column("reward_model_version").to_pylist() == ["rm-1"] * 3
    assert not np.allclose(np.array(second.column("reward").to_pylist()), r0)


def test_callable_scorer_fills_rewards_and_rejects_bad_scores() -> None:
    scored = RewardScorer(judge_reward, "judge").score_batch(pa.Table.from_batches([batch()]))
    assert scored.column("reward").to_pylist() == [1.0, 1.0, 1.0]  # rendered images match their prompts
    with pytest.raises(ValueError, match="non-finite"):
        RewardScorer(lambda ims, ps: np.full(len(ims), np.nan), "nan").score_batch(batch())


def test_scores_other_prompts_embedding_each_image_once(clip_model_dir: Path, tmp_path: Path) -> None:
    scorer = RewardScorer(reward_model_dir(tmp_path, clip_model_dir, "rm-0", seed=0), "rm-0")
    own = scorer.score_batch(batch()).column("reward").to_pylist()
    images = batch().column("image").to_pylist()
    rows = [[PROMPTS[0], "three circles"], [PROMPTS[1]], [PROMPTS[2], "a square in the sea", "a triangle"]]
    scores = scorer.score_prompts(images, rows)
    assert [len(r) for r in scores] == [2, 1, 3]
    assert np.allclose([r[0] for r in scores], own, atol=1e-5)  # the own prompt scores as score_batch does
    assert scorer.score_prompts(images[:1], [[]]) == [[]]
    judged = RewardScorer(judge_reward, "judge").score_prompts(images[:1], [["two circles", "three circles"]])
    assert judged == [[1.0, 0.0]]
    with pytest.raises(ValueError, match="lists of prompts"):
        scorer.score_prompts(images, rows[:1])
