"""Stats per round (any valid token) and health (no token: for load balancers and Serve)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, status

from t2i_rlhf.services.deps import Principal, get_settings, get_store, require_labeller
from t2i_rlhf.services.errors import error_responses
from t2i_rlhf.services.schemas import Health, RoundQuery, RoundStats, StatsResponse
from t2i_rlhf.services.settings import FeedbackSettings
from t2i_rlhf.services.store import FeedbackStore

router = APIRouter(prefix="/v1", tags=["stats"])


@router.get(
    "/stats",
    response_model=StatsResponse,
    responses=error_responses(401, 422),
    summary="Published / labelled / skipped / agreement per round.",
)
def stats(
    round: int | None = RoundQuery,
    _: Principal = Depends(require_labeller),
    store: FeedbackStore = Depends(get_store),
    settings: FeedbackSettings = Depends(get_settings),
) -> StatsResponse:
    rounds = store.stats(settings.labels_per_sample, round)
    return StatsResponse(labels_per_sample=settings.labels_per_sample, rounds=[RoundStats(**r) for r in rounds])


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
