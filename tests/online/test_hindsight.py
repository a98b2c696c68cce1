"""Hindsight relabelling with a real scorer actor (the oracle judge as its reward model): a bad
image becomes a good sample of the prompt it shows, never of a held-out prompt."""

from __future__ import annotations

import pyarrow as pa
import pytest

from t2i_rlhf.actors.restarts import scorer_group
from t2i_rlhf.actors.scorer import RewardScorerActor, judge_reward
from t2i_rlhf.config import ExperimentConfig
from t2i_rlhf.online.hindsight import SUFFIX, alternatives, relabel_samples, rollout_prompts
from t2i_rlhf.samples import SAMPLE_SCHEMA, png_bytes
from t2i_rlhf.shapes import parse_prompt, render
from t2i_rlhf.training.reward.data import shapes_perturbations


def config(**hindsight) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "run": {"name": "h", "rounds": 1}, "model": {"base": "b", "clip": "c", "validate_paths": False},
        "rollout": {"samples_per_round": 8}, "labelling": {"labels_per_round": 8},
        "hindsight": {"enabled": True, **hindsight}})


def table(rows: list[tuple[str, str, float, float | None]]) -> pa.Table:
    """(prompt drawn for, prompt the image shows, reward, label) per sample."""
    return pa.Table.from_pylist([
        {"sample_id": f"s{i}", "round": 0, "prompt": drawn, "category": parse_prompt(drawn).category,
         "seed": i, "model_version": "base", "image": png_bytes(render(parse_prompt(shown), i)),
         "latents": [float(i)], "latent_shape": [1], "reward": reward, "reward_model_version": "judge",
         "label": label, "n_labels": 0 if label is None else 1}
        for i, (drawn, shown, reward, label) in enumerate(rows)], schema=SAMPLE_SCHEMA)


def test_relabelled_samples_need_an_r_that_is_not_the_label() -> None:
    with pytest.raises(ValueError, match="reward_source"):
        ExperimentConfig.model_validate({**config().model_dump(), "finetune": {"reward_source": "label"}})


def test_alternatives_name_only_prompts_the_rollout_draws() -> None:
    drawn = rollout_prompts(config())
    found = alternatives("two circles", shapes_perturbations, drawn, 11)
    assert "three circles" not in found  # (3, circle) is a held-out pair
    assert {"one circle", "four circles", "two squares"} <= set(found) and "two circles" not in found
    assert "three circles" in alternatives("two circles", shapes_perturbations, lambda q: True, 11)


@pytest.mark.usefixtures("ray_session")
def test_bad_images_become_good_samples_of_the_prompt_they_show() -> None:
    scorers = scorer_group([RewardScorerActor.remote(judge_reward, "judge")], "judge")
    data = table([
        ("three squares", "two squares", 0.0, None),   # wrong count: relabelled "two squares"
        ("two circles", "three circles", 0.0, 0.0),    # what it shows is held out: left alone
        ("a red circle", "a red circle", 1.0, 1.0),    # good: left alone
        ("a blue square", "a yellow square", 0.9, 0.0),  # the label says bad: relabelled
    ])
    out, summary = relabel_samples(data, config(prompts=16), scorers)
    assert out.schema.equals(SAMPLE_SCHEMA)
    assert out.column("sample_id").to_pylist() == ["s0" + SUFFIX, "s3" + SUFFIX]
    assert out.column("prompt").to_pylist() == ["two squares", "a yellow square"]
    assert out.column("reward").to_pylist() == [1.0, 1.0]
    assert out.column("label").to_pylist() == [None, None]
    assert out.column("latents").to_pylist() == [[0.0], [3.0]]  # the same clean latents
    assert summary == {"candidates": 3, "relabelled": 2, "by_category": {"colour": 1, "count": 1}}

    none, summary = relabel_samples(data.slice(2, 1), config(), scorers)
    assert none.num_rows == 0 and summary["relabelled"] == 0
