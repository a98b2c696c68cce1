"""Error shapes, in one place: the codes, the OpenAPI `responses=` each route declares, and the
422 the service raises itself — so a client generated from /openapi.json sees what it gets.

Every error is `{"error": code, "detail": ...}`: `detail` is a message (`ErrorBody`), except for
422, where it is always a list of `{loc, msg, type}` (`ValidationErrorBody`), as FastAPI declares
it — also when a route refuses a request by hand (duplicate ids, a bad Parquet row...)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError

from t2i_rlhf.services.schemas import ErrorBody, ValidationErrorBody

ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    500: "internal_error",
    503: "unavailable",
}
_DESCRIPTIONS = {
    400: "malformed JSON, or a body that is not a readable Parquet file",
    401: "no bearer token, or an unknown one",
    403: "this needs the admin token",
    404: "unknown sample (or no live label to undo)",
    409: "the name is taken, or the labeller is revoked",
    413: "request body too large",
    415: "unsupported Content-Type",
    422: "invalid fields; `detail` lists each problem",
    503: "the store is briefly unavailable; nothing was stored, retry",
}
_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}},
}


def error_responses(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each code with its model, description and headers. A keyword
    `e404="..."` overrides a description."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted(set(codes)):
        entry: dict[str, Any] = {
            "model": ValidationErrorBody if code == 422 else ErrorBody,
            "description": descriptions.get(f"e{code}", _DESCRIPTIONS[code]),
        }
        if code in _HEADERS:
            entry["headers"] = _HEADERS[code]
        out[code] = entry
    return out


def invalid(loc: Sequence[str | int], msg: str, type_: str = "value_error") -> RequestValidationError:
    """A 422 raised by hand, in the same shape as pydantic's: `raise invalid(("body", "tasks"), "...")`."""
    return RequestValidationError([{"loc": tuple(loc), "msg": msg, "type": type_}])


def field_errors(errors: Sequence[Any], prefix: Sequence[str | int] = ()) -> list[dict[str, Any]]:
    """Pydantic / FastAPI errors -> the declared `FieldError` dicts (no input echo, no context)."""
    return [
        {"loc": [*prefix, *e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in errors
    ]
