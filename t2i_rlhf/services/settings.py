"""Feedback-service settings: one pydantic model, filled from arguments or the environment.

Tokens come from the environment (never from a committed file) so that the same Serve config or
command line can be used on a shared cluster without leaking secrets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

ENV_PREFIX = "T2I_FEEDBACK_"


class FeedbackSettings(BaseModel):
    """Everything the app factory needs. `from_env` reads `T2I_FEEDBACK_<FIELD>` variables."""

    db_path: Path = Field(Path("storage/feedback.db"), description="SQLite file (in the run's storage dir)")
    admin_token: str = Field(..., min_length=8, description="publishes tasks, exports labels")
    labeller_tokens: list[str] = Field(default_factory=list, description="read tasks, post labels")
    labels_per_sample: int = Field(1, ge=1, le=100, description="distinct labellers wanted per sample")
    lease_seconds: float = Field(300.0, gt=0, description="how long a handed-out task stays reserved")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="larger requests get 413")
    max_batch: int = Field(1000, ge=1, description="labels per batch request")
    synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="SQLite fsync policy; FULL = durable across power loss, not just crashes"
    )

    model_config = {"frozen": True}

    @field_validator("labeller_tokens")
    @classmethod
    def _tokens_long_enough(cls, v: list[str]) -> list[str]:
        short = [t for t in v if len(t) < 8]
        if short:
            raise ValueError("every labeller token must be at least 8 characters")
        return v

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> FeedbackSettings:
        """Settings from `T2I_FEEDBACK_*` variables; explicit non-None overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            values[name] = [t.strip() for t in raw.split(",") if t.strip()] if name == "labeller_tokens" else raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
