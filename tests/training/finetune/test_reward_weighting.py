"""Success-rate weighting of the reward-weighted objective (`reward_normalization: category`):
r' = r · r̄ / Z(g), so each category weighs by its share of the prompts (rewards.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from t2i_rlhf.training.finetune.config import FinetuneConfig
from t2i_rlhf.training.finetune.rewards import (
    ChainedTransform,
    LabelAgreement,
    RewardThreshold,
    chain,
    fit_category_weighting,
    normalize_reward_column,
    read_category_weighting,
    read_prompt_normalization,
)

PROMPTS = ["two cats", "two cats", "three dogs", "a red cat", "a red cat", "a blue dog"]
CATEGORIES = ["count", "count", "count", "colour", "colour", "colour"]
REWARDS = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.5])  # count: Z = 1/3; colour: Z = 5/6; r̄ = 3.5/6


def test_weights_divide_by_the_category_rate_and_keep_the_round_mean():
    weighting = fit_category_weighting(PROMPTS, CATEGORIES, REWARDS)
    mean = 3.5 / 6
    assert weighting.factors == pytest.approx({"two cats": mean * 3, "three dogs": mean * 3,
                                               "a red cat": mean * 6 / 5, "a blue dog": mean * 6 / 5})
    out = weighting.apply(PROMPTS, REWARDS)
    np.testing.assert_allclose(out, [1.75, 0.0, 0.0, 0.7, 0.7, 0.35])
    assert out.mean() == pytest.approx(REWARDS.mean())  # the model term keeps its scale against β's
    # each category now has the same mean weight: the round's mean reward
    for category in ("count", "colour"):
        assert out[np.array(CATEGORIES) == category].mean() == pytest.approx(mean)


def test_a_category_without_any_reward_stays_zero_and_one_category_changes_nothing():
    weighting = fit_category_weighting(["a", "b", "c"], ["x", "x", "y"], np.array([0.0, 0.0, 1.0]))
    assert weighting.apply(["a", "b", "c"], [0.0, 0.0, 1.0]).tolist() == [0.0, 0.0, 1.0 / 3]
    single = fit_category_weighting(["a", "b"], ["", ""], np.array([0.2, 0.6]))
    np.testing.assert_allclose(single.apply(["a", "b"], [0.2, 0.6]), [0.2, 0.6])
    with pytest.raises(KeyError, match="no category rate"):
        single.apply(["c"], [0.1])


def test_a_prompt_in_two_categories_or_no_samples_is_an_error():
    with pytest.raises(ValueError, match="one category per prompt"):
        fit_category_weighting(["a", "a"], ["x", "y"], np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="no scored samples"):
        fit_category_weighting([], [], np.array([]))


def _samples(path: Path, prompts: list[str], categories: list[str], rewards: list[float | None],
             labels: list[float | None] | None = None) -> Path:
    pq.write_table(pa.table({"prompt": prompts, "category": categories,
                             "reward": pa.array(rewards, type=pa.float32()),
                             "label": pa.array(labels or [None] * len(prompts), type=pa.float32()),
                             "latents": pa.array([[0.0, 1.0]] * len(prompts), type=pa.list_(pa.float32())),
                             "latent_shape": pa.array([[1, 2]] * len(prompts), type=pa.list_(pa.int32()))}), path)
    return path


def test_weighting_from_parquet_skips_nulls_and_rewrites_only_the_reward(tmp_path):
    files = [_samples(tmp_path / "a.parquet", PROMPTS[:3] + ["x"], CATEGORIES[:3] + ["colour"],
                      [*REWARDS[:3], None]),
             _samples(tmp_path / "b.parquet", PROMPTS[3:], CATEGORIES[3:], list(REWARDS[3:]))]
    weighting = read_category_weighting(files, "reward")
    assert weighting == fit_category_weighting(PROMPTS, CATEGORIES, REWARDS)  # the unscored row is not counted
    batch = pq.read_table(files[1])
    out = normalize_reward_column(batch, "reward", weighting)
    assert out.schema == batch.schema and out.column("latents").equals(batch.column("latents"))
    np.testing.assert_allclose(out.column("reward").to_numpy(), [0.7, 0.7, 0.35], rtol=1e-6)


def test_category_weighting_is_for_the_reward_weighted_objective_only():
    assert FinetuneConfig(reward_normalization="category").reward_normalization == "category"
    with pytest.raises(ValidationError, match="reward_weighted"):
        FinetuneConfig(objective="negative_aware", reward_normalization="category")


def test_a_threshold_reads_scores_as_verdicts_before_the_weighting_is_fit(tmp_path):
    scores = [0.97, 0.18, 0.6, 0.95, 0.99, 0.3]  # as a reward model scores: bad images keep some weight
    files = [_samples(tmp_path / "a.parquet", PROMPTS, CATEGORIES, scores)]
    threshold = RewardThreshold(0.5)
    np.testing.assert_array_equal(threshold.apply(PROMPTS, scores), [1, 0, 1, 1, 1, 0])
    weighting = read_category_weighting(files, "reward", before=threshold)
    # count: 2 of 3 good, colour: 2 of 3; r̄ = 4/6: every factor is 1
    assert weighting.factors == pytest.approx({p: 1.0 for p in PROMPTS})
    transform = chain(threshold, weighting)
    assert isinstance(transform, ChainedTransform)
    np.testing.assert_allclose(transform.apply(PROMPTS, scores), [1, 0, 1, 1, 1, 0])
    assert chain(None, weighting) is weighting and chain(None, None) is None
    # the per-prompt statistics are fit on the verdicts too
    assert read_prompt_normalization(files, "reward", 1.0, before=threshold).means["two cats"] == 0.5
    with pytest.raises(ValidationError, match="reward_threshold"):
        FinetuneConfig(reward_threshold=0.0)


SCORES = [0.97, 0.18, 0.6, 0.95, 0.99, 0.3]
LABELS = [1.0, 1.0, 0.0, None, 0.5, 1.0]  # a label flipped to good (2nd), one to bad (3rd), one missing


def test_agreement_keeps_a_positive_only_where_score_and_labels_both_say_good(tmp_path):
    agreement = LabelAgreement(0.5)
    labels = np.array([np.nan if v is None else v for v in LABELS])
    # 2nd: the label alone says good; 3rd: the score alone; 4th: no label, so the score decides;
    # 5th: a tie of labels (mean 1/2) counts as good, as the label source's threshold does
    np.testing.assert_array_equal(agreement.verdicts(SCORES, labels), [1, 0, 0, 1, 1, 0])
    files = [_samples(tmp_path / "a.parquet", PROMPTS, CATEGORIES, SCORES, LABELS)]
    weighting = read_category_weighting(files, "reward", before=agreement)
    # count: 1 of 3 good, colour: 2 of 3, r̄ = 1/2
    assert weighting.factors == pytest.approx({"two cats": 1.5, "three dogs": 1.5, "a red cat": 0.75,
                                               "a blue dog": 0.75})
    out = normalize_reward_column(pq.read_table(files[0]), "reward", agreement)
    assert "label" not in out.column_names
    np.testing.assert_array_equal(out.column("reward").to_numpy(), [1, 0, 0, 1, 1, 0])
    cfg = FinetuneConfig(reward_source="agreement")
    assert cfg.verdict_threshold == 0.5
    assert FinetuneConfig(reward_source="agreement", reward_threshold=0.8).verdict_threshold == 0.8


@pytest.mark.ray
def test_the_training_data_carries_the_weighted_reward(ray_session, tmp_path):
    from t2i_rlhf.training.finetune.data import model_samples_dataset

    files = [_samples(tmp_path / "a.parquet", PROMPTS, CATEGORIES, list(REWARDS))]
    threshold = RewardThreshold(0.5)  # REWARDS' 0.5 counts as good
    weighting = chain(threshold, read_category_weighting(files, "reward", before=threshold))
    weights = weighting.apply(PROMPTS, REWARDS)
    assert sorted(weights.tolist()) == pytest.approx([0, 0, 2 / 3, 2 / 3, 2 / 3, 2])  # count Z 1/3, colour 1
    want = sorted((p, round(float(w), 5)) for p, w in zip(PROMPTS, weights, strict=True))
    # streamed by Ray Data's read and map tasks, or read by the driver when the round is small
    for small in (False, True):
        rows = model_samples_dataset(files, "reward", weighting, small=small).take_all()
        assert sorted((r["prompt"], round(float(r["reward"]), 5)) for r in rows) == want, small
        assert all(list(r["latents"]) == [0.0, 1.0] for r in rows)
    # the joint verdict of score and labels, then its category weighting, in both paths
    scored = [_samples(tmp_path / "b.parquet", PROMPTS, CATEGORIES, SCORES, LABELS)]
    agreement = LabelAgreement(0.5)
    weighting = read_category_weighting(scored, "reward", before=agreement)
    want = sorted((p, round(float(w), 5)) for p, w in zip(
        PROMPTS, weighting.apply(PROMPTS, [1, 0, 0, 1, 1, 0]), strict=True))
    for small in (False, True):
        rows = model_samples_dataset(scored, "reward", chain(agreement, weighting), small=small).take_all()
        assert sorted((r["prompt"], round(float(r["reward"]), 5)) for r in rows) == want, small
        assert all("label" not in r for r in rows)
