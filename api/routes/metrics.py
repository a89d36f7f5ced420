"""GET /metrics: Prometheus text (needs a token, like every route but /healthz)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from api.deps import OwnerDep, StateDep
from api.metrics import render
from api.schemas import ErrorBody

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=PlainTextResponse, responses={401: {"model": ErrorBody}, 429: {"model": ErrorBody}})
def metrics(owner: OwnerDep, state: StateDep) -> PlainTextResponse:
    """Queue depth, jobs by status, job durations, HTTP responses."""
    return PlainTextResponse(render(state.service.store, state.responses), media_type="text/plain; version=0.0.4")
