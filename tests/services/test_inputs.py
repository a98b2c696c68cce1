"""Feedback service inputs found by schema-driven fuzzing (schemathesis): integers beyond what the
store holds, sample ids that publishing took but nothing else could use, and an OpenAPI schema
that did not describe the answers. In-process (TestClient) against a real SQLite file."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from t2i_rlhf.services.app import create_app
from t2i_rlhf.services.client import FeedbackClient
from t2i_rlhf.services.schemas import MAX_ROUND, PNG_MAGIC
from t2i_rlhf.services.settings import FeedbackSettings

ADMIN, LAB = "admin-token-123", "labeller-token-1"
A = {"Authorization": f"Bearer {ADMIN}"}
L = {"Authorization": f"Bearer {LAB}"}
PARQUET = {**A, "Content-Type": "application/vnd.apache.parquet"}
PNG = PNG_MAGIC + b"not a real image, the service only checks the signature"
MAX_BODY = 64 * 1024
TASK_SCHEMA = pa.schema(
    [("sample_id", pa.string()), ("round", pa.int64()), ("prompt", pa.string()), ("image", pa.binary())]
)
EMPTY = pa.Table.from_pylist([], schema=TASK_SCHEMA)


def _task(sid: str, round: int = 0, **kw: Any) -> dict[str, Any]:
    return {"sample_id": sid, "round": round, "prompt": "one red circle", "image": PNG, **kw}


def _json(t: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in t.items() if k != "image"}
    return {**out, "image_b64": base64.b64encode(t["image"]).decode()}


def _parquet(rows: list[dict[str, Any]] | pa.Table, schema: pa.Schema | None = None) -> bytes:
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = FeedbackSettings(
        db_path=tmp_path / "feedback.db", admin_token=ADMIN, labeller_tokens=[LAB], max_body_bytes=MAX_BODY, max_batch=3
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _nothing_stored(c: TestClient) -> bool:
    return c.get("/v1/stats", headers=A).json()["rounds"] == []


def _is_validation_error(r: Any) -> bool:
    """The declared 422 shape: {"error": "invalid_request", "detail": [{loc, msg, type}, ...]}."""
    body = r.json()
    return (
        r.status_code == 422
        and body["error"] == "invalid_request"
        and isinstance(body["detail"], list)
        and all(isinstance(e["loc"], list) and isinstance(e["msg"], str) and e["type"] for e in body["detail"])
    )


# -- 1. integers beyond what the store holds are 422, not 500 ------------------------------------------
BIG = [2**63, 2**64 + 7, -(2**63) - 1, MAX_ROUND + 1]


@pytest.mark.parametrize("value", BIG)
def test_huge_integers_are_422_everywhere(client: TestClient, value: int) -> None:
    requests = [
        ("GET", f"/v1/stats?round={value}", A, None, None),
        ("GET", f"/v1/labels?round={value}", A, None, None),
        ("GET", f"/v1/labels?round={value}&format=parquet", A, None, None),
        ("GET", f"/v1/labels?limit={value}", A, None, None),
        ("POST", "/v1/tasks/next", L, {"round": value}, None),
        ("POST", "/v1/tasks/next", L, {"n": value}, None),
        ("POST", "/v1/tasks", A, {"tasks": [_json(_task("a", round=value))]}, None),
        ("POST", "/v1/labels", L, {"sample_id": "a", "label": "good", "time_spent_ms": value}, None),
    ]
    for method, path, headers, body, content in requests:
        r = client.request(method, path, headers=headers, json=body, content=content)
        assert _is_validation_error(r), (method, path, body, r.status_code, r.text)
    assert _nothing_stored(client)


@pytest.mark.parametrize(
    ("value", "arrow_type"),
    [(2**63, pa.uint64()), (2**64 - 1, pa.uint64()), (-(2**63), pa.int64()), (MAX_ROUND + 1, pa.int64())],
)
def test_huge_round_in_parquet_is_422_naming_the_row(client: TestClient, value: int, arrow_type: pa.DataType) -> None:
    schema = TASK_SCHEMA.set(1, pa.field("round", arrow_type))
    rows = [_task("ok-0"), _task("big", round=value)]
    r = client.post("/v1/tasks", content=_parquet(rows, schema), headers=PARQUET)
    assert _is_validation_error(r), r.text
    assert r.json()["detail"][0]["loc"] == ["body", 1, "round"] and "row 1" in r.json()["detail"][0]["msg"]
    assert _nothing_stored(client)  # the valid row 0 was not published either


def test_since_cursor_beyond_int64_is_422(client: TestClient) -> None:
    assert _is_validation_error(client.get("/v1/labels?since=" + "9" * 19, headers=A))
    assert client.get("/v1/labels?since=" + "9" * 18, headers=A).status_code == 200


def test_the_largest_round_goes_all_the_way_through(client: TestClient) -> None:
    """MAX_ROUND is accepted everywhere, and the int32 Parquet export holds it."""
    r = client.post("/v1/tasks", json={"tasks": [_json(_task("last", round=MAX_ROUND))]}, headers=A)
    assert r.status_code == 201, r.text
    assert client.get(f"/v1/stats?round={MAX_ROUND}", headers=A).json()["rounds"][0]["published"] == 1
    leased = client.post("/v1/tasks/next", json={"round": MAX_ROUND}, headers=L).json()["tasks"]
    assert [t["round"] for t in leased] == [MAX_ROUND]
    assert client.post("/v1/labels", json={"sample_id": "last", "label": "good"}, headers=L).status_code == 201
    r = client.get(f"/v1/labels?format=parquet&round={MAX_ROUND}", headers=A)
    assert r.status_code == 200 and pq.read_table(io.BytesIO(r.content)).column("round").to_pylist() == [MAX_ROUND]


def test_an_unexpected_error_is_a_json_500(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last resort answers (and does not re-raise, which would make uvicorn drop the connection)."""

    def boom(*_: Any, **__: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(client.app.state.store, "stats", boom)
    r = client.get("/v1/stats", headers=A)  # TestClient would raise had the exception escaped the app
    assert r.status_code == 500 and r.json()["error"] == "internal_error" and "a bug" not in r.text
    assert client.get("/v1/health").status_code == 200


# -- 3. one sample-id rule on every way in --------------------------------------------------------------
AWKWARD_BUT_VALID = ["a b", "q?x#y", "100%", "ü-é-字", "back\\slash", "amp&eq=1;", "+plus", ".hidden", "a..b", "..x"]


def test_awkward_ids_round_trip(client: TestClient) -> None:
    """publish (JSON and Parquet) -> next (percent-encoded image_url) -> image -> label -> undo."""
    half = len(AWKWARD_BUT_VALID) // 2
    r = client.post("/v1/tasks", json={"tasks": [_json(_task(s)) for s in AWKWARD_BUT_VALID[:half]]}, headers=A)
    assert r.status_code == 201, r.text
    r = client.post("/v1/tasks", content=_parquet([_task(s) for s in AWKWARD_BUT_VALID[half:]]), headers=PARQUET)
    assert r.status_code == 201, r.text
    leased = client.post("/v1/tasks/next", json={"n": 100, "labeller": "ann"}, headers=L).json()["tasks"]
    assert [t["sample_id"] for t in leased] == AWKWARD_BUT_VALID
    for t in leased:
        sid, url = t["sample_id"], t["image_url"]
        parts = urlsplit(url)
        assert parts.path == f"/v1/tasks/{quote(sid, safe='')}/image" and not parts.query and not parts.fragment
        img = client.get(url, headers=L)
        assert img.status_code == 200 and img.content == PNG, (sid, img.text)
        assert client.get(f"/v1/tasks/{quote(sid, safe='')}", headers=L).json()["sample_id"] == sid
        assert (
            client.post(
                "/v1/labels", json={"sample_id": sid, "label": "good", "labeller": "ann"}, headers=L
            ).status_code
            == 201
        )
        undo = client.delete(f"/v1/labels/{quote(sid, safe='')}?labeller=ann", headers=L)
        assert undo.status_code == 200 and undo.json()["sample_id"] == sid
    # the Python client encodes ids itself
    with TestClient(client.app) as http:
        bob = FeedbackClient("http://testserver", LAB, labeller="bob", http=http)
        for sid in AWKWARD_BUT_VALID:
            assert bob.image(sid) == PNG
            assert bob.post_label(sid, "bad")["created"] is True
            assert bob.undo(sid)["label"] == "bad"


BAD_IDS = ["a/b", "/", "x\x00y", "tab\tid", "line\nbreak", "del\x7f", "c1\x85", ".", "..", "", "x" * 201, "y" * 5000]


@pytest.mark.parametrize("sid", BAD_IDS, ids=lambda s: repr(s)[:20])
def test_bad_ids_are_refused_on_every_path(client: TestClient, sid: str) -> None:
    r = client.post("/v1/tasks", json={"tasks": [_json(_task("fine")), _json(_task(sid))]}, headers=A)
    assert _is_validation_error(r) and r.json()["detail"][0]["loc"] == ["body", "tasks", 1, "sample_id"], r.text
    r = client.post("/v1/tasks", content=_parquet([_task("fine"), _task(sid)]), headers=PARQUET)
    assert _is_validation_error(r), r.text
    err = r.json()["detail"][0]
    assert err["loc"] == ["body", 1, "sample_id"] and err["msg"].startswith("row 1: ")
    assert _nothing_stored(client)  # nothing half-published: the valid row did not go in either
    assert client.post("/v1/tasks/next", json={"n": 10}, headers=L).json()["tasks"] == []
    assert _is_validation_error(client.post("/v1/labels", json={"sample_id": sid, "label": "good"}, headers=L))
    batch = {"labels": [{"sample_id": sid, "label": "good"}]}
    assert _is_validation_error(client.post("/v1/labels/batch", json=batch, headers=L))
    if sid.strip(".") and "/" not in sid:  # a path segment clients keep as is: the path routes refuse it too
        seg = quote(sid, safe="")
        for method, path in (
            ("GET", f"/v1/tasks/{seg}"),
            ("GET", f"/v1/tasks/{seg}/image"),
            ("DELETE", f"/v1/labels/{seg}"),
        ):
            assert _is_validation_error(client.request(method, path, headers=L)), (method, path)


def test_parquet_columns_and_rows_follow_the_json_rules(client: TestClient) -> None:
    good = [_task("p0"), _task("p1")]
    table = pa.Table.from_pylist(good)
    cases = {
        "round": table.set_column(1, "round", pa.array([0.0, 1.5])),
        "sample_id": table.set_column(0, "sample_id", pa.array([1, 2])),
        "image": table.set_column(3, "image", pa.array(["png", "png"])),
    }
    for column, bad in cases.items():
        r = client.post("/v1/tasks", content=_parquet(bad), headers=PARQUET)
        assert _is_validation_error(r) and r.json()["detail"][0]["loc"] == ["body", column], r.text
    rows = [
        _task("p0", category=None),  # from_pylist takes its columns from the first row
        _task("p1", prompt="x" * 1001),
        _task("p2", category="c" * 201),
        {**_task("p3"), "image": b"GIF8"},
    ]
    r = client.post("/v1/tasks", content=_parquet(rows), headers=PARQUET)
    assert _is_validation_error(r)
    assert [e["loc"] for e in r.json()["detail"]] == [
        ["body", 1, "prompt"],
        ["body", 2, "category"],
        ["body", 3, "image"],
    ]
    nulls = pa.Table.from_pylist([_task("n0"), {**_task("n1"), "sample_id": None}])
    r = client.post("/v1/tasks", content=_parquet(nulls), headers=PARQUET)
    assert _is_validation_error(r) and r.json()["detail"][0]["loc"] == ["body", 1, "sample_id"]
    assert _nothing_stored(client)
    assert client.post("/v1/tasks", content=_parquet(good), headers=PARQUET).json() == {"published": 2, "existing": 0}
    dup = client.post("/v1/tasks", content=_parquet([_task("d"), _task("d")]), headers=PARQUET)
    assert dup.json() == {"published": 1, "existing": 1}  # as in JSON: the first of an id is stored


# -- 2. the OpenAPI schema describes the API ------------------------------------------------------------
OPERATIONS: dict[tuple[str, str], set[int]] = {  # every error each route can answer
    ("post", "/v1/tasks"): {400, 401, 403, 413, 415, 422, 503},
    ("post", "/v1/tasks/next"): {400, 401, 403, 413, 422, 503},
    ("get", "/v1/tasks/{sample_id}"): {401, 404, 422},
    ("get", "/v1/tasks/{sample_id}/image"): {401, 404, 422},
    ("post", "/v1/labels"): {400, 401, 403, 404, 413, 422, 503},
    ("post", "/v1/labels/batch"): {400, 401, 403, 404, 413, 422, 503},
    ("delete", "/v1/labels/{sample_id}"): {401, 403, 404, 422, 503},
    ("get", "/v1/labels"): {401, 403, 422},
    ("get", "/v1/stats"): {401, 403, 422},
    ("post", "/v1/labellers"): {400, 401, 403, 409, 413, 422, 503},
    ("get", "/v1/labellers"): {401, 403},
    ("post", "/v1/labellers/{name}/token"): {401, 403, 404, 409, 422, 503},
    ("post", "/v1/labellers/{name}/revoke"): {401, 403, 404, 422, 503},
    ("delete", "/v1/labellers/{name}"): {401, 403, 404, 422, 503},
    ("get", "/v1/me"): {401, 403, 422},
    ("get", "/v1/health"): {503},
}
REF = "#/components/schemas/"


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for v in node.values():
            yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_openapi_refs_resolve_and_every_route_declares_its_errors(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    refs = set(_refs(doc))
    assert f"{REF}TaskIn" in refs and f"{REF}PublishRequest" in refs
    for ref in refs:
        _resolve(doc, ref)
    ops = {(m, p): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert set(ops) == set(OPERATIONS), "a new route: add the errors it can answer to OPERATIONS"
    for key, op in ops.items():
        declared = {int(c) for c in op["responses"] if c.isdigit() and int(c) >= 400}
        expected = set(OPERATIONS[key])
        expected |= {401} if op.get("security") else set()
        expected |= {422} if op.get("parameters") or op.get("requestBody") else set()
        expected |= {400, 413} if op.get("requestBody") else set()
        assert expected <= declared, (key, sorted(expected - declared))
        for code in declared:
            schema = op["responses"][str(code)]["content"]["application/json"]["schema"]
            assert schema == {"$ref": REF + ("ValidationErrorBody" if code == 422 else "ErrorBody")}, (key, code)
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # no route declares the other 422 shape
    body = ops[("post", "/v1/tasks")]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": REF + "PublishRequest"}
    task = _resolve(doc, REF + "TaskIn")["properties"]
    assert task["round"]["maximum"] == MAX_ROUND and task["sample_id"]["maxLength"] == 200


def test_error_answers_match_the_declared_schemas(client: TestClient) -> None:
    """Real refusals, including 422s the routes raise by hand, validated against /openapi.json."""
    jsonschema = pytest.importorskip("jsonschema")
    doc = client.get("/openapi.json").json()
    assert (
        client.post("/v1/tasks", json={"tasks": [_json(_task("s0")), _json(_task("s1"))]}, headers=A).status_code == 201
    )
    dup_batch = [{"sample_id": "s0", "label": "good"}] * 2
    requests: list[tuple[str, str, str, dict[str, Any]]] = [
        ("post", "/v1/tasks", "/v1/tasks", {"json": {"tasks": [_json(_task("d")), _json(_task("d"))]}, "headers": A}),
        ("post", "/v1/tasks", "/v1/tasks", {"content": _parquet([_task("d"), _task("d")]), "headers": PARQUET}),
        ("post", "/v1/tasks", "/v1/tasks", {"content": _parquet([{"sample_id": "x"}]), "headers": PARQUET}),
        ("post", "/v1/tasks", "/v1/tasks", {"content": _parquet(EMPTY), "headers": PARQUET}),
        ("post", "/v1/tasks", "/v1/tasks", {"content": b"PAR1 junk", "headers": PARQUET}),
        ("post", "/v1/tasks", "/v1/tasks", {"content": b"{", "headers": {**A, "Content-Type": "application/json"}}),
        ("post", "/v1/tasks", "/v1/tasks", {"content": b"x", "headers": {**A, "Content-Type": "text/plain"}}),
        ("post", "/v1/tasks", "/v1/tasks", {"json": {"tasks": []}, "headers": L}),
        ("post", "/v1/tasks", "/v1/tasks", {"content": b"x" * (MAX_BODY + 1), "headers": PARQUET}),
        ("post", "/v1/tasks/next", "/v1/tasks/next", {"json": {"n": 0}, "headers": L}),
        ("post", "/v1/tasks/next", "/v1/tasks/next", {"json": {}, "headers": {}}),
        ("get", "/v1/tasks/{sample_id}", "/v1/tasks/nope", {"headers": L}),
        ("get", "/v1/tasks/{sample_id}", "/v1/tasks/%00", {"headers": L}),
        ("get", "/v1/tasks/{sample_id}/image", "/v1/tasks/nope/image", {"headers": L}),
        ("post", "/v1/labels", "/v1/labels", {"json": {"sample_id": "nope", "label": "good"}, "headers": L}),
        ("post", "/v1/labels", "/v1/labels", {"json": {"sample_id": "s0", "label": "great"}, "headers": L}),
        ("post", "/v1/labels/batch", "/v1/labels/batch", {"json": {"labels": dup_batch}, "headers": L}),
        ("post", "/v1/labels/batch", "/v1/labels/batch", {"json": {"labels": dup_batch * 2}, "headers": L}),  # > max
        ("delete", "/v1/labels/{sample_id}", "/v1/labels/s0", {"headers": L}),
        ("delete", "/v1/labels/{sample_id}", "/v1/labels/s0?labeller=has%20space", {"headers": L}),
        ("get", "/v1/labels", "/v1/labels", {"headers": L}),
        ("get", "/v1/labels", "/v1/labels?format=csv", {"headers": A}),
        ("get", "/v1/stats", "/v1/stats?round=-1", {"headers": A}),
        ("get", "/v1/stats", "/v1/stats", {"headers": L}),
        ("post", "/v1/labellers", "/v1/labellers", {"json": {"name": "ann"}, "headers": A}),
        ("post", "/v1/labellers", "/v1/labellers", {"json": {"name": "ann"}, "headers": A}),  # 409: taken
        ("post", "/v1/labellers", "/v1/labellers", {"json": {"name": "token-x"}, "headers": A}),
        ("post", "/v1/labellers/{name}/revoke", "/v1/labellers/nobody/revoke", {"headers": A}),
        (
            "post",
            "/v1/labels",
            "/v1/labels",
            {"json": {"sample_id": "s0", "label": "good", "labeller": "ann"}, "headers": L},
        ),  # 403: ann is an account
        ("get", "/v1/me", "/v1/me?labeller=ann", {"headers": L}),
    ]
    seen: set[int] = set()
    for method, template, url, kw in requests:
        r = client.request(method.upper(), url, **kw)
        responses = doc["paths"][template][method]["responses"]
        assert str(r.status_code) in responses, (method, url, r.status_code, r.text)
        schema = {
            **responses[str(r.status_code)]["content"]["application/json"]["schema"],
            "components": doc["components"],
        }
        jsonschema.Draft202012Validator(schema).validate(r.json())
        seen.add(r.status_code)
    client.app.state.store.close()  # the writer is gone: writes are 503 (with Retry-After), reads still work
    r = client.post("/v1/labels", json={"sample_id": "s1", "label": "good"}, headers=L)
    schema = doc["paths"]["/v1/labels"]["post"]["responses"]["503"]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": doc["components"]}).validate(r.json())
    assert {400, 401, 403, 404, 409, 413, 415, 422} <= seen and r.status_code == 503
