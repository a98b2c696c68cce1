"""Pydantic models at the HTTP edge: what clients send and get back (and the OpenAPI schema)."""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
Label = Literal["good", "bad", "skip"]
SampleId = Field(..., min_length=1, max_length=200, description="unique across the run")
Labeller = Field(
    None,
    min_length=1,
    max_length=100,
    pattern=r"^[\w.@:+-]+$",
    description="who labels; defaults to an id derived from the token",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskIn(_Strict):
    sample_id: str = SampleId
    round: int = Field(..., ge=0)
    prompt: str = Field(..., min_length=1, max_length=1000)
    category: str | None = None
    model_version: str | None = None
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


class PublishRequest(_Strict):
    tasks: list[TaskIn] = Field(..., min_length=1)


class PublishResponse(BaseModel):
    published: int = Field(..., description="new tasks stored")
    existing: int = Field(..., description="sample ids already known (re-publishing is a no-op)")


class LeaseRequest(_Strict):
    n: int = Field(1, ge=1, le=100)
    round: int | None = Field(None, ge=0)
    labeller: str | None = Labeller


class LeasedTask(BaseModel):
    sample_id: str
    round: int
    prompt: str
    image_url: str
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
    error: str
    detail: str | list
