"""Labels: posted by labellers (one or a batch), undone, exported by the online loop (admin).

Idempotency: a labeller's first label on a sample is the one kept. Posting again returns that
stored label with 200 and `created: false` (201 and `created: true` the first time), never a
second row; to change a label, undo it (DELETE) and post again.

Identity: a label is its token's owner's (`identity.acting_as`): a labeller token that names
another labeller, in a label, a batch or an undo, is refused with 403, so nobody can post, undo
or overwrite another's labels. Every row records the kind of token that posted it (`via`).
"""

from __future__ import annotations

import asyncio
import io
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from fastapi.responses import JSONResponse

from t2i_rlhf.services.deps import Principal, acting_as, get_settings, get_store, require_admin, require_labeller
from t2i_rlhf.services.errors import error_responses, invalid
from t2i_rlhf.services.schemas import (
    ExportedLabel,
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
        ("via", pa.string()),
        ("label", pa.string()),
        ("time_spent_ms", pa.int64()),
        ("created_at", pa.float64()),
        ("gold", pa.string()),
        ("labeller_gold_accuracy", pa.float64()),
        ("labeller_gold_labelled", pa.int64()),
        ("labeller_agreement", pa.float64()),
    ]
)
_E403 = "the token may not act as the labeller named (another labeller's account)"


def _new(lab: LabelIn, who: Principal, store: FeedbackStore) -> NewLabel:
    labeller = acting_as(who, lab.labeller, store.is_registered)
    return NewLabel(lab.sample_id, lab.label, labeller, lab.time_spent_ms, who.via)


@router.post(
    "",
    response_model=LabelResult,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": LabelResult, "description": "already labelled: the stored label"},
        **error_responses(400, 401, 403, 404, 413, 422, 503, e403=_E403, e404="unknown sample"),
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
    [(row, created)] = await asyncio.wrap_future(store.add_labels_future([_new(lab, who, store)]))
    return JSONResponse({**row, "created": created}, status_code=201 if created else 200)


@router.post(
    "/batch",
    response_model=LabelBatchResponse,
    responses=error_responses(
        400, 401, 403, 404, 413, 422, 503, e403=_E403, e404="unknown sample: nothing of the batch was stored"
    ),
    summary="Post labels in one atomic batch (all stored, or none if a sample is unknown); in order, "
    "so a labeller's second label on a sample is not stored (`created: false`).",
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
    # A batch is its labels posted one after another in one transaction: a second label by the
    # same labeller on a sample comes back `created: false` with the first, as a repost would.
    news = [_new(lab, who, store) for lab in batch.labels]
    results = [LabelResult(**row, created=c) for row, c in await asyncio.wrap_future(store.add_labels_future(news))]
    created = sum(r.created for r in results)
    return LabelBatchResponse(created=created, existing=len(results) - created, results=results)


@router.delete(
    "/{sample_id}",
    response_model=LabelOut,
    responses=error_responses(401, 403, 404, 422, 503, e403=_E403, e404="no live label by this labeller on the sample"),
    summary="Undo a labeller's label on a sample; the sample can be labelled again.",
)
def undo_label(
    sample_id: str = SampleIdPath,
    labeller: str | None = LabellerQuery,
    who: Principal = Depends(require_labeller),
    store: FeedbackStore = Depends(get_store),
) -> LabelOut:
    row = store.retract(sample_id, acting_as(who, labeller, store.is_registered))
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
    summary="Export live labels with id after the cursor (admin); JSON or Parquet, with gold answers and "
    "each labeller's quality.",
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
    if rows:
        quality = {s["labeller"]: s for s in store.stats(1, rounds=False)["labellers"]}  # all rounds, now
        for r in rows:
            q = quality.get(r["labeller"], {})
            r["labeller_gold_accuracy"] = q.get("gold_accuracy")
            r["labeller_gold_labelled"] = q.get("gold_labelled", 0)
            r["labeller_agreement"] = q.get("agreement")
    if format == "parquet":
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=EXPORT_SCHEMA), buf)
        return Response(buf.getvalue(), media_type="application/vnd.apache.parquet", headers={"X-Next-Cursor": cursor})
    return ExportResponse(labels=[ExportedLabel(**r) for r in rows], next_cursor=cursor)
