"""SampleBuffer actor: persistence readable by plain pyarrow, back-pressure at capacity, recovery
after a kill with nothing lost or duplicated, and the labelling queries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from t2i_rlhf.actors.buffer import LABEL_SCHEMA, BufferFullError, SampleBufferActor, load_round
from t2i_rlhf.actors.generator import sample_id
from t2i_rlhf.samples import SAMPLE_SCHEMA, decode_png, png_bytes
from t2i_rlhf.shapes import parse_prompt, render

pytestmark = pytest.mark.ray


def make_batch(round: int, seeds: list[int], prompt: str = "two circles",
               rewards: list[float] | None = None) -> pa.RecordBatch:
    """Samples without a diffusion model: rendered images, zero latents."""
    n = len(seeds)
    rows = [
        {
            "sample_id": sample_id(round, s, prompt), "round": round, "prompt": prompt,
            "category": parse_prompt(prompt).category, "seed": s, "model_version": "base",
            "image": png_bytes(render(parse_prompt(prompt), s)), "latents": [0.0] * 16,
            "latent_shape": [4, 2, 2], "reward": None if rewards is None else rewards[i],
            "reward_model_version": None if rewards is None else "rm-test", "label": None, "n_labels": None,
        }
        for i, s in enumerate(seeds)
    ]
    assert len(rows) == n
    return pa.RecordBatch.from_pylist(rows, schema=SAMPLE_SCHEMA)


@pytest.fixture
def new_buffer(ray_session, tmp_path: Path):
    actors = []

    def start(capacity: int = 64, storage: Path | str | None = None):
        actor = SampleBufferActor.remote(str(storage or tmp_path / "run"), capacity)
        actors.append(actor)
        return actor

    yield start
    for actor in actors:
        ray_session.kill(actor)


def test_rounds_persist_as_parquet_plain_pyarrow_reads(ray_session, new_buffer, tmp_path: Path) -> None:
    ray = ray_session
    buf = new_buffer()
    receipts = ray.get([buf.put.remote(make_batch(0, [1, 2, 3], rewards=[0.1, 0.5, 0.9])),
                        buf.put.remote(make_batch(0, [4, 5])), buf.put.remote(make_batch(1, [1]))])
    assert [r["added"] for r in receipts] == [3, 2, 1]
    assert receipts[0]["rewards"] == pytest.approx([0.1, 0.5, 0.9])
    ids = [sample_id(0, s, "two circles") for s in (1, 2, 3, 4, 5)]
    assert ray.get(buf.attach_labels.remote({ids[0]: (1.0, 1), ids[1]: (0.5, 2)})) == 2

    # Documented layout, read without any project code.
    samples_dir = tmp_path / "run" / "round-00000" / "samples"
    table = pq.read_table(samples_dir)
    assert table.schema.names == SAMPLE_SCHEMA.names
    assert all(table.schema.field(f.name).type == f.type for f in SAMPLE_SCHEMA)
    assert sorted(table.column("sample_id").to_pylist()) == sorted(ids)
    labels = pq.read_table(tmp_path / "run" / "round-00000" / "labels")
    assert labels.schema.equals(LABEL_SCHEMA)
    assert dict(zip(labels["sample_id"].to_pylist(), labels["label"].to_pylist(), strict=True)) == {
        ids[0]: 1.0, ids[1]: 0.5}

    # The actor's view, load_round's view and the images agree.
    served = ray.get(buf.samples.remote(0))
    from_disk = load_round(tmp_path / "run", 0)
    for t in (served, from_disk):
        by_id = {r["sample_id"]: r for r in t.to_pylist()}
        assert set(by_id) == set(ids)
        assert (by_id[ids[1]]["label"], by_id[ids[1]]["n_labels"]) == (0.5, 2)
        assert by_id[ids[2]]["label"] is None
        assert np.array_equal(decode_png(by_id[ids[0]]["image"]), render(parse_prompt("two circles"), 1))
    assert ray.get(buf.samples.remote(1)).num_rows == 1
    picked = ray.get(buf.get.remote([ids[4], ids[0]], ["sample_id"]))
    assert picked["sample_id"].to_pylist() == [ids[4], ids[0]]

    # Column pruning: only what is asked for (plus the id labels join on) is read, labels still merged.
    pruned = load_round(tmp_path / "run", 0, ["label", "reward"])
    assert pruned.schema.names == ["sample_id", "reward", "label"]
    assert dict(zip(pruned["sample_id"].to_pylist(), pruned["label"].to_pylist(), strict=True))[ids[1]] == 0.5
    rewards = ray.get(buf.samples.remote(0, ["reward"]))["reward"].to_pylist()
    assert sorted(r for r in rewards if r is not None) == pytest.approx([0.1, 0.5, 0.9])
    ray.get(buf.release_round.remote(0))
    assert ray.get(buf.samples.remote(0, ["label"])).schema.names == ["label"]
    assert ray.get(buf.get.remote([ids[1]], ["n_labels"]))["n_labels"].to_pylist() == [2]
    with pytest.raises(ValueError, match="unknown sample columns"):
        load_round(tmp_path / "run", 0, ["no_such_column"])


def test_full_buffer_makes_producers_wait_never_drops(ray_session, new_buffer) -> None:
    ray = ray_session
    buf = new_buffer(capacity=6)
    assert ray.get(buf.put.remote(make_batch(0, [1, 2, 3, 4]))) ["added"] == 4
    with pytest.raises(BufferFullError, match="full"):  # told to wait, at once
        ray.get(buf.put.remote(make_batch(1, [1, 2, 3]), 0))
    with pytest.raises(BufferFullError):  # told after waiting in vain
        ray.get(buf.put.remote(make_batch(1, [1, 2, 3]), 0.5))
    waiting = buf.put.remote(make_batch(1, [1, 2, 3]), None)
    ready, _ = ray.wait([waiting], timeout=1.5)
    assert not ready, "a put into a full buffer must wait, not drop or overflow"
    assert ray.get(buf.stats.remote())["resident"] == 4
    assert ray.get(buf.release_round.remote(0)) == 4  # the consumer is done with round 0
    assert ray.get(waiting, timeout=300)["added"] == 3
    stats = ray.get(buf.stats.remote())
    assert (stats["resident"], stats["total"]) == (3, 7)
    assert ray.get(buf.samples.remote(0)).num_rows == 4  # released rounds are still served, from disk
    with pytest.raises(ValueError, match="never fit"):
        ray.get(buf.put.remote(make_batch(2, list(range(7)))))


def test_restart_rebuilds_state_without_loss_or_duplicates(ray_session, new_buffer) -> None:
    ray = ray_session
    buf = new_buffer(capacity=100)
    ray.get([buf.put.remote(make_batch(0, [s, s + 1])) for s in range(0, 20, 2)])
    ray.get(buf.release_round.remote(0))
    ray.get(buf.put.remote(make_batch(1, list(range(10)), rewards=[0.5] * 10)))
    some = [sample_id(1, s, "two circles") for s in (0, 1)]
    ray.get(buf.attach_labels.remote([(some[0], 1.0, 1), (some[1], 0.0, 3)]))
    before = ray.get(buf.stats.remote())

    ray.kill(buf, no_restart=False)
    # A put racing the kill runs on the old actor or, retried by Ray, on the new one (possibly
    # both, if the first stored it and died before replying); sample 10 is stored once either way.
    # Samples 8 and 9 stand for a producer re-sending a batch whose receipt it lost.
    receipt = ray.get(buf.put.remote(make_batch(1, [8, 9, 10])), timeout=300)
    assert receipt["added"] + receipt["duplicates"] == 3 and receipt["duplicates"] >= 2
    after = ray.get(buf.stats.remote())
    assert after["total"] == before["total"] + 1
    assert after["rounds"][0]["released"] and after["resident"] == before["resident"] + 1
    for rnd, n in ((0, 20), (1, 11)):
        ids = ray.get(buf.samples.remote(rnd, ["sample_id"]))["sample_id"].to_pylist()
        assert len(ids) == len(set(ids)) == n
    rows = ray.get(buf.get.remote(some)).to_pylist()
    labelled = {r["sample_id"]: (r["label"], r["n_labels"]) for r in rows}
    assert labelled == {some[0]: (1.0, 1), some[1]: (0.0, 3)}


def test_unlabelled_queries_for_labellers(ray_session, new_buffer, tmp_path: Path) -> None:
    ray = ray_session
    buf = new_buffer(storage=f"file://{tmp_path}/uri-run")  # a pyarrow filesystem URI works too
    rewards = [0.05, 0.45, 0.9, 0.55, 0.2, 0.7]
    ray.get(buf.put.remote(make_batch(2, list(range(6)), rewards=rewards)))
    ray.get(buf.put.remote(make_batch(2, [6, 7])))  # unscored
    ids = [sample_id(2, s, "two circles") for s in range(8)]
    ray.get(buf.attach_labels.remote({ids[1]: (1.0, 1)}))

    by_uncertainty = ray.get(buf.unlabelled.remote(8, "uncertainty", columns=["sample_id", "reward"]))
    assert by_uncertainty.column_names == ["sample_id", "reward"]
    assert by_uncertainty["sample_id"].to_pylist() == [ids[3], ids[5], ids[4], ids[2], ids[0], ids[6], ids[7]]
    random = ray.get(buf.unlabelled.remote(4, "random", round=2, seed=1))["sample_id"].to_pylist()
    assert len(set(random)) == 4 and ids[1] not in random
    assert random == ray.get(buf.unlabelled.remote(4, "random", round=2, seed=1))["sample_id"].to_pylist()
    ray.get(buf.attach_labels.remote({s: (0.0, 1) for s in ids}))
    assert ray.get(buf.unlabelled.remote(8)).num_rows == 0
    ray.get(buf.attach_labels.remote({ids[0]: (None, 0)}))  # all its labels were skips/withdrawn
    assert ray.get(buf.unlabelled.remote(8))["sample_id"].to_pylist() == [ids[0]]
    assert load_round(f"file://{tmp_path}/uri-run", 2)["n_labels"].to_pylist() == [0] + [1] * 7


def test_bad_input_is_a_clear_error(ray_session, new_buffer) -> None:
    ray = ray_session
    buf = new_buffer()
    wrong = make_batch(0, [1]).drop_columns(["latents"])
    with pytest.raises(ValueError, match="missing columns"):
        ray.get(buf.put.remote(wrong))
    retyped = pa.table({**{n: make_batch(0, [1]).column(n) for n in SAMPLE_SCHEMA.names},
                        "seed": pa.array(["1"])})
    with pytest.raises(ValueError, match="seed"):
        ray.get(buf.put.remote(retyped))
    with pytest.raises(ValueError, match="unknown sample id"):
        ray.get(buf.attach_labels.remote({"r0-s1-nothere": (1.0, 1)}))
    ray.get(buf.put.remote(make_batch(0, [1])))
    with pytest.raises(ValueError, match="bad label"):
        ray.get(buf.attach_labels.remote({sample_id(0, 1, "two circles"): (1.5, 1)}))
    with pytest.raises(ValueError, match="strategy"):
        ray.get(buf.unlabelled.remote(1, "loudest"))
    assert ray.get(buf.stats.remote())["total"] == 1
    assert ray.get(buf.rounds.remote()) == [0]
