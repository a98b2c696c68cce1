"""Labeller accounts (admin): create (the token is shown once), list, rotate a token, revoke.
And `/v1/me`: who a token labels as, for the labelling page.

A revoked account's token gets 401; its labels stay in the store and the export (with its name),
and its name is never given to anyone else.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, status

from t2i_rlhf.services.deps import Principal, acting_as, get_store, require_admin, require_labeller
from t2i_rlhf.services.errors import error_responses
from t2i_rlhf.services.identity import new_token, token_hash
from t2i_rlhf.services.schemas import (
    LabellerCreate,
    LabellerCreated,
    LabellerList,
    LabellerOut,
    LabellerPath,
    LabellerQuery,
    Me,
)
from t2i_rlhf.services.store import FeedbackStore

router = APIRouter(prefix="/v1", tags=["labellers"])
_E404 = "no labeller account by that name"


@router.post(
    "/labellers",
    response_model=LabellerCreated,
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(
        400, 401, 403, 409, 413, 422, 503, e409="the name is an account already, or labels were posted under it"
    ),
    summary="Create a labeller account (admin); the answer holds its token, shown this once.",
)
def create_labeller(
    body: LabellerCreate,
    _: Principal = Depends(require_admin),
    store: FeedbackStore = Depends(get_store),
) -> LabellerCreated:
    token = new_token()
    account = store.create_labeller(body.name, token_hash(token))
    return LabellerCreated(**account.public(), token=token)


@router.get(
    "/labellers",
    response_model=LabellerList,
    responses=error_responses(401, 403),
    summary="List labeller accounts (admin), revoked ones included; never their tokens.",
)
def list_labellers(_: Principal = Depends(require_admin), store: FeedbackStore = Depends(get_store)) -> LabellerList:
    return LabellerList(labellers=[LabellerOut(**a.public()) for a in store.labellers()])


@router.post(
    "/labellers/{name}/token",
    response_model=LabellerCreated,
    responses=error_responses(401, 403, 404, 409, 422, 503, e404=_E404, e409="the labeller is revoked"),
    summary="Give a labeller a new token (admin), e.g. when one was lost; the old token stops working.",
)
def rotate_token(
    name: str = LabellerPath,
    _: Principal = Depends(require_admin),
    store: FeedbackStore = Depends(get_store),
) -> LabellerCreated:
    token = new_token()
    return LabellerCreated(**store.rotate_token(name, token_hash(token)).public(), token=token)


@router.post(
    "/labellers/{name}/revoke",
    response_model=LabellerOut,
    responses=error_responses(401, 403, 404, 422, 503, e404=_E404),
    summary="Revoke a labeller (admin; idempotent): its token gets 401 from now on, its labels stay.",
)
@router.delete(
    "/labellers/{name}",
    response_model=LabellerOut,
    responses=error_responses(401, 403, 404, 422, 503, e404=_E404),
    summary="The same as POST /v1/labellers/{name}/revoke: the account is revoked, not erased.",
)
def revoke_labeller(
    name: str = LabellerPath,
    _: Principal = Depends(require_admin),
    store: FeedbackStore = Depends(get_store),
) -> LabellerOut:
    return LabellerOut(**store.revoke_labeller(name).public())


@router.get(
    "/me",
    response_model=Me,
    responses=error_responses(
        401, 403, 422, e403="the token may not act as the labeller named (an account, or not its owner)"
    ),
    summary="Who this token labels as (with `labeller=`, as that name: checked as labels would be).",
)
def me(
    labeller: str | None = LabellerQuery,
    who: Principal = Depends(require_labeller),
    store: FeedbackStore = Depends(get_store),
) -> Me:
    name = acting_as(who, labeller, store.is_registered)
    return Me(labeller=name, token=who.kind, labels=store.live_labels(name))
