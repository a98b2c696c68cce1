"""Stats per round and per labeller (admin) and health (no token: for load balancers and Serve).

Stats are the admin's: they name every labeller with their accuracy on gold tasks, and a
labeller watching counts change after each label could tell gold tasks from the others."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, status

from t2i_rlhf.services.deps import Principal, get_settings, get_store, require_admin
from t2i_rlhf.services.errors import error_responses
from t2i_rlhf.services.schemas import Health, LabellerStats, RoundQuery, RoundStats, StatsResponse
from t2i_rlhf.services.settings import FeedbackSettings
from t2i_rlhf.services.store import FeedbackStore

router = APIRouter(prefix="/v1", tags=["stats"])


@router.get(
    "/stats",
    response_model=StatsResponse,
    responses=error_responses(401, 403, 422),
    summary="Per round: published / labelled / skipped / agreement; per labeller: gold accuracy, agreement (admin).",
)
def stats(
    round: int | None = RoundQuery,
    _: Principal = Depends(require_admin),
    store: FeedbackStore = Depends(get_store),
    settings: FeedbackSettings = Depends(get_settings),
) -> StatsResponse:
    got = store.stats(settings.labels_per_sample, round)
    return StatsResponse(
        labels_per_sample=settings.labels_per_sample,
        rounds=[RoundStats(**r) for r in got["rounds"]],
        labellers=[LabellerStats(**s) for s in got["labellers"]],
    )


@router.get(
    "/health",
    response_model=Health,
    responses=error_responses(503, e503="the database is unreachable"),
    summary="Liveness and database reachability.",
)
def health(store: FeedbackStore = Depends(get_store)) -> Health:
    try:
        store.ping()
    except Exception as e:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"database unavailable: {e}") from e
    return Health(status="ok", database="ok")
