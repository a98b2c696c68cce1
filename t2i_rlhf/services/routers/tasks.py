"""Tasks: published by the online loop (admin), leased and shown to labellers."""

from __future__ import annotations

import base64
import io
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from t2i_rlhf.services.deps import Principal, acting_as, get_settings, get_store, require_admin, require_labeller
from t2i_rlhf.services.errors import error_responses, field_errors, invalid
from t2i_rlhf.services.schemas import (
    LeaseRequest,
    LeaseResponse,
    PublishRequest,
    PublishResponse,
    SampleIdPath,
    TaskOut,
    TaskRow,
)
from t2i_rlhf.services.settings import FeedbackSettings
from t2i_rlhf.services.store import FeedbackStore

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
PARQUET = "application/vnd.apache.parquet"
_COLUMNS = ("sample_id", "round", "prompt", "image", "category", "model_version", "gold")
_REQUIRED = ("sample_id", "round", "prompt", "image")
_MAX_ROW_ERRORS = 20  # a bad 100k-row file is refused with the first few problems, not all of them


def _column_type_ok(name: str, typ: pa.DataType) -> bool:
    """Arrow types each column may have; anything else is refused before rows are converted."""
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    if pa.types.is_null(typ):
        return name not in _REQUIRED  # an all-null optional column
    if name == "round":
        return pa.types.is_integer(typ)
    if name == "image":
        return pa.types.is_binary(typ) or pa.types.is_large_binary(typ)
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def _from_parquet(body: bytes) -> list[dict[str, Any]]:
    """Tasks from a Parquet body (e.g. SAMPLE_SCHEMA rows); extra columns are ignored. Every row
    is held to the same rules as a JSON task (`TaskRow`), before anything is stored."""
    try:
        table = pq.read_table(io.BytesIO(body))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"body is not a readable Parquet file: {e}") from e
    missing = [c for c in _REQUIRED if c not in table.column_names]
    if missing:
        raise RequestValidationError(
            [{"loc": ("body", c), "msg": f"Parquet body lacks column {c!r}", "type": "missing"} for c in missing]
        )
    cols = [c for c in _COLUMNS if c in table.column_names]
    bad = [c for c in cols if not _column_type_ok(c, table.schema.field(c).type)]
    if bad:
        raise invalid(
            ("body", bad[0]),
            f"column {bad[0]} has type {table.schema.field(bad[0]).type}; sample_id, prompt, category, "
            "model_version and gold must be strings, round an integer, image binary",
            "column_type",
        )
    if table.num_rows == 0:
        raise invalid(("body",), "no tasks to publish", "too_short")
    rows = table.select(cols).to_pylist()
    errors: list[dict[str, Any]] = []
    for i, r in enumerate(rows):
        try:
            TaskRow.model_validate(r, strict=True)
        except ValidationError as e:
            errors += [{**err, "msg": f"row {i}: {err['msg']}"} for err in field_errors(e.errors(), ("body", i))]
            if len(errors) >= _MAX_ROW_ERRORS:
                break
    if errors:
        raise RequestValidationError(errors[:_MAX_ROW_ERRORS])
    return rows


def _from_json(body: bytes) -> list[dict[str, Any]]:
    try:
        req = PublishRequest.model_validate_json(body)
    except ValidationError as e:
        raise RequestValidationError(field_errors(e.errors(include_url=False), ("body",))) from e
    return [{**t.model_dump(exclude={"image_b64"}), "image": base64.b64decode(t.image_b64)} for t in req.tasks]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PublishResponse,
    responses=error_responses(400, 401, 403, 413, 415, 422, 503),
    summary="Publish labelling tasks (admin). JSON with base64 PNGs, or a Parquet body.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PublishRequest"}},
                PARQUET: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "columns sample_id, round, prompt, image (+category, model_version, "
                        "gold), each row held to the TaskIn rules (image: PNG bytes, not base64)",
                    }
                },
            },
        }
    },
)
async def publish(
    request: Request,
    _: Principal = Depends(require_admin),
    store: FeedbackStore = Depends(get_store),
) -> PublishResponse:
    body = await request.body()
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == PARQUET:
        tasks = _from_parquet(body)
    elif ctype in ("application/json", ""):
        tasks = _from_json(body)
    else:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"send application/json or {PARQUET}")
    # a sample id twice in one request is what it is across requests: the first one is stored,
    # the second counts as existing (the schema cannot forbid it, so neither does the service)
    new, existing = await run_in_threadpool(store.publish, tasks)
    return PublishResponse(published=new, existing=existing)


@router.post(
    "/next",
    response_model=LeaseResponse,
    responses=error_responses(
        400, 401, 403, 413, 422, 503, e403="the token may not act as the labeller named (another's account)"
    ),
    summary="Lease the next tasks to label; they stay reserved for lease_seconds. Gold tasks are among "
    "them, looking like any other.",
)
def next_tasks(
    req: LeaseRequest,
    request: Request,
    who: Principal = Depends(require_labeller),
    store: FeedbackStore = Depends(get_store),
    settings: FeedbackSettings = Depends(get_settings),
) -> LeaseResponse:
    labeller = acting_as(who, req.labeller, store.is_registered)
    got = store.lease(labeller, req.n, settings.labels_per_sample, settings.lease_seconds, req.round)
    for t in got["tasks"]:
        t["image_url"] = image_url(request, t["sample_id"])
    return LeaseResponse(labeller=labeller, **got)


def image_url(request: Request, sample_id: str) -> str:
    """The image's absolute URL with the id percent-encoded as one path segment ("?", "#", "%"
    and spaces in an id would otherwise cut or change the URL)."""
    base = str(request.url_for("task_image", sample_id="x")).removesuffix("/x/image")
    return f"{base}/{quote(sample_id, safe='')}/image"


@router.get(
    "/{sample_id}",
    response_model=TaskOut,
    responses=error_responses(401, 404, 422, e404="unknown sample"),
    summary="One task's metadata (votes and gold answer: admin only, so labellers cannot tell gold tasks).",
)
def get_task(
    sample_id: str = SampleIdPath,
    who: Principal = Depends(require_labeller),
    store: FeedbackStore = Depends(get_store),
) -> TaskOut:
    task = store.task(sample_id)
    if who.role != "admin":
        task.update(votes=None, gold=None)
    return TaskOut(**task)


@router.get(
    "/{sample_id}/image",
    name="task_image",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        **error_responses(401, 404, 422, e404="unknown sample"),
    },
    summary="A task's image (PNG).",
)
def task_image(
    sample_id: str = SampleIdPath,
    _: Principal = Depends(require_labeller),
    store: FeedbackStore = Depends(get_store),
) -> Response:
    return Response(store.image(sample_id), media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
