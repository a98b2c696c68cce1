"""`t2i-rlhf feedback serve` and `t2i-rlhf label simulate`: the feedback service's own command
groups (services/cli.py, also `python -m t2i_rlhf.services`), registered in the t2i-rlhf CLI."""

from __future__ import annotations

from t2i_rlhf.services.cli import register

__all__ = ["register"]
