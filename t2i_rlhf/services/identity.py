"""Who is labelling: the three kinds of token, and the rule that binds a label to its labeller.

- the **admin** token publishes, exports, manages labellers (and may label);
- a **labeller** token belongs to one account (`POST /v1/labellers`): every label, lease and
  undo made with it is its owner's, whatever a request's `labeller` field says — a request that
  names someone else is refused (403), so nobody can post, undo or overwrite another's labels;
- a **shared** labeller token (settings `shared_labeller_tokens`) is for a one-person local run,
  e.g. the demo: its holder may name any labeller that is not an account. It proves nothing
  about who labelled, and exports say so (`via: shared_token`).

Tokens of accounts are 256-bit random strings; the store keeps their sha256 only (a fast hash
is enough for a high-entropy secret: there is nothing to brute-force).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Role = Literal["labeller", "admin"]
TokenKind = Literal["admin", "shared", "labeller"]
TOKEN_PREFIX = "t2i_lab_"  # recognisable in logs and secret scanners
DEFAULT_PREFIX = "token-"  # default ids of admin / shared tokens; no account may be named so


class NotYourLabel(PermissionError):
    """The token may not act as the labeller the request names."""


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """The authenticated caller. `name`: the account for a labeller token; otherwise the
    labeller id used when a request names none (stable per token, reveals nothing of it)."""

    role: Role
    kind: TokenKind
    name: str

    @property
    def via(self) -> str:
        """What the label rows record about the token that posted them."""
        return f"{self.kind}_token"


def acting_as(who: Principal, requested: str | None, is_account: Callable[[str], bool]) -> str:
    """The labeller a request acts as. A labeller token acts as its owner only; the admin and
    shared tokens act as the labeller named (default: their own id), unless that is an account."""
    if who.kind == "labeller":
        if requested is not None and requested != who.name:
            raise NotYourLabel(f"this token belongs to labeller {who.name!r}; it cannot act as {requested!r}")
        return who.name
    name = requested or who.name
    if is_account(name):
        raise NotYourLabel(f"{name!r} is a labeller account: only its own token can act as it")
    return name
