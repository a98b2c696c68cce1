"""Ray Serve wrapper: the only module of the service that knows Ray.

The FastAPI app is built inside the replica (late-bound ingress), so the SQLite file is opened
on the node that serves it. SQLite allows one writer process: keep num_replicas at 1 and pin the
replica to the node that holds the run's storage directory (see deploy/feedback_serve.yaml).
Tokens come from the replica's environment (T2I_FEEDBACK_ADMIN_TOKEN,
T2I_FEEDBACK_SHARED_LABELLER_TOKENS; the older ..._LABELLER_TOKENS is still read).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from t2i_rlhf.services.app import create_app
from t2i_rlhf.services.settings import FeedbackSettings


@serve.deployment(num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 1})
@serve.ingress()
class FeedbackDeployment:
    """One replica serving the feedback API and labelling page."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self._settings = FeedbackSettings.from_env(**(settings or {}))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._settings)


def app_builder(args: dict[str, Any] | None = None) -> Application:
    """Serve config entry point (`import_path: t2i_rlhf.services.serve:app_builder`); `args` are
    FeedbackSettings fields (db_path, labels_per_sample, ...), the environment fills the rest."""
    return FeedbackDeployment.bind(dict(args or {}))
