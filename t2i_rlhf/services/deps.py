"""Request dependencies: the store, the settings and bearer-token auth (roles labeller < admin).

All `async def`: they do no I/O (accounts are looked up in the store's in-memory mirror), and
FastAPI would run plain `def` dependencies in its thread pool — a thread hop per dependency per
request, costly on a busy machine."""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from t2i_rlhf.services.identity import DEFAULT_PREFIX, Principal, acting_as, token_hash
from t2i_rlhf.services.settings import FeedbackSettings
from t2i_rlhf.services.store import FeedbackStore

__all__ = ["Principal", "acting_as", "authenticate", "get_settings", "get_store", "require_admin", "require_labeller"]
_bearer = HTTPBearer(auto_error=False, description="admin, labeller or shared labeller token")


async def get_store(request: Request) -> FeedbackStore:
    return request.app.state.store


async def get_settings(request: Request) -> FeedbackSettings:
    return request.app.state.settings


@lru_cache(maxsize=256)
def _token_id(token: str) -> str:
    return DEFAULT_PREFIX + hashlib.sha256(token.encode()).hexdigest()[:10]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


async def authenticate(
    creds: HTTPAuthorizationCredentials | None = Depends(_bearer),
    settings: FeedbackSettings = Depends(get_settings),
    store: FeedbackStore = Depends(get_store),
) -> Principal:
    """401 without a valid token, or with a revoked one. Configured tokens are compared in
    constant time; account tokens are found by their sha256 (timing reveals nothing of a token
    through its hash) and compared in constant time too."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise _unauthorized("missing bearer token")
    token = creds.credentials
    if hmac.compare_digest(token.encode(), settings.admin_token.encode()):
        return Principal("admin", "admin", _token_id(token))
    if any(hmac.compare_digest(token.encode(), t.encode()) for t in settings.shared_labeller_tokens):
        return Principal("labeller", "shared", _token_id(token))
    account = store.labeller_by_token(token_hash(token))
    if account is None:
        raise _unauthorized("invalid token")
    if not account.active:
        raise _unauthorized(f"the token of labeller {account.name!r} was revoked")
    return Principal("labeller", "labeller", account.name)


async def require_labeller(p: Principal = Depends(authenticate)) -> Principal:
    """Any valid token: admins may label too."""
    return p


async def require_admin(p: Principal = Depends(authenticate)) -> Principal:
    if p.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs the admin token")
    return p
