"""The feedback service's app factory: routers, error mapping, body limit, the labelling page.

Knows nothing of Ray: `serve.py` wraps it for Ray Serve, `t2i-rlhf feedback serve` runs it with
uvicorn. Every error is `{"error": ..., "detail": ...}` (`errors.py`), with a 4xx status for bad
input; an unexpected failure is a JSON 500 that leaves the connection usable, never a bare 500.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from t2i_rlhf.services.errors import ERROR_CODES, field_errors
from t2i_rlhf.services.identity import NotYourLabel
from t2i_rlhf.services.routers import labellers, labels, stats, tasks
from t2i_rlhf.services.schemas import PublishRequest
from t2i_rlhf.services.settings import FeedbackSettings
from t2i_rlhf.services.store import FeedbackStore, LabellerConflict, StoreError, UnknownLabeller, UnknownSample

logger = logging.getLogger(__name__)
STATIC_DIR = resources.files("t2i_rlhf.services") / "static"
API_VERSION = "1.0.0"


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for bodies over the limit, by Content-Length up front or by counting a streamed body,
    so an oversized upload is refused before it is buffered."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        seen = 0
        tracked = _StartTracker(send)

        async def counting_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return msg

        try:
            await self.app(scope, counting_receive, tracked)
        except _BodyTooLarge:
            if not tracked.started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        resp = JSONResponse(
            {"error": "payload_too_large", "detail": f"body exceeds {self.max_bytes} bytes"},
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
        )
        await resp({"type": "http"}, _no_receive, send)


class _StartTracker:
    """An ASGI `send` that remembers whether the response has started: after that no other
    answer can be sent, only the connection closed."""

    def __init__(self, send: Send) -> None:
        self.send, self.started = send, False

    async def __call__(self, msg: Message) -> None:
        self.started = self.started or msg["type"] == "http.response.start"
        await self.send(msg)


class LastResortMiddleware:
    """A JSON 500 for any exception no handler mapped, logged and *not* re-raised. Starlette's
    own fallback re-raises after answering, and uvicorn then closes the connection, so the
    client's next request on it is reset. Input should never get here: the schemas bound it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = _StartTracker(send)
        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:
            return  # nobody left to answer
        except Exception:
            if tracked.started:  # half a response is out: closing the connection is the only honest end
                raise
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            resp = _error(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "unexpected server error (logged)")
            await resp(scope, receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _error(status_code: int, error: str, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status_code, headers=headers)


# The store's and the identity rules' refusals, each answered with its status and error name and the
# exception's message.
DOMAIN_ERRORS: dict[type[Exception], tuple[int, str]] = {
    UnknownSample: (status.HTTP_404_NOT_FOUND, "unknown_sample"),
    UnknownLabeller: (status.HTTP_404_NOT_FOUND, "unknown_labeller"),
    LabellerConflict: (status.HTTP_409_CONFLICT, "conflict"),
    NotYourLabel: (status.HTTP_403_FORBIDDEN, "forbidden"),
}


def _domain_error_handler(code: int, name: str):
    async def handler(_: Request, exc: Exception) -> JSONResponse:
        return _error(code, name, str(exc))

    return handler


def _allowed_methods(request: Request) -> str:
    """The methods of this path, as OpenAPI reads paths: every route of the path (Starlette's 405
    named the first route's only, and /v1/labels is two: GET, POST), and a concrete path before a
    templated one (/v1/tasks/next is the lease's, though /v1/tasks/{sample_id} matches it too)."""
    path = request.scope.get("path", "")
    hits = [(concrete, methods) for regex, concrete, methods in request.app.state.route_methods if regex.match(path)]
    if any(concrete for concrete, _ in hits):
        hits = [h for h in hits if h[0]]
    return ", ".join(sorted({m for _, methods in hits for m in methods}))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, _BodyTooLarge):  # FastAPI wraps errors raised while parsing the body
            return _error(status.HTTP_413_CONTENT_TOO_LARGE, "payload_too_large", "request body too large")
        detail: object = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == status.HTTP_422_UNPROCESSABLE_CONTENT:  # keep the declared 422 shape
            detail = [{"loc": [], "msg": detail, "type": "value_error"}]
        name = ERROR_CODES.get(exc.status_code, "error")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            headers["Allow"] = _allowed_methods(request)
        return _error(exc.status_code, name, detail, headers or None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(status.HTTP_400_BAD_REQUEST, "malformed_json", "request body is not valid JSON")
        return _error(status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid_request", field_errors(errors))

    for exc_type, (code, name) in DOMAIN_ERRORS.items():
        app.add_exception_handler(exc_type, _domain_error_handler(code, name))

    @app.exception_handler(StoreError)
    async def store_error(_: Request, exc: StoreError) -> JSONResponse:  # not acknowledged: clients retry
        return _error(status.HTTP_503_SERVICE_UNAVAILABLE, "unavailable", str(exc), {"Retry-After": "1"})

    @app.exception_handler(_BodyTooLarge)
    async def too_large(_: Request, exc: _BodyTooLarge) -> JSONResponse:  # raised while FastAPI reads the body
        return _error(status.HTTP_413_CONTENT_TOO_LARGE, "payload_too_large", "request body too large")


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the models only `openapi_extra` names (the publish body is parsed by
    hand, JSON or Parquet, so FastAPI never sees PublishRequest / TaskIn and would not define them)."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        _, defs = models_json_schema([(PublishRequest, "validation")], ref_template="#/components/schemas/{model}")
        known = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, model_schema in defs.get("$defs", {}).items():
            known.setdefault(name, model_schema)
    return app.openapi_schema


def create_app(settings: FeedbackSettings, store: FeedbackStore | None = None) -> FastAPI:
    """Build the app; opens the SQLite store at settings.db_path unless one is given."""
    store = store or FeedbackStore(settings.db_path, settings.synchronous)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()  # drains the writer: everything acknowledged is already committed

    app = FastAPI(
        title="t2i_rlhf feedback service",
        version=API_VERSION,
        lifespan=lifespan,
        description="Binary human feedback (good / bad / skip) on generated images, for online RLHF.",
    )
    app.state.settings = settings
    app.state.store = store
    _install_error_handlers(app)
    routers = (tasks.router, labels.router, labellers.router, stats.router)
    for r in routers:
        app.include_router(r)
    app.state.route_methods = [  # for the Allow header of a 405
        (route.path_regex, "{" not in route.path, set(route.methods))
        for r in routers
        for route in r.routes
        if isinstance(route, APIRoute)
    ]
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(STATIC_DIR / "index.html"), headers={"Cache-Control": "no-cache"})

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(LastResortMiddleware)  # outermost of ours: also catches what BodyLimit lets through
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    logger.info("feedback service: db=%s labels_per_sample=%d", settings.db_path, settings.labels_per_sample)
    return app
