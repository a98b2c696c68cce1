"""Labels: posted by labellers (one or a batch), undone, exported by the online loop (admin).

Idempotency: a labeller's first label on a sample is the one kept. Posting again returns that
stored label with 200 and `created: false` (201 and `created: true` the first time), never a
second row; to change a label, undo it (DELETE) and post again.
"""

from __future__ import annotations

import asyncio
import io
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from fastapi.responses import JSONResponse

from t2i_rlhf.services.deps import Principal, get_settings, get_store, require_admin, require_labeller
from t2i_rlhf.services.errors import error_responses, invalid
from t2i_rlhf.services.schemas import (
    ExportResponse,
    LabelBatch,
    LabelBatchResponse,
    LabelIn,
    LabellerQuery,
    LabelOut,
    LabelResult,
    RoundQuery,
    SampleIdPath,
)
from t2i_rlhf.services.settings import FeedbackSettings
from t2i_rlhf.services.store import FeedbackStore, NewLabel

router = APIRouter(prefix="/v1/labels", tags=["labels"])
EXPORT_SCHEMA = pa.schema(
    [
        ("label_id", pa.int64()),
        ("sample_id", pa.string()),
        ("round", pa.int32()),
        ("labeller", pa.string()),
        ("label", pa.string()),
        ("time_spent_ms", pa.int64()),
        ("created_at", pa.float64()),
    ]
)


def _new(lab: LabelIn, who: Principal) -> NewLabel:
    return NewLabel(lab.sample_id, lab.label, lab.labeller or who.default_labeller, lab.time_spent_ms)


@router.post(
    "",
    response_model=LabelResult,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": LabelResult, "description": "already labelled: the stored label"},
        **error_responses(400, 401, 404, 413, 422, 503, e404="unknown sample"),
    },
    summary="Post one label. Durable before the response is sent.",
)
async def post_label(
    lab: LabelIn,
    who: Principal = Depends(require_labeller),
    store: FeedbackStore = Depends(get_store),
) -> JSONResponse:
    # The hot path: awaits the group commit without a thread hop, and returns the stored row as
    # it is (the store builds it) instead of re-validating it against the response model.
    [(row, created)] = await asyncio.wrap_future(store.add_labels_future([_new(lab, who)]))
    return JSONResponse({**row, "created": created}, status_code=201 if created else 200)


@router.post(
    "/batch",
    response_model=LabelBatchResponse,
    responses=error_responses(400, 401, 404, 413, 422, 503, e404="unknown sample: nothing of the batch was stored"),
    summary="Post labels in one atomic batch (all stored, or none if a sample is unknown).",
)
async def post_labels(
    batch: LabelBatch,
    who: Principal = Depends(require_labeller),
    store: FeedbackStore = Depends(get_store),
    settings: FeedbackSettings = Depends(get_settings),
) -> LabelBatchResponse:
    if len(batch.labels) > settings.max_batch:
        raise invalid(
            ("body", "labels"), f"at most {settings.max_batch} labels per batch, got {len(batch.labels)}", "too_long"
        )
    news = [_new(lab, who) for lab in batch.labels]
    seen: set[tuple[str, str]] = set()
    for i, n in enumerate(news):
        if (n.sample_id, n.labeller) in seen:
            raise invalid(("body", "labels", i), "a batch holds one label per sample and labeller")
        seen.add((n.sample_id, n.labeller))
    results = [LabelResult(**row, created=c) for row, c in await asyncio.wrap_future(store.add_labels_future(news))]
    created = sum(r.created for r in results)
    return LabelBatchResponse(created=created, existing=len(results) - created, results=results)


@router.delete(
    "/{sample_id}",
    response_model=LabelOut,
    responses=error_responses(401, 404, 422, 503, e404="no live label by this labeller on the sample"),
    summary="Undo a labeller's label on a sample; the sample can be labelled again.",
)
def undo_label(
    sample_id: str = SampleIdPath,
    labeller: str | None = LabellerQuery,
    who: Principal = Depends(require_labeller),
    store: FeedbackStore = Depends(get_store),
) -> LabelOut:
    row = store.retract(sample_id, labeller or who.default_labeller)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no label by this labeller on sample {sample_id!r}")
    return LabelOut(**row)


@router.get(
    "",
    response_model=ExportResponse,
    responses={
        200: {
            "content": {"application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}}},
            "headers": {
                "X-Next-Cursor": {"description": "Parquet only: the next cursor", "schema": {"type": "string"}}
            },
        },
        **error_responses(401, 403, 422),
    },
    summary="Export live labels with id after the cursor (admin); JSON or Parquet.",
)
def export_labels(
    since: str | None = Query(None, pattern=r"^[0-9]{1,18}$", description="cursor from a previous export"),
    round: int | None = RoundQuery,
    limit: int = Query(10_000, ge=1, le=100_000),
    format: Literal["json", "parquet"] = Query("json"),
    _: Principal = Depends(require_admin),
    store: FeedbackStore = Depends(get_store),
) -> ExportResponse | Response:
    start = int(since or 0)
    rows = store.export(start, round, limit)
    cursor = str(rows[-1]["label_id"] if rows else start)
    if format == "parquet":
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=EXPORT_SCHEMA), buf)
        return Response(buf.getvalue(), media_type="application/vnd.apache.parquet", headers={"X-Next-Cursor": cursor})
    return ExportResponse(labels=[LabelOut(**r) for r in rows], next_cursor=cursor)
