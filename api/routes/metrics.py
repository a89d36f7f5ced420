"""GET /metrics: Prometheus text. The operator's token (AUTOPRUNE_METRICS_TOKEN) sees the whole
service; an owner's token sees its own jobs only (no other owner's counts, no traffic)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials

from api.deps import StateDep, bearer, current_owner
from api.metrics import render
from api.schemas import ErrorBody

router = APIRouter(tags=["metrics"])


async def scope(
    request: Request, state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> str | None:
    """None for the operator's token; else the owner of an ordinary token (401/429 as elsewhere)."""
    operator = state.settings.metrics_token
    if operator and credentials is not None and hmac.compare_digest(credentials.credentials, operator):
        return None
    return await current_owner(request, state, credentials)


@router.get(
    "/metrics", response_class=PlainTextResponse, responses={401: {"model": ErrorBody}, 429: {"model": ErrorBody}}
)
def metrics(owner: Annotated[str | None, Depends(scope)], state: StateDep) -> PlainTextResponse:
    """Queue depth, jobs by status, job durations: the caller's own, or (operator token) the whole
    service's with its HTTP responses."""
    text = render(state.service.store, state.responses, owner)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
