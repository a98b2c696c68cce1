"""Generators and scorers that die mid-round: Ray restarts them from their constructor's arguments,
the driver sets the published version on them again and resubmits what they lost, so the round
completes with every (prompt, seed) stored once, tagged with the version that really drew it.
The first tests need no Ray: they pin down the pieces the Ray tests rely on."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray

from t2i_rlhf.actors.generator import sample_id
from t2i_rlhf.actors.restarts import (
    StaleVersionError,
    call_each,
    is_recoverable,
    restart_options,
    stale_role,
)
from t2i_rlhf.actors.rollout import run_generation_round, start_actors
from t2i_rlhf.actors.scorer import RewardScorer, judge_reward
from t2i_rlhf.samples import SAMPLE_SCHEMA, decode_png, png_bytes
from t2i_rlhf.shapes import parse_prompt, render, sample_prompts
from tests.actors.test_rollout import unet_version

ITEMS = [(p.text, seed) for seed, p in enumerate(sample_prompts(12, seed=5))]
PUBLISHED = "r0001"


# --- without Ray -------------------------------------------------------------------------------

def wrapped(cause: Exception) -> Exception:
    """`cause` as Ray raises it from ray.get: a RayTaskError that is also an instance of it."""
    return ray.exceptions.RayTaskError("score_batch", "Traceback ...", cause, proctitle="ray::x", pid=1,
                                       ip="127.0.0.1").as_instanceof_cause()


def test_stale_errors_survive_ray_and_name_the_stage() -> None:
    error = StaleVersionError("scorer", "rm-r0000", "rm-r0001")
    again = pickle.loads(pickle.dumps(error))
    assert (again.role, again.held, again.expected) == ("scorer", "rm-r0000", "rm-r0001")
    assert "'rm-r0000', not the expected 'rm-r0001'" in str(again)
    # A chain's put fails with the generator's error wrapped once per stage it passed through.
    deep = wrapped(wrapped(StaleVersionError("generator", "base", PUBLISHED)))
    assert is_recoverable(deep) and stale_role(deep) == "generator"
    assert is_recoverable(wrapped(ray.exceptions.ActorUnavailableError("restarting", None)))
    assert stale_role(ray.exceptions.ActorDiedError()) is None
    assert not is_recoverable(wrapped(ValueError("missing columns"))) and stale_role(ValueError()) is None
    assert restart_options(3) == {"max_restarts": 3, "max_task_retries": -1}
    assert restart_options(0) == {"max_restarts": 0, "max_task_retries": 0}
    with pytest.raises(ValueError, match=">= -1"):
        restart_options(-2)


def test_a_scorer_refuses_work_at_a_version_it_does_not_hold() -> None:
    prompt = "two circles"
    row = {"sample_id": "r0-s0-x", "round": 0, "prompt": prompt, "category": "count", "seed": 0,
           "model_version": "base", "image": png_bytes(render(parse_prompt(prompt), 0)), "latents": [0.0],
           "latent_shape": [1], "reward": None, "reward_model_version": None, "label": None, "n_labels": None}
    batch = pa.RecordBatch.from_pylist([row], schema=SAMPLE_SCHEMA)
    scorer = RewardScorer(judge_reward, "judge-0")
    assert scorer.score_batch(batch, expect_version="judge-0").column("reward").to_pylist() == [1.0]
    with pytest.raises(StaleVersionError, match="'judge-0', not the expected 'judge-1'"):
        scorer.score_batch(batch, expect_version="judge-1")
    scorer.update_reward_model("judge-1", judge_reward)
    assert scorer.score_batch(batch, expect_version="judge-1").column("reward_model_version").to_pylist() == [
        "judge-1"]


# --- on Ray ------------------------------------------------------------------------------------

def killing_judge(victim, marker: Path, wait_to_die: bool = False):
    """The oracle judge, which on its first call kills `victim` with ray.kill(no_restart=False), so
    that Ray restarts it. That call scores a round's first chunk, while the generators still work on
    later ones: the kill lands mid-round. `marker` makes it kill once, across processes and restarts.
    With `wait_to_die` (the victim is this scorer) the call waits for its own death."""

    def score(images: list[np.ndarray], prompts: list[str]) -> np.ndarray:
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            return judge_reward(images, prompts)
        ray.kill(victim, no_restart=False)
        if wait_to_die:
            time.sleep(60)
        return judge_reward(images, prompts)

    return score


def restarted(actor) -> bool:
    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().was_current_actor_reconstructed))


@pytest.fixture(scope="module")
def actors(ray_session, sd_model_dir: Path, tmp_path_factory):
    """Two generators and one scorer, started at the base model and the judge "judge-0", then
    given model version r0001: a restart brings an actor back to base and judge-0."""
    root = tmp_path_factory.mktemp("restarts")
    started = start_actors(
        sd_model_dir, root / "run", n_generators=2,
        config={"steps": 3, "batch_size": 2, "num_cpus": 1, "torch_threads": 1},
        scorer_model=judge_reward, scorer_version="judge-0", n_scorers=1, capacity=256, max_restarts=3,
    )
    started.generators.update(PUBLISHED, str(unet_version(root, sd_model_dir, PUBLISHED)))
    yield started
    started.shutdown()


def stored_round(actors, round: int) -> list[dict]:
    rows = ray.get(actors.buffer.samples.remote(round)).to_pylist()
    ids = [r["sample_id"] for r in rows]
    assert sorted(ids) == sorted(sample_id(round, s, p) for p, s in ITEMS)  # each (prompt, seed) once
    return rows


@pytest.mark.ray
def test_a_generator_killed_mid_round_rejoins_at_the_published_weights(actors, tmp_path: Path) -> None:
    marker = tmp_path / "killed-generator"
    actors.scorers.update("judge-1", killing_judge(actors.generators[0], marker))
    summary = run_generation_round(1, ITEMS, actors.generators, actors.scorers, actors.buffer, batch_size=2)

    assert marker.exists() and restarted(actors.generators[0]) and not restarted(actors.generators[1])
    assert (summary.requested, summary.added, summary.duplicates, summary.scored) == (12, 12, 0, 12)
    assert summary.resubmitted >= 1  # the chunk the kill interrupted, refused by the restarted actor
    assert summary.model_versions == [PUBLISHED]
    rows = stored_round(actors, 1)
    assert {(r["model_version"], r["reward_model_version"]) for r in rows} == {(PUBLISHED, "judge-1")}

    # The tag is true: every stored image is what the never-killed generator draws at r0001, and
    # the driver goes on with the restarted one.
    fresh = ray.get([actors.generators[1].generate.remote(1, ITEMS[i : i + 2], expect_version=PUBLISHED)
                     for i in range(0, len(ITEMS), 2)])
    drawn = pa.Table.from_batches(fresh).select(["sample_id", "image"]).to_pylist()
    assert {r["sample_id"]: r["image"] for r in rows} == {r["sample_id"]: r["image"] for r in drawn}
    again = ray.get(actors.generators[0].generate.remote(1, ITEMS[:2], expect_version=PUBLISHED))
    assert again["image"].to_pylist() == fresh[0]["image"].to_pylist()


@pytest.mark.ray
def test_a_scorer_killed_mid_round_rejoins_at_the_published_reward_model(actors, tmp_path: Path) -> None:
    scorers = actors.scorers
    scorers.update("judge-2", killing_judge(scorers[0], tmp_path / "killed-in-round", wait_to_die=True))
    summary = run_generation_round(2, ITEMS, actors.generators, scorers, actors.buffer, batch_size=2)

    assert restarted(scorers[0])
    assert (summary.requested, summary.added, summary.duplicates, summary.scored) == (12, 12, 0, 12)
    assert summary.resubmitted >= 1 and summary.reward_model_versions == ["judge-2"]
    rows = stored_round(actors, 2)
    assert {(r["model_version"], r["reward_model_version"]) for r in rows} == {(PUBLISHED, "judge-2")}
    for r in rows:
        assert r["reward"] == judge_reward([decode_png(r["image"])], [r["prompt"]])[0]

    # Rescoring (steps.rescore_samples) survives a killed scorer the same way, results in order.
    scorers.update("judge-3", killing_judge(scorers[0], tmp_path / "killed-in-rescore", wait_to_die=True))
    batches = ray.get(actors.buffer.samples.remote(2)).to_batches(max_chunksize=4)
    scored = call_each(scorers, batches, lambda s, b: s.score_batch.remote(b, expect_version=scorers.version))
    assert [b["sample_id"].to_pylist() for b in scored] == [b["sample_id"].to_pylist() for b in batches]
    assert {v for b in scored for v in b["reward_model_version"].to_pylist()} == {"judge-3"}
    assert ray.get(scorers[0].version.remote()) == "judge-3"
