"""Labels that change after their round was pulled (a late label, an undo) reach the buffer at
the next round's pull, through the real feedback service and the real buffer actor."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from t2i_rlhf.actors.buffer import SampleBufferActor
from t2i_rlhf.online.steps import resync_earlier_labels
from t2i_rlhf.services.client import FeedbackClient, aggregate_labels
from t2i_rlhf.services.settings import FeedbackSettings
from tests.actors.test_buffer import make_batch
from tests.services.helpers import live_server

pytestmark = pytest.mark.ray

ADMIN, LAB = "admin-token-resync", "labeller-token-resync"


def test_late_and_undone_labels_reach_the_buffer_next_round(ray_session, tmp_path: Path) -> None:
    buffer = SampleBufferActor.remote(str(tmp_path / "run"), 64)
    round0 = make_batch(0, [1, 2, 3, 4])
    ray_session.get([buffer.put.remote(round0), buffer.put.remote(make_batch(1, [1, 2]))])
    s1, s2, s3, s4 = round0.column("sample_id").to_pylist()
    tasks = [{k: row[k] for k in ("sample_id", "round", "prompt", "category", "model_version", "image")}
             for row in round0.to_pylist()]
    settings = FeedbackSettings(db_path=tmp_path / "fb.db", admin_token=ADMIN, labeller_tokens=[LAB])
    with (live_server(settings) as url, FeedbackClient(url, ADMIN) as admin,
          FeedbackClient(url, LAB, labeller="ann") as ann, FeedbackClient(url, LAB, labeller="bob") as bob):
        admin.publish_tasks(tasks)
        for sid, label in ((s1, "good"), (s2, "bad"), (s3, "good")):
            ann.post_label(sid, label)
        # the loop pulls round 0 (collect_labels) ...
        ray_session.get(buffer.attach_labels.remote(aggregate_labels(admin.export_labels(round=0)[0])))
        ctx = SimpleNamespace(feedback=admin, actors=SimpleNamespace(buffer=buffer))
        assert resync_earlier_labels(ctx, 1, admin.export_labels()[0]) == 0  # nothing changed since
        # ... then people go on: one undoes a label, a second labeller and a late task come in
        ann.undo(s3)
        bob.post_label(s1, "bad")
        ann.post_label(s4, "good")
        assert resync_earlier_labels(ctx, 1, admin.export_labels()[0]) == 3
        # idempotent: a resumed round changes nothing more
        assert resync_earlier_labels(ctx, 1, admin.export_labels()[0]) == 0
    held = ray_session.get(buffer.samples.remote(0, ["sample_id", "label", "n_labels"])).to_pylist()
    by_id = {r["sample_id"]: (r["label"], r["n_labels"]) for r in held}
    assert by_id[s1] == (0.5, 2)
    assert by_id[s2] == (0.0, 1)
    assert by_id[s3][1] in (0, None) and by_id[s3][0] is None  # undone: no longer labelled
    assert by_id[s4] == (1.0, 1)
    ray_session.kill(buffer)
