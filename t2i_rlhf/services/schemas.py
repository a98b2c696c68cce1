"""Pydantic models at the HTTP edge: what clients send and get back (and the OpenAPI schema).

Every value a client sends is bounded here to what the store can hold and the rest of the system
can use, so bad input is a 422 naming the field, never an error deep in SQLite or Arrow."""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
Label = Literal["good", "bad", "skip"]

# Rounds are int32 in SAMPLE_SCHEMA and in the Parquet export, so that is the widest round the
# run can carry (SQLite alone would take 2**63 - 1 and fail with OverflowError beyond it).
MAX_ROUND = 2**31 - 1
# A sample id goes into URL paths (image, undo): one path segment, so no "/", and not "." or
# ".." (browsers resolve those, even percent-encoded); no control characters. The same rule is
# applied to every way an id comes in: JSON and Parquet publish, labels, undo, task and image.
SAMPLE_ID_MAX = 200
_CTRL = r"\x00-\x1f\x7f-\x9f"
SAMPLE_ID_PATTERN = rf"^[^{_CTRL}/]*[^{_CTRL}/.][^{_CTRL}/]*$"
SAMPLE_ID_RULE = f"unique across the run; 1..{SAMPLE_ID_MAX} characters, no '/' or control characters, not only dots"
LABELLER_MAX = 100
LABELLER_PATTERN = r"^[\w.@:+-]+$"
LABELLER_RULE = "who labels; defaults to an id derived from the token"
TEXT_MAX = 200  # category, model_version

SampleId = Field(..., min_length=1, max_length=SAMPLE_ID_MAX, pattern=SAMPLE_ID_PATTERN, description=SAMPLE_ID_RULE)
Round = Field(..., ge=0, le=MAX_ROUND, description="training round (int32)")
Labeller = Field(None, min_length=1, max_length=LABELLER_MAX, pattern=LABELLER_PATTERN, description=LABELLER_RULE)
# ... and the same rules where ids, labellers and rounds come in the path or the query string
SampleIdPath = Path(..., min_length=1, max_length=SAMPLE_ID_MAX, pattern=SAMPLE_ID_PATTERN, description=SAMPLE_ID_RULE)
LabellerQuery = Query(None, min_length=1, max_length=LABELLER_MAX, pattern=LABELLER_PATTERN, description=LABELLER_RULE)
RoundQuery = Query(None, ge=0, le=MAX_ROUND, description="only this round (int32)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _TaskFields(_Strict):
    """What JSON and Parquet publishing share, so both paths admit exactly the same tasks."""

    sample_id: str = SampleId
    round: int = Round
    prompt: str = Field(..., min_length=1, max_length=1000)
    category: str | None = Field(None, max_length=TEXT_MAX)
    model_version: str | None = Field(None, max_length=TEXT_MAX)


class TaskIn(_TaskFields):
    """A task in a JSON publish request."""

    image_b64: str = Field(..., description="PNG bytes, base64")

    @field_validator("image_b64")
    @classmethod
    def _png(cls, v: str) -> str:
        try:
            raw = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError("image_b64 is not valid base64") from e
        if not raw.startswith(PNG_MAGIC):
            raise ValueError("image_b64 does not hold a PNG image")
        return v


class TaskRow(_TaskFields):
    """A row of a Parquet publish body (validated strictly: columns must have the right types)."""

    image: bytes

    @field_validator("image")
    @classmethod
    def _png(cls, v: bytes) -> bytes:
        if not v.startswith(PNG_MAGIC):
            raise ValueError("image does not hold a PNG image")
        return v


class PublishRequest(_Strict):
    tasks: list[TaskIn] = Field(..., min_length=1)


class PublishResponse(BaseModel):
    published: int = Field(..., description="new tasks stored")
    existing: int = Field(..., description="sample ids already known (re-publishing is a no-op)")


class LeaseRequest(_Strict):
    n: int = Field(1, ge=1, le=100)
    round: int | None = Field(None, ge=0, le=MAX_ROUND)
    labeller: str | None = Labeller


class LeasedTask(BaseModel):
    sample_id: str
    round: int
    prompt: str
    image_url: str = Field(..., description="absolute URL of the PNG; the sample id in it is percent-encoded")
    lease_expires_at: float


class LeaseResponse(BaseModel):
    labeller: str
    tasks: list[LeasedTask]
    done: int = Field(..., description="live labels by this labeller (in the round, if given)")
    remaining: int = Field(..., description="tasks this labeller could still label")


class TaskOut(BaseModel):
    sample_id: str
    round: int
    prompt: str
    category: str | None
    model_version: str | None
    votes: int = Field(..., description="good/bad labels so far")
    published_at: float


class LabelIn(_Strict):
    sample_id: str = SampleId
    label: Label
    labeller: str | None = Labeller
    time_spent_ms: int | None = Field(None, ge=0, le=86_400_000)


class LabelBatch(_Strict):
    labels: list[LabelIn] = Field(..., min_length=1)


class LabelOut(BaseModel):
    label_id: int
    sample_id: str
    round: int
    labeller: str
    label: Label
    time_spent_ms: int | None
    created_at: float


class LabelResult(LabelOut):
    created: bool = Field(
        ...,
        description="false: this labeller had already labelled the sample; "
        "the stored (first) label is returned unchanged",
    )


class LabelBatchResponse(BaseModel):
    created: int
    existing: int
    results: list[LabelResult]


class ExportResponse(BaseModel):
    labels: list[LabelOut]
    next_cursor: str = Field(..., description="pass as `since` to get only newer labels")


class RoundStats(BaseModel):
    round: int
    published: int
    labelled: int = Field(..., description="samples with at least one good/bad label")
    complete: int = Field(..., description="samples with labels_per_sample good/bad labels")
    good: int
    bad: int
    skipped: int
    labels: int
    pairs: int = Field(..., description="pairs of good/bad labels on the same sample")
    agreeing_pairs: int
    agreement: float | None = Field(..., description="agreeing_pairs / pairs; null with no pairs")


class StatsResponse(BaseModel):
    labels_per_sample: int
    rounds: list[RoundStats]


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]


class ErrorBody(BaseModel):
    """Every error but 422: a machine-readable code and a message for people."""

    error: str = Field(
        ...,
        description="bad_request, malformed_json, unauthorized, forbidden, not_found, unknown_sample, "
        "method_not_allowed, payload_too_large, unsupported_media_type, unavailable, internal_error",
    )
    detail: str


class FieldError(BaseModel):
    """One reason a request was refused, in FastAPI's validation-error shape."""

    loc: list[str | int] = Field(..., description='where: e.g. ["body", "tasks", 3, "sample_id"] or ["query", "round"]')
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """Every 422, whether pydantic or the service itself refused the request: `detail` is a list."""

    error: Literal["invalid_request"]
    detail: list[FieldError]
