"""Feedback-service settings: one pydantic model, filled from arguments or the environment.

Tokens come from the environment (never from a committed file) so that the same Serve config or
command line can be used on a shared cluster without leaking secrets. A team's labellers do not
need configured tokens at all: the admin creates one per labeller through `POST /v1/labellers`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator

ENV_PREFIX = "T2I_FEEDBACK_"
# the former name of `shared_labeller_tokens` (argument and variable), still read
_OLD_SHARED = "labeller_tokens"


class FeedbackSettings(BaseModel):
    """Everything the app factory needs. `from_env` reads `T2I_FEEDBACK_<FIELD>` variables."""

    db_path: Path = Field(Path("storage/feedback.db"), description="SQLite file (in the run's storage dir)")
    admin_token: str = Field(
        ..., min_length=8, description="publishes tasks, exports labels, creates and revokes labellers"
    )
    shared_labeller_tokens: list[str] = Field(
        default_factory=list,
        validation_alias=AliasChoices("shared_labeller_tokens", _OLD_SHARED),
        description="SHARED labeller tokens, for a one-person local run (the demo): whoever holds one may "
        "label under any name that is not a labeller account, so labels posted with it prove nothing about "
        "who labelled (exports mark them `via: shared_token`). For a team, leave this empty and create a "
        "token per labeller with POST /v1/labellers. Env: T2I_FEEDBACK_SHARED_LABELLER_TOKENS "
        "(comma-separated; the older T2I_FEEDBACK_LABELLER_TOKENS is read too)",
    )
    labels_per_sample: int = Field(1, ge=1, le=100, description="distinct labellers wanted per sample")
    lease_seconds: float = Field(300.0, gt=0, description="how long a handed-out task stays reserved")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="larger requests get 413")
    max_batch: int = Field(1000, ge=1, description="labels per batch request")
    synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="SQLite fsync policy; FULL = durable across power loss, not just crashes"
    )

    model_config = {"frozen": True}

    @field_validator("shared_labeller_tokens")
    @classmethod
    def _tokens_long_enough(cls, v: list[str]) -> list[str]:
        short = [t for t in v if len(t) < 8]
        if short:
            raise ValueError("every shared labeller token must be at least 8 characters")
        return v

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> FeedbackSettings:
        """Settings from `T2I_FEEDBACK_*` variables; explicit non-None overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if name == "shared_labeller_tokens" and not raw:
                raw = env.get(ENV_PREFIX + _OLD_SHARED.upper())
            if raw is None or raw == "":
                continue
            values[name] = [t.strip() for t in raw.split(",") if t.strip()] if name == "shared_labeller_tokens" else raw
        given = {k: v for k, v in overrides.items() if v is not None}
        if _OLD_SHARED in given:
            given["shared_labeller_tokens"] = given.pop(_OLD_SHARED)
        values.update(given)
        return cls(**values)
