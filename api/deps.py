"""Annotated dependencies: the app state, the caller (bearer token + rate limit), their job."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from api.jobs import Job
from api.security import hash_token
from api.service import JobService
from api.state import AppState

bearer = HTTPBearer(auto_error=False, description="a token from `autoprune token create --owner NAME`")
UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


# Dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in the
# threadpool, and each such hop costs a poll more CPU (and latency under load) than the work
# itself. Only the ones that touch the database stay ``def``.


async def get_state(request: Request) -> AppState:
    return request.app.state.autoprune  # type: ignore[no-any-return]


StateDep = Annotated[AppState, Depends(get_state)]


async def get_service(state: StateDep) -> JobService:
    return state.service


ServiceDep = Annotated[JobService, Depends(get_service)]


async def current_owner(
    request: Request, state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> str:
    """The owner of a valid bearer token, within the per-token request rate. A token seen lately
    is resolved from memory; otherwise the database is asked off the event loop."""
    if credentials is None:
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>", UNAUTHORIZED)
    owner = state.tokens.recent_owner(credentials.credentials)
    if owner is None:
        owner = await run_in_threadpool(state.tokens.owner_of, credentials.credentials)
    if owner is None:
        raise ApiError(401, "unauthorized", "invalid token", UNAUTHORIZED)
    request.state.rate_key = hash_token(credentials.credentials)
    wait = state.requests.acquire(request.state.rate_key)
    if wait:
        raise ApiError(429, "rate_limited", "too many requests for this token", {"Retry-After": str(int(wait) + 1)})
    return owner


OwnerDep = Annotated[str, Depends(current_owner)]


async def submit_allowed(request: Request, state: StateDep, owner: OwnerDep) -> str:
    """The submission rate is limited separately (and lower) than reads."""
    wait = state.submits.acquire(request.state.rate_key)
    if wait:
        raise ApiError(429, "rate_limited", "too many submissions for this token", {"Retry-After": str(int(wait) + 1)})
    return owner


SubmitterDep = Annotated[str, Depends(submit_allowed)]
JobId = Annotated[str, Path(min_length=1, max_length=64, description="a job id from POST /jobs")]


def get_job(job_id: JobId, owner: OwnerDep, service: ServiceDep) -> Job:
    """The caller's job, or 404 (also for another owner's job: existence is not disclosed)."""
    return service.get(owner, job_id)


JobDep = Annotated[Job, Depends(get_job)]
