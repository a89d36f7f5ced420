"""POST/GET/DELETE /jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from api.deps import JobDep, OwnerDep, ServiceDep, StateDep, SubmitterDep
from api.schemas import ErrorBody, JobPublic, JobsPublic
from api.uploads import read_form
from autoprune.types import DEFAULT_METHOD

router = APIRouter(prefix="/jobs", tags=["jobs"])
ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 422, 429)}

_JSON_FIELD = {"type": "string", "description": "JSON"}
SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["budget"],
            "properties": {
                "arch": {"type": "string", "description": "architecture name (or upload 'onnx')", "example": "resnet20"},
                "onnx": {"type": "string", "format": "binary", "description": ".onnx classifier graph, instead of 'arch'"},
                "weights": {"type": "string", "format": "binary",
                            "description": ".safetensors or weights-only .pt/.pth (optional with 'onnx')"},
                "dataset": {"type": "string", "description": "built-in dataset name", "example": "digits"},
                "data": {"type": "string", "format": "binary", "description": ".zip/.tar/.tar.gz of an npz dir or image folder"},
                "budget": {**_JSON_FIELD, "example": '{"flops": 0.5}'},
                "method": {"type": "string", "example": DEFAULT_METHOD},
                "criterion": {"type": "string", "example": "taylor"},
                "finetune": {**_JSON_FIELD, "example": '{"epochs": 1, "max_steps_per_epoch": 4}'},
                "search_workers": {"type": "string", "example": "1",
                                   "description": "evolution: worker slots that share its search (1-8; flops/params budgets)"},
                "search_trials": {"type": "string", "example": "60", "description": "evolution: candidates to evaluate (1-2000)"},
                "channel_step": {"type": "string", "example": "8",
                                 "description": "kept widths in multiples of this (1-64; 8 suits onnxruntime)"},
            },
        }}},
    }
}  # fmt: skip


@router.post(
    "", status_code=201, response_model=JobPublic, openapi_extra=SUBMIT_BODY,
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
def get_job(job: JobDep) -> JobPublic:
    """Status, stage, progress, ETA, error and (when succeeded) the report."""
    return JobPublic.of(job)


@router.delete("/{job_id}", response_model=JobPublic, responses={**ERRORS, 409: {"model": ErrorBody}})
def cancel_job(job: JobDep, owner: OwnerDep, service: ServiceDep) -> JobPublic:
    """Cancel: a queued job at once; a running one is stopped by its worker (cancel_requested)."""
    return JobPublic.of(service.cancel(owner, job.id))
