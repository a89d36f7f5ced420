"""GET /jobs/{id}/artifacts[/{name}]."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from api.deps import JobDep, OwnerDep, ServiceDep
from api.schemas import ArtifactPublic, ArtifactsPublic, ErrorBody

router = APIRouter(prefix="/jobs/{job_id}/artifacts", tags=["artifacts"])
ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 422, 429)}


@router.get("", response_model=ArtifactsPublic, responses=ERRORS)
async def list_artifacts(job: JobDep) -> ArtifactsPublic:
    """Names, sizes and SHA-256 of the published outputs (empty until the job succeeds)."""
    return ArtifactsPublic(data=[ArtifactPublic.of(a) for a in job.artifacts], count=len(job.artifacts))


@router.get(
    "/{name}", response_class=FileResponse, responses={**ERRORS, 200: {"content": {"application/octet-stream": {}}}}
)
def download_artifact(
    job: JobDep, owner: OwnerDep, service: ServiceDep, name: Annotated[str, PathParam(max_length=128)]
) -> FileResponse:
    """The file, streamed; ``X-Content-SHA256`` carries its hash."""
    path, size, sha256 = service.artifact_path(owner, job.id, name)
    return FileResponse(
        path, media_type="application/octet-stream", filename=name, headers={"X-Content-SHA256": sha256}
    )
