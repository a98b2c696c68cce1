"""The feedback service as a Ray Serve application (t2i_rlhf.services.serve, the config in
deploy/feedback_serve.yaml) answering real HTTP requests through the Serve proxy."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from t2i_rlhf.services.client import FeedbackClient
from t2i_rlhf.services.local_server import free_port
from tests.services.helpers import demo_tasks

REPO = Path(__file__).resolve().parents[2]
ADMIN, LAB = "admin-token-serve", "labeller-token-serve"


def test_serve_config_points_at_the_builder() -> None:
    cfg = yaml.safe_load((REPO / "deploy" / "feedback_serve.yaml").read_text())
    [app] = cfg["applications"]
    assert app["import_path"] == "t2i_rlhf.services.serve:app_builder"
    assert app["deployments"][0]["num_replicas"] == 1  # SQLite: one writer
    assert "admin_token" not in app["args"]  # secrets come from the environment
    from t2i_rlhf.services.settings import FeedbackSettings

    assert set(app["args"]) <= set(FeedbackSettings.model_fields)


@pytest.mark.ray
def test_serve_deployment_answers(ray_session, tmp_path: Path) -> None:
    from ray import serve

    from t2i_rlhf.services.serve import FeedbackDeployment, app_builder

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        args = {"db_path": str(tmp_path / "serve.db"), "admin_token": ADMIN, "labeller_tokens": [LAB]}
        assert app_builder(args) is not None  # what the Serve config's import_path builds
        # Same deployment, with health checks patient enough for a busy 2-core CI machine.
        app = FeedbackDeployment.options(health_check_period_s=30, health_check_timeout_s=120).bind(args)
        serve.run(app, name="feedback", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/v1/health", timeout=30).json() == {"status": "ok", "database": "ok"}
        assert httpx.get(f"{url}/v1/stats", timeout=30).status_code == 401
        tasks = demo_tasks(2, seed=5)
        with FeedbackClient(url, ADMIN) as admin, FeedbackClient(url, LAB, labeller="ray") as lab:
            assert admin.publish_tasks(tasks)["published"] == 2
            [task] = lab.next_tasks(1)["tasks"]
            assert lab.image(task["sample_id"]) == tasks[0]["image"]
            assert lab.post_label(task["sample_id"], "good")["created"] is True
            rows, _ = admin.export_labels()
            assert [(r["sample_id"], r["labeller"]) for r in rows] == [(task["sample_id"], "ray")]
        page = httpx.get(url + "/", timeout=30)
        assert page.status_code == 200 and 'id="image"' in page.text
    finally:
        serve.shutdown()
