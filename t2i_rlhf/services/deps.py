"""Request dependencies: the store, the settings and bearer-token auth (roles labeller < admin).

All `async def`: they do no I/O, and FastAPI would run plain `def` dependencies in its thread
pool — a thread hop per dependency per request, costly on a busy machine."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from t2i_rlhf.services.settings import FeedbackSettings
from t2i_rlhf.services.store import FeedbackStore

Role = Literal["labeller", "admin"]
_bearer = HTTPBearer(auto_error=False, description="admin or labeller token")


@dataclass(frozen=True)
class Principal:
    role: Role
    default_labeller: str  # used when a request names no labeller: stable per token, reveals nothing


async def get_store(request: Request) -> FeedbackStore:
    return request.app.state.store


async def get_settings(request: Request) -> FeedbackSettings:
    return request.app.state.settings


@lru_cache(maxsize=256)
def _token_id(token: str) -> str:
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:10]


async def authenticate(
    creds: HTTPAuthorizationCredentials | None = Depends(_bearer),
    settings: FeedbackSettings = Depends(get_settings),
) -> Principal:
    """401 without a valid token. Comparison is constant-time so tokens cannot be guessed by timing."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    token = creds.credentials
    if hmac.compare_digest(token.encode(), settings.admin_token.encode()):
        return Principal("admin", _token_id(token))
    if any(hmac.compare_digest(token.encode(), t.encode()) for t in settings.labeller_tokens):
        return Principal("labeller", _token_id(token))
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid token", headers={"WWW-Authenticate": "Bearer"})


async def require_labeller(p: Principal = Depends(authenticate)) -> Principal:
    """Any valid token: admins may label too."""
    return p


async def require_admin(p: Principal = Depends(authenticate)) -> Principal:
    if p.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs the admin token")
    return p
