"""A round end to end on Ray: generator actors -> scorer actor -> buffer, streaming; version tags
after weight updates; determinism across actors; clear errors instead of hangs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from t2i_rlhf.actors.generator import sample_id
from t2i_rlhf.actors.rollout import run_generation_round, start_actors
from t2i_rlhf.actors.scorer import RewardScorer, judge_reward
from t2i_rlhf.model_version import ModelManifest, write_manifest
from t2i_rlhf.samples import decode_png
from t2i_rlhf.shapes import sample_prompts

pytestmark = pytest.mark.ray

ITEMS = [(p.text, seed) for seed, p in enumerate(sample_prompts(12, seed=3))]


@pytest.fixture(scope="module")
def actors(ray_session, sd_model_dir: Path, tmp_path_factory):
    started = start_actors(
        sd_model_dir, tmp_path_factory.mktemp("rollout") / "run", n_generators=2,
        config={"steps": 3, "batch_size": 2, "num_cpus": 1, "torch_threads": 1},
        scorer_model=judge_reward, scorer_version="judge", n_scorers=1, capacity=256,
    )
    yield started
    started.shutdown()


def unet_version(root: Path, sd_model_dir: Path, version: str, **changes) -> Path:
    from diffusers import UNet2DConditionModel

    config = {**UNet2DConditionModel.load_config(sd_model_dir / "unet"), **changes}
    if changes:
        unet = UNet2DConditionModel.from_config(config)
    else:
        unet = UNet2DConditionModel.from_pretrained(sd_model_dir / "unet")
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(0.05 * torch.randn_like(p))
    unet.save_pretrained(root / version / "unet")
    write_manifest(root / version, ModelManifest(version=version, round=1, parent_version="base", steps=1,
                                                 config_hash="test"))
    return root / version


def test_round_streams_into_the_buffer_and_tags_versions(ray_session, actors, sd_model_dir: Path,
                                                         tmp_path: Path) -> None:
    ray = ray_session
    summary = run_generation_round(0, ITEMS, actors.generators, actors.scorers, actors.buffer, batch_size=2)
    assert (summary.requested, summary.generated, summary.added, summary.scored) == (12, 12, 12, 12)
    assert summary.model_versions == ["base"] and summary.reward_model_versions == ["judge"]
    assert summary.images_per_s > 0 and 0.0 <= summary.reward_min <= summary.reward_max <= 1.0
    # Streaming: the scorer started on early chunks while generators still worked on later ones.
    assert summary.first_score_start < summary.last_generation_end and summary.overlap_s > 0

    stored = ray.get(actors.buffer.samples.remote(0)).to_pylist()
    assert sorted(r["sample_id"] for r in stored) == sorted(sample_id(0, s, p) for p, s in ITEMS)
    assert {r["reward_model_version"] for r in stored} == {"judge"}
    for r in stored[:4]:  # the stored reward is the judge's verdict on the stored image
        assert r["reward"] == judge_reward([decode_png(r["image"])], [r["prompt"]])[0]

    # Both actors make the same image from the same seed.
    a, b = ray.get([g.generate.remote(0, ITEMS[:2]) for g in actors.generators])
    assert a.column("image").to_pylist() == b.column("image").to_pylist()

    # Rerunning a round (a resumed run) stores nothing twice.
    again = run_generation_round(0, ITEMS[:4], actors.generators, [], actors.buffer, batch_size=2)
    assert (again.added, again.duplicates, again.scored) == (0, 4, 0)

    # New weights: every later sample names the version that made it.
    v1 = unet_version(tmp_path, sd_model_dir, "r0001")
    assert actors.generators.update("r0001", str(v1)) == ["r0001"] * 2
    actors.scorers.update("judge-2", judge_reward)
    summary = run_generation_round(1, ITEMS[:4], actors.generators, actors.scorers, actors.buffer)
    assert summary.model_versions == ["r0001"] and summary.reward_model_versions == ["judge-2"]
    round1 = ray.get(actors.buffer.samples.remote(1, ["model_version", "reward_model_version"])).to_pylist()
    assert {(r["model_version"], r["reward_model_version"]) for r in round1} == {("r0001", "judge-2")}
    base_images = {r["seed"]: r["image"] for r in stored}
    new_images = ray.get(actors.buffer.samples.remote(1, ["seed", "image"])).to_pylist()
    assert any(base_images[r["seed"]] != r["image"] for r in new_images)


def test_bad_input_is_a_clear_error_not_a_hang(ray_session, actors, sd_model_dir: Path,
                                               tmp_path: Path) -> None:
    ray = ray_session
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        start_actors(tmp_path / "missing-model", tmp_path / "run", scorer_model=judge_reward,
                     scorer_version="judge")
    with pytest.raises(RuntimeError, match="could not reserve"):  # no GPUs here: fail, don't wait
        start_actors(sd_model_dir, tmp_path / "run", config={"num_gpus": 1}, ready_timeout_s=2)
    with pytest.raises(ValueError, match="prompt list is empty"):
        run_generation_round(0, [], actors.generators, actors.scorers, actors.buffer)
    with pytest.raises(ValueError, match="repeats"):
        run_generation_round(0, [ITEMS[0], ITEMS[0]], actors.generators, actors.scorers, actors.buffer)
    batch = ray.get(actors.generators[0].generate.remote(5, ITEMS[:1]))
    with pytest.raises(ValueError, match="missing columns"):
        ray.get(actors.scorers[0].score_batch.remote(batch.drop_columns(["seed"])))
    small = unet_version(tmp_path, sd_model_dir, "r0002", block_out_channels=[32, 64])
    with pytest.raises(ValueError, match="shape mismatch"):
        ray.get(actors.generators[0].update_weights.remote("r0002", str(small)))
    with pytest.raises(FileNotFoundError, match="no reward model"):
        RewardScorer(tmp_path / "no-reward-model", "rm-1")
    with pytest.raises(ValueError, match="version"):
        RewardScorer(judge_reward)
    scorer = RewardScorer(lambda images, prompts: np.zeros(len(images) + 1), "broken")
    with pytest.raises(ValueError, match="2 scores for 1 samples"):
        scorer.score_batch(batch)
