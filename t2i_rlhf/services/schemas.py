"""Pydantic models at the HTTP edge: what clients send and get back (and the OpenAPI schema).

Every value a client sends is bounded here to what the store can hold and the rest of the system
can use, so bad input is a 422 naming the field, never an error deep in SQLite or Arrow."""

from __future__ import annotations

import base64
import binascii
from typing import Literal, get_args

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from t2i_rlhf.services.identity import DEFAULT_PREFIX

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
Label = Literal["good", "bad", "skip"]
GoldAnswer = Literal["good", "bad"]
Via = Literal["labeller_token", "shared_token", "admin_token", "unrecorded"]
VIA_RULE = (
    "the kind of token that posted the label: labeller_token (the labeller's own: the name is verified), "
    "shared_token or admin_token (the name was given by the caller), unrecorded (posted before the service "
    "kept this)"
)

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
# ASCII, spelt out: `\w` is Unicode-wide in Python but ASCII in the JSON Schema (ECMA-262) regex
# a client reads from /openapi.json, so `ü` would pass here and be invalid there.
LABELLER_PATTERN = r"^[A-Za-z0-9_.@:+-]+$"
LABELLER_RULE = (
    "who labels. With a labeller's own token: omit it, or give the token owner's name (any other name is "
    "403). With the shared or admin token: any name that is not a labeller account; default: an id derived "
    "from the token"
)
LABELLER_NAME_RULE = f"1..{LABELLER_MAX} of ASCII letters, digits, _ . @ : + -; not starting with 'token-'"
TEXT_MAX = 200  # category, model_version

SAMPLE_ID_EXAMPLE, LABELLER_EXAMPLE = "r0-s0-00000", "alice"  # the examples of /docs (and of fuzzers)
# One set of limits each, for bodies (Field) and for the path or the query string (Path, Query)
_SAMPLE_ID_LIMITS = dict(min_length=1, max_length=SAMPLE_ID_MAX, pattern=SAMPLE_ID_PATTERN,
                         description=SAMPLE_ID_RULE, examples=[SAMPLE_ID_EXAMPLE])
_LABELLER_LIMITS = dict(min_length=1, max_length=LABELLER_MAX, pattern=LABELLER_PATTERN, description=LABELLER_RULE)
SampleId = Field(..., **_SAMPLE_ID_LIMITS)
Round = Field(..., ge=0, le=MAX_ROUND, description="training round (int32)")
Labeller = Field(None, **_LABELLER_LIMITS)
SampleIdPath = Path(..., **_SAMPLE_ID_LIMITS)
LabellerQuery = Query(None, **_LABELLER_LIMITS)
RoundQuery = Query(None, ge=0, le=MAX_ROUND, description="only this round (int32)")
LabellerPath = Path(
    ...,
    min_length=1,
    max_length=LABELLER_MAX,
    pattern=LABELLER_PATTERN,
    description="account name",
    examples=[LABELLER_EXAMPLE],
)


class _Strict(BaseModel):
    """Request bodies: unknown fields are refused, and an integer field takes what JSON Schema
    calls an integer: 3 or 3.0, but not `false` or `"3"`, which pydantic's lax mode would read as
    0 and 3 (its strict mode would refuse 3.0, which the schema allows)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _json_integers(cls, v: object, info: ValidationInfo) -> object:
        ann = cls.model_fields[info.field_name].annotation if info.field_name else None
        if isinstance(v, bool | str | bytes) and int in (get_args(ann) or (ann,)):
            raise ValueError("must be a JSON integer")
        return v


class _TaskFields(_Strict):
    """What JSON and Parquet publishing share, so both paths admit exactly the same tasks."""

    sample_id: str = SampleId
    round: int = Round
    prompt: str = Field(..., min_length=1, max_length=1000)
    category: str | None = Field(None, max_length=TEXT_MAX)
    model_version: str | None = Field(None, max_length=TEXT_MAX)
    gold: GoldAnswer | None = Field(
        None,
        description="the known answer: makes this a gold task, handed to every labeller once, mixed with the "
        "others and never shown as gold to labellers; their labels on it measure them (stats) and are not "
        "training labels. Publish gold tasks with the same round, category and model_version as ordinary ones",
    )


# base64 of bytes that start with the PNG signature: its first 10 characters are fixed, the 11th
# carries 4 of its bits; the rest is well-formed, padded base64. The schema says exactly what
# the validator below accepts, so a client generated from it sends nothing that is refused.
PNG_B64_PATTERN = r"^iVBORw0KGg(?:o=|[o-r][A-Za-z0-9+/](?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?)$"


class TaskIn(_TaskFields):
    """A task in a JSON publish request."""

    image_b64: str = Field(..., pattern=PNG_B64_PATTERN, description="PNG bytes, base64 (standard alphabet, padded)")

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
    round: int | None = Field(None, ge=0, le=MAX_ROUND, description="only this round (int32)")
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
    votes: int | None = Field(..., description="good/bad labels so far; admin only (null for labellers)")
    gold: GoldAnswer | None = Field(..., description="a gold task's known answer; admin only (null for labellers)")
    published_at: float


class LabelIn(_Strict):
    sample_id: str = SampleId
    label: Label
    labeller: str | None = Labeller
    time_spent_ms: int | None = Field(
        None, ge=0, le=86_400_000, description="time the labeller looked at the image (at most a day)"
    )


class LabelBatch(_Strict):
    labels: list[LabelIn] = Field(..., min_length=1)


class LabelOut(BaseModel):
    label_id: int
    sample_id: str
    round: int
    labeller: str
    via: Via = Field(..., description=VIA_RULE)
    label: Label
    time_spent_ms: int | None
    created_at: float


class ExportedLabel(LabelOut):
    """An exported label: with its task's gold answer and its labeller's quality, for the loop."""

    gold: GoldAnswer | None = Field(
        ..., description="the gold task's known answer; null for ordinary tasks. Gold labels are not training labels"
    )
    labeller_gold_accuracy: float | None = Field(
        ..., description="the labeller's accuracy on gold tasks over all rounds, at export time; null: none graded"
    )
    labeller_gold_labelled: int = Field(..., description="gold tasks the labeller gave good/bad, over all rounds")
    labeller_agreement: float | None = Field(
        ..., description="the labeller's agreement with other labellers over all rounds; null: no overlap"
    )


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
    labels: list[ExportedLabel]
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
    gold_tasks: int = Field(..., description="gold tasks of the round (not counted above)")
    gold_labels: int = Field(..., description="live labels on them (not counted above)")


class LabellerStats(BaseModel):
    """One labeller's work and quality (in the round, if one is asked for)."""

    labeller: str
    registered: bool = Field(..., description="an account: every label under this name came with its own token")
    active: bool = Field(..., description="an account that is not revoked")
    labels: int = Field(..., description="live labels, gold included")
    good: int
    bad: int
    skipped: int
    gold_labelled: int = Field(..., description="gold tasks given good or bad (skips are not graded)")
    gold_correct: int = Field(..., description="... that match the known answer")
    gold_skipped: int
    gold_accuracy: float | None = Field(..., description="gold_correct / gold_labelled; null: none graded")
    pairs: int = Field(..., description="pairs (own good/bad label, another labeller's on the same sample)")
    agreeing_pairs: int
    agreement: float | None = Field(..., description="agreeing_pairs / pairs; null: no overlap with others")


class StatsResponse(BaseModel):
    labels_per_sample: int
    rounds: list[RoundStats] = Field(..., description="ordinary tasks per round; gold tasks counted apart")
    labellers: list[LabellerStats] = Field(
        ..., description="everyone with a live label (in the round), and every account when no round is asked"
    )


class LabellerCreate(_Strict):
    name: str = Field(
        ..., min_length=1, max_length=LABELLER_MAX, pattern=LABELLER_PATTERN, description=LABELLER_NAME_RULE
    )

    @field_validator("name")
    @classmethod
    def _not_a_default_id(cls, v: str) -> str:
        if v.startswith(DEFAULT_PREFIX):
            raise ValueError(f"names starting with {DEFAULT_PREFIX!r} are the default ids of shared tokens")
        return v


class LabellerOut(BaseModel):
    name: str
    created_at: float
    revoked_at: float | None
    active: bool


class LabellerCreated(LabellerOut):
    token: str = Field(..., description="the labeller's bearer token. Shown only now: the service keeps a hash")


class LabellerList(BaseModel):
    labellers: list[LabellerOut]


class Me(BaseModel):
    labeller: str = Field(..., description="who this request labels as")
    token: Literal["admin", "shared", "labeller"] = Field(
        ..., description="labeller: an account's own token; shared: the shared labeller token; admin"
    )
    labels: int = Field(..., description="the labeller's live labels")


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]


class ErrorBody(BaseModel):
    """Every error but 422: a machine-readable code and a message for people."""

    error: str = Field(
        ...,
        description="bad_request, malformed_json, unauthorized, forbidden, not_found, unknown_sample, "
        "unknown_labeller, conflict, method_not_allowed, payload_too_large, unsupported_media_type, unavailable, "
        "internal_error",
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
