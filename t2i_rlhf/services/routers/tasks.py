"""Tasks: published by the online loop (admin), leased and shown to labellers."""

from __future__ import annotations

import base64
import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from t2i_rlhf.services.deps import Principal, get_settings, get_store, require_admin, require_labeller
from t2i_rlhf.services.schemas import (
    PNG_MAGIC,
    LeaseRequest,
    LeaseResponse,
    PublishRequest,
    PublishResponse,
    TaskOut,
)
from t2i_rlhf.services.settings import FeedbackSettings
from t2i_rlhf.services.store import FeedbackStore

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
SAMPLE_PATH = Path(..., min_length=1, max_length=200)
PARQUET = "application/vnd.apache.parquet"
_REQUIRED = {"sample_id": pa.string(), "round": None, "prompt": pa.string(), "image": None}


def _from_parquet(body: bytes) -> list[dict[str, Any]]:
    """Tasks from a Parquet body (e.g. SAMPLE_SCHEMA rows); extra columns are ignored."""
    try:
        table = pq.read_table(io.BytesIO(body))
    except (pa.ArrowInvalid, OSError) as e:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"body is not a readable Parquet file: {e}") from e
    missing = sorted(set(_REQUIRED) - set(table.column_names))
    if missing:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"Parquet body lacks columns {missing}")
    if table.num_rows == 0:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "no tasks to publish")
    cols = [
        c for c in ("sample_id", "round", "prompt", "image", "category", "model_version") if c in table.column_names
    ]
    rows = table.select(cols).to_pylist()
    for i, r in enumerate(rows):
        if not isinstance(r["sample_id"], str) or not r["sample_id"] or not isinstance(r["prompt"], str):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"row {i}: sample_id/prompt must be text")
        if not isinstance(r["round"], int) or r["round"] < 0:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"row {i}: round must be an int >= 0")
        if not isinstance(r["image"], bytes) or not r["image"].startswith(PNG_MAGIC):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"row {i}: image must be PNG bytes")
    return rows


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PublishResponse,
    summary="Publish labelling tasks (admin). JSON with base64 PNGs, or a Parquet body.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": PublishRequest.model_json_schema(ref_template="#/components/schemas/{model}")
                },
                PARQUET: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "columns sample_id, round, prompt, image (+category, model_version)",
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
        try:
            req = PublishRequest.model_validate_json(body)
        except ValidationError as e:
            raise RequestValidationError(e.errors(include_url=False, include_context=False)) from e
        tasks = [{**t.model_dump(exclude={"image_b64"}), "image": base64.b64decode(t.image_b64)} for t in req.tasks]
    else:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"send application/json or {PARQUET}")
    if len({t["sample_id"] for t in tasks}) != len(tasks):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "duplicate sample_id within the request")
    new, existing = await run_in_threadpool(store.publish, tasks)
    return PublishResponse(published=new, existing=existing)


@router.post(
    "/next",
    response_model=LeaseResponse,
    summary="Lease the next tasks to label; they stay reserved for lease_seconds.",
)
def next_tasks(
    req: LeaseRequest,
    request: Request,
    who: Principal = Depends(require_labeller),
    store: FeedbackStore = Depends(get_store),
    settings: FeedbackSettings = Depends(get_settings),
) -> LeaseResponse:
    labeller = req.labeller or who.default_labeller
    got = store.lease(labeller, req.n, settings.labels_per_sample, settings.lease_seconds, req.round)
    base = str(request.url_for("task_image", sample_id="__ID__"))
    for t in got["tasks"]:
        t["image_url"] = base.replace("__ID__", t["sample_id"])
    return LeaseResponse(labeller=labeller, **got)


@router.get("/{sample_id}", response_model=TaskOut, summary="One task's metadata.")
def get_task(
    sample_id: str = SAMPLE_PATH,
    _: Principal = Depends(require_labeller),
    store: FeedbackStore = Depends(get_store),
) -> TaskOut:
    return TaskOut(**store.task(sample_id))


@router.get(
    "/{sample_id}/image",
    name="task_image",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
    summary="A task's image (PNG).",
)
def task_image(
    sample_id: str = SAMPLE_PATH,
    _: Principal = Depends(require_labeller),
    store: FeedbackStore = Depends(get_store),
) -> Response:
    return Response(store.image(sample_id), media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
