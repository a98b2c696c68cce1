"""The feedback service's app factory: routers, error mapping, body limit, the labelling page.

Knows nothing of Ray: `serve.py` wraps it for Ray Serve, `t2i-rlhf feedback serve` runs it with
uvicorn. Every error is `{"error": ..., "detail": ...}` with a 4xx status, never a bare 500.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from t2i_rlhf.services.routers import labels, stats, tasks
from t2i_rlhf.services.settings import FeedbackSettings
from t2i_rlhf.services.store import FeedbackStore, StoreError, UnknownSample

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
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        resp = JSONResponse(
            {"error": "payload_too_large", "detail": f"body exceeds {self.max_bytes} bytes"},
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
        )
        await resp({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _error(status_code: int, error: str, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status_code, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, _BodyTooLarge):  # FastAPI wraps errors raised while parsing the body
            return _error(status.HTTP_413_CONTENT_TOO_LARGE, "payload_too_large", "request body too large")
        name = {
            400: "bad_request",
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
            415: "unsupported_media_type",
            422: "invalid_request",
            503: "unavailable",
        }.get(exc.status_code, "error")
        return _error(exc.status_code, name, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(status.HTTP_400_BAD_REQUEST, "malformed_json", "request body is not valid JSON")
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors]
        return _error(status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid_request", detail)

    @app.exception_handler(UnknownSample)
    async def unknown_sample(_: Request, exc: UnknownSample) -> JSONResponse:
        return _error(status.HTTP_404_NOT_FOUND, "unknown_sample", str(exc))

    @app.exception_handler(StoreError)
    async def store_error(_: Request, exc: StoreError) -> JSONResponse:  # not acknowledged: clients retry
        return _error(status.HTTP_503_SERVICE_UNAVAILABLE, "unavailable", str(exc), {"Retry-After": "1"})

    @app.exception_handler(_BodyTooLarge)
    async def too_large(_: Request, exc: _BodyTooLarge) -> JSONResponse:  # raised while FastAPI reads the body
        return _error(status.HTTP_413_CONTENT_TOO_LARGE, "payload_too_large", "request body too large")


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
    for r in (tasks.router, labels.router, stats.router):
        app.include_router(r)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(STATIC_DIR / "index.html"), headers={"Cache-Control": "no-cache"})

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    logger.info("feedback service: db=%s labels_per_sample=%d", settings.db_path, settings.labels_per_sample)
    return app
