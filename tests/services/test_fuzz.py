"""A bounded schemathesis run against the real service on 127.0.0.1 (every check, a fixed seed and
example budget), as the admin and as a labeller account: no 5xx, and no answer that departs from
/openapi.json. Then, without schemathesis, the cases such runs found, each pinned down."""

from __future__ import annotations

import base64
import logging
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from t2i_rlhf.services.app import create_app
from t2i_rlhf.services.client import FeedbackClient
from t2i_rlhf.services.schemas import PNG_B64_PATTERN, PNG_MAGIC, SAMPLE_ID_EXAMPLE, TaskIn
from t2i_rlhf.services.settings import FeedbackSettings
from tests.services.helpers import demo_tasks, live_server

ADMIN = "admin-token-fuzz"
SEED, EXAMPLES = 20251202, 10


@pytest.mark.parametrize("who", ["admin", "labeller"])
def test_schemathesis_finds_no_5xx_and_no_schema_violation(
    who: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("schemathesis", reason="a dev extra: pip install -e '.[dev]'")
    settings = FeedbackSettings(db_path=tmp_path / "fb.db", admin_token=ADMIN)
    junit = tmp_path / "junit.xml"
    with caplog.at_level(logging.ERROR), live_server(settings) as url, FeedbackClient(url, ADMIN) as admin:
        admin.publish_tasks(demo_tasks(2, round=0, seed=0))  # ids the schema gives as examples
        assert admin._request("GET", f"/v1/tasks/{SAMPLE_ID_EXAMPLE}").status_code == 200
        token = admin.create_labeller("alice")["token"] if who == "labeller" else ADMIN
        cmd = [
            sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
            "--checks", "all", "--max-examples", str(EXAMPLES), "--seed", str(SEED),
            "--header", f"Authorization: Bearer {token}", "--workers", "1", "--request-timeout", "30",
            "--no-color", "--report", "junit", "--report-junit-path", str(junit),
            "--generation-database", "none",  # each run the same: nothing replayed from an earlier one
        ]  # fmt: skip
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)  # its files go there
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-8000:]
    operations = int(re.search(r"Tested: (\d+)", out).group(1))
    generated, passed = map(int, re.search(r"(\d+) generated, (\d+) passed", out).groups())
    assert operations == 16 and generated == passed > 500, out[-3000:]
    suites = ET.parse(junit).getroot()
    assert sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites.iter("testsuite")) == 0
    assert not [r for r in caplog.records if "unhandled error" in r.getMessage()]  # no 500 was answered


# -- what runs like the above found -----------------------------------------------------------------
@pytest.fixture
def client(tmp_path: Path):
    with TestClient(create_app(FeedbackSettings(db_path=tmp_path / "fb.db", admin_token=ADMIN))) as c:
        yield c


A = {"Authorization": f"Bearer {ADMIN}"}


def test_405_lists_every_method_of_the_path(client: TestClient) -> None:
    """/v1/labels is two routes (GET export, POST label): Starlette's 405 named the first only. And
    as OpenAPI reads paths, a concrete one comes before a templated one that also matches it."""
    for method, path, allowed in (
        ("OPTIONS", "/v1/labels", "GET, POST"),
        ("OPTIONS", "/v1/labellers", "GET, POST"),
        ("OPTIONS", "/v1/labels/batch", "POST"),  # not DELETE /v1/labels/{sample_id}
        ("OPTIONS", "/v1/tasks/next", "POST"),  # not GET /v1/tasks/{sample_id}
        ("PUT", "/v1/labellers/alice", "DELETE"),
        ("PUT", "/v1/tasks/x", "GET"),
    ):
        r = client.request(method, path, headers=A)
        assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
        assert r.headers["allow"] == allowed, (method, path)


def test_integer_fields_take_json_integers_only(client: TestClient) -> None:
    """`false` and `"3"` were quietly read as 0 and 3; 3.0 is an integer in JSON Schema."""
    for bad in (False, True, "3"):
        for path, body in (
            ("/v1/tasks/next", {"round": bad}),
            ("/v1/tasks/next", {"n": bad}),
            ("/v1/labels", {"sample_id": "x", "label": "good", "time_spent_ms": bad}),
        ):
            r = client.post(path, json=body, headers=A)
            assert r.status_code == 422 and "JSON integer" in r.text, (path, body, r.text)
    assert client.post("/v1/tasks/next", json={"round": 3.0, "n": 2.0}, headers=A).status_code == 200
    assert client.post("/v1/tasks/next", json={"round": 3.5}, headers=A).status_code == 422


def test_labeller_names_are_ascii_as_the_schema_says(client: TestClient) -> None:
    """`\\w` is Unicode in Python and ASCII in the schema's regex dialect: `ü` passed here only."""
    assert client.get("/v1/me", params={"labeller": "ü"}, headers=A).status_code == 422
    assert client.post("/v1/labellers", json={"name": "jürgen"}, headers=A).status_code == 422
    assert client.get("/v1/me", params={"labeller": "j.urgen+1@x"}, headers=A).json()["labeller"] == "j.urgen+1@x"


PNG = base64.b64encode(PNG_MAGIC + b"rest of a png!").decode()  # 22 bytes: ends in "=="


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (PNG, True),
        (PNG.rstrip("="), False),  # unpadded
        (base64.b64encode(PNG_MAGIC).decode(), True),  # the signature alone
        (base64.b64encode(PNG_MAGIC + b"\xff").decode(), True),
        ("iVBORw0KGgoAAB==", True),  # non-zero padding bits: Python's decoder takes them
        ("", False),
        ("!!", False),
        (base64.b64encode(b"GIF89a......").decode(), False),
        (PNG + "A", False),
        ("iVBORw0KGgs=", False),  # the signature's last byte is off
    ],
)
def test_the_image_pattern_is_what_the_validator_accepts(value: str, valid: bool) -> None:
    """The schema's pattern and the service's check agree, so a schema-valid image is accepted."""
    assert PNG.endswith("==")
    try:
        TaskIn.model_validate({"sample_id": "s", "round": 0, "prompt": "p", "image_b64": value})
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == valid == bool(re.fullmatch(PNG_B64_PATTERN, value))
