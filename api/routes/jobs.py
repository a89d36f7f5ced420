"""POST/GET/DELETE /jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from api.deps import JobDep, OwnerDep, ServiceDep, StateDep, SubmitterDep
from api.jobspec import openapi_form
from api.schemas import ErrorBody, JobPublic, JobsPublic
from api.uploads import read_form

router = APIRouter(prefix="/jobs", tags=["jobs"])
ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 422, 429)}


@router.post(
    "", status_code=201, response_model=JobPublic, openapi_extra=openapi_form(),
    responses={
        200: {"model": JobPublic, "description": "a repeat under the same Idempotency-Key: the job it queued"},
        **ERRORS, **{code: {"model": ErrorBody} for code in (400, 413, 415, 503)},
    },
)  # fmt: skip
async def submit_job(
    request: Request,
    response: Response,
    owner: SubmitterDep,
    state: StateDep,
    idempotency_key: Annotated[
        str | None, Header(description="a fresh key (e.g. a UUID) per job makes retrying the POST safe")
    ] = None,
) -> JobPublic:
    """Queue a pruning job: multipart fields, validated (model built, weights loaded) before queueing."""
    s = state.settings
    form = await read_form(
        request, state.service.artifacts.staging,
        max_bytes=s.max_upload_bytes, max_field_bytes=s.max_field_bytes, max_fields=s.max_fields,
    )  # fmt: skip
    job, replayed = await state.service.submit(owner, form, idempotency_key)
    if replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return JobPublic.of(job)


@router.get("", response_model=JobsPublic, responses=ERRORS)
def list_jobs(
    owner: OwnerDep,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> JobsPublic:
    """The caller's jobs, newest first."""
    jobs, total = service.list(owner, limit, offset)
    return JobsPublic(data=[JobPublic.of(job) for job in jobs], count=total)


@router.get("/{job_id}", response_model=JobPublic, responses=ERRORS)
async def get_job(job: JobDep) -> JobPublic:
    """Status, stage, progress, ETA, error and (when succeeded) the report."""
    return JobPublic.of(job)


@router.delete(
    "/{job_id}", response_model=JobPublic,
    responses={**ERRORS, 204: {"description": "the finished job was deleted"}, 409: {"model": ErrorBody}},
)  # fmt: skip
def cancel_job(job: JobDep, owner: OwnerDep, service: ServiceDep) -> JobPublic | Response:
    """Cancel or delete. A queued job is cancelled at once and a running one is stopped by its
    worker (``cancel_requested``): 200 with the job. A finished job (succeeded, failed or
    cancelled) is deleted with its inputs and artifacts: 204, and it is gone."""
    cancelled = service.delete(owner, job.id)
    if cancelled is None:
        return Response(status_code=204)
    return JobPublic.of(cancelled)
