"""What the routes do, without HTTP: submit (parse, check, store), read, cancel or delete, download.

Submission order: stream the body to staging files → parse the text fields (torch-free, fast
422s) → check file formats by name (415) → move the files into the job's inputs dir → a
validator process (one of a pool, awaited without holding a thread) builds the model and loads
weights and data (422) → insert the job row → 201. A job row therefore never points at a missing or unchecked input.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from api.artifacts import ArtifactStore
from api.errors import ApiError
from api.intake import scratch_dir
from api.jobs import Job, JobStatus, JobStore, KeyTaken, NewJob, Quota, QuotaExceeded
from api.jobspec import ONNX_ARCH, check_options, given_from_form, search_helpers, search_workers_of
from api.settings import Settings
from api.uploads import Form
from api.validator import ValidatorPool
from autoprune.spec import ONNX_PREFIX

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
REFUSED_WEIGHTS = (".pt2", ".ts", ".jit", ".pkl", ".pickle", ".onnx", ".joblib", ".npy")
ARCHIVE_SUFFIXES = {".zip": ".zip", ".tar": ".tar", ".tar.gz": ".tar.gz", ".tgz": ".tar.gz"}  # as autoprune.data reads


@dataclass
class JobService:
    settings: Settings
    store: JobStore
    artifacts: ArtifactStore
    validators: ValidatorPool

    def _spec(self, form: Form) -> dict[str, Any]:
        """The job spec to store: what the caller set (typed, checked against the job spec), the
        method ``auto`` resolved, and the service's own fields."""
        fields = form.fields
        has_arch, has_onnx = bool(fields.get("arch", "").strip()), "onnx" in form.files
        if has_arch == has_onnx:
            raise ApiError(422, "missing_field", "give exactly one of 'arch' (an architecture name such as resnet20) "
                           "or 'onnx' (a .onnx file)")  # fmt: skip
        arch = fields["arch"].strip() if has_arch else ONNX_ARCH
        if has_arch and (arch == ONNX_ARCH or arch.startswith(ONNX_PREFIX)):
            raise ApiError(422, "invalid_spec", f"arch {arch!r}: upload an ONNX graph as the 'onnx' file instead")
        if "budget" not in fields:
            raise ApiError(422, "missing_field", "'budget' (JSON such as {\"flops\": 0.5}) is required")
        has_dataset, has_data = "dataset" in fields, "data" in form.files
        if has_dataset == has_data:
            raise ApiError(
                422, "missing_field", "give exactly one of 'dataset' (a name: digits) or 'data' (an archive file)"
            )
        if has_dataset and fields["dataset"] != "digits":
            raise ApiError(
                422, "unknown_name", f"unknown dataset {fields['dataset']!r}; built in: digits (or upload 'data')"
            )
        given = {**given_from_form(fields), "arch": arch}
        options = check_options(given)  # raises BudgetError / SpecError / UnknownNameError (422)
        workers = search_workers_of(fields)
        search_helpers(workers, options)
        return {**given, "method": options.method, "dataset": fields.get("dataset"), "search_workers": workers}

    def _suffixes(self, form: Form) -> dict[str, str]:
        out = {}
        if "weights" in form.files:
            name = form.files["weights"].filename.lower()
            suffix = Path(name).suffix
            if suffix in REFUSED_WEIGHTS:
                raise ApiError(415, "unsafe_format", f"{name}: {suffix} files can carry code and are refused; "
                               "upload .safetensors or a weights-only state dict (.pt/.pth)")  # fmt: skip
            if suffix not in WEIGHT_SUFFIXES:
                raise ApiError(
                    415, "unsupported_format", f"{name}: weights must be one of {', '.join(WEIGHT_SUFFIXES)}"
                )
            out["weights"] = suffix
        if "onnx" in form.files:
            name = form.files["onnx"].filename.lower()
            if Path(name).suffix != ".onnx":
                raise ApiError(415, "unsupported_format", f"{name}: 'onnx' must be a .onnx file")
            out["onnx"] = ".onnx"
        if "data" in form.files:
            name = form.files["data"].filename.lower()
            kind = next((k for k in ARCHIVE_SUFFIXES if name.endswith(k)), None)
            if kind is None:
                raise ApiError(415, "unsupported_format", f"{name}: data must be a .zip, .tar, .tar.gz or .tgz archive "
                               "of an npz dir (*train*.npz, *test*.npz) or an image folder")  # fmt: skip
            out["data"] = ARCHIVE_SUFFIXES[kind]
        return out

    async def submit(self, owner: str, form: Form, idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Queue the job; returns it and whether it is an earlier submission under the same key.

        With an ``Idempotency-Key``, a repeat of the same request (same fields, same file
        contents) gets the job the first one queued, whether that one has finished submitting
        or is racing this one (the store's unique index decides); a different request under a
        key already used is a 422.

        Blocking steps (the database, fsync, moving files) run in the threadpool; the check
        waits for a validator process on the event loop (:class:`api.validator.ValidatorPool`).
        """
        job_id = uuid.uuid4().hex
        fingerprint = None if idempotency_key is None else request_sha256(form)
        try:
            prepared = await run_in_threadpool(self._prepare, owner, form, job_id, idempotency_key, fingerprint)
        except BaseException:
            form.discard()
            self.artifacts.remove_job(job_id)  # whatever was moved in before the failure
            raise
        if isinstance(prepared, Job):
            return prepared, True
        spec, inputs, request = prepared
        try:
            spec["intake"] = await self.validators.check(owner, request)
            helpers = spec["search_workers"] - 1
            new = NewJob(
                id=job_id, owner=owner, spec=spec, inputs=inputs, max_attempts=self.settings.max_attempts,
                search_helpers=helpers, idempotency_key=idempotency_key, request_sha256=fingerprint,
                stored_bytes=_input_bytes(inputs),
            )  # fmt: skip
            job = await run_in_threadpool(self._create, new)
            return job, False
        except QuotaExceeded as over:
            await run_in_threadpool(self.artifacts.remove_job, job_id)
            raise self._quota_error(over.what, over.usage.queued, over.usage.stored_bytes) from None
        except KeyTaken as taken:  # a concurrent submission under the same key queued first
            await run_in_threadpool(self.artifacts.remove_job, job_id)
            return _replayed(taken.earlier, str(idempotency_key), fingerprint), True
        except BaseException:
            await run_in_threadpool(self.artifacts.remove_job, job_id)
            raise

    def _prepare(
        self, owner: str, form: Form, job_id: str, idempotency_key: str | None, fingerprint: str | None
    ) -> Job | tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """In a thread: the earlier job under the key, or (spec, inputs, validator request) with the
        files moved into the job's inputs dir."""
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
            earlier = self.store.by_key(owner, idempotency_key)
            if earlier is not None:
                form.discard()
                return _replayed(earlier, idempotency_key, fingerprint)
        spec = self._spec(form)
        suffixes = self._suffixes(form)
        self._check_quota(owner, sum(upload.size for upload in form.files.values()))
        inputs = self.artifacts.adopt_inputs(job_id, form.files, suffixes)
        paths = {k: str(self.artifacts.resolve(v["path"])) for k, v in inputs.items()}  # type: ignore[arg-type]
        s = self.settings
        request = {
            "spec": spec, "data": paths.get("data", "digits"), "weights": paths.get("weights"),
            "model": paths.get("onnx"), "scratch": str(scratch_dir(self.artifacts.job_dir(job_id))),
            "limits": {"max_archive_members": s.max_archive_members, "max_archive_bytes": s.max_archive_bytes,
                       "max_upload_bytes": s.max_upload_bytes, "max_tensor_elements": s.max_tensor_elements,
                       "max_data_bytes": s.max_data_bytes, "max_model_params": s.max_model_params,
                       "max_model_macs": s.max_model_macs},
        }  # fmt: skip
        return spec, inputs, request

    def _create(self, new: NewJob) -> Job:
        """In a thread: drop what the check extracted, insert the row (the quotas checked again, atomically)."""
        shutil.rmtree(scratch_dir(self.artifacts.job_dir(new.id)).parent, ignore_errors=True)
        return self.store.create(new, self._quota())

    def _quota(self) -> Quota:
        s = self.settings
        return Quota(max_queued=s.max_queued_per_owner, max_stored_bytes=s.max_stored_bytes_per_owner)

    def _check_quota(self, owner: str, upload_bytes: int) -> None:
        """Before the (slow) check: refuse a job the owner's quotas have no room for."""
        quota, usage = self._quota(), self.store.usage(owner)
        if quota.max_queued and usage.queued >= quota.max_queued:
            raise self._quota_error("queued", usage.queued, usage.stored_bytes)
        if quota.max_stored_bytes and usage.stored_bytes + upload_bytes > quota.max_stored_bytes:
            raise self._quota_error("stored_bytes", usage.queued, usage.stored_bytes + upload_bytes)

    def _quota_error(self, what: str, queued: int, stored: int) -> ApiError:
        s = self.settings
        if what == "queued":
            return ApiError(429, "queue_quota", f"you have {queued} jobs queued, the most this service holds per "
                            f"owner ({s.max_queued_per_owner}); submit again when one has started",
                            {"Retry-After": "60"})  # fmt: skip
        return ApiError(413, "storage_quota", f"your jobs would keep {stored:,} bytes, over your quota of "
                        f"{s.max_stored_bytes_per_owner:,}; DELETE /jobs/{{id}} finished jobs to free space")  # fmt: skip

    def get(self, owner: str, job_id: str) -> Job:
        job = self.store.get(job_id, owner) if _is_id(job_id) else None
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        return job

    def list(self, owner: str, limit: int, offset: int) -> tuple[list[Job], int]:
        return self.store.list(owner, limit=limit, offset=offset)

    def delete(self, owner: str, job_id: str) -> Job | None:
        """``DELETE /jobs/{id}``: a queued or running job is cancelled (returned); a finished one is
        deleted with its inputs and artifacts (None)."""
        job = self.get(owner, job_id)
        if not job.status.is_finished():
            return self.cancel(owner, job_id)
        for deleted in self.store.delete(job_id, owner):
            self.artifacts.remove_job(deleted)
        return None

    def cancel(self, owner: str, job_id: str) -> Job:
        self.get(owner, job_id)
        job = self.store.cancel(job_id, owner)
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        if job.status not in (JobStatus.CANCELLED, JobStatus.RUNNING):
            raise ApiError(409, "already_finished", f"job {job_id} already {job.status.value}")
        return job

    def artifact_path(self, owner: str, job_id: str, name: str) -> tuple[Path, int, str]:
        job = self.get(owner, job_id)
        for artifact in job.artifacts:
            if artifact.name == name:
                return self.artifacts.resolve(artifact.path), artifact.size, artifact.sha256
        raise ApiError(404, "not_found", f"job {job_id} has no artifact {name!r}")


def check_idempotency_key(key: str) -> None:
    """1–255 visible ASCII characters (a UUID is the usual choice)."""
    if not 1 <= len(key) <= 255 or not all(33 <= ord(c) <= 126 for c in key):
        raise ApiError(
            400, "bad_idempotency_key", "Idempotency-Key must be 1-255 visible ASCII characters, e.g. a UUID"
        )


def request_sha256(form: Form) -> str:
    """What makes two submissions the same request: every text field and every file's content."""
    canonical = {
        "fields": sorted(form.fields.items()),
        "files": sorted((name, upload.sha256) for name, upload in form.files.items()),
    }
    return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()


def _replayed(earlier: Job, key: str, fingerprint: str | None) -> Job:
    if earlier.request_sha256 != fingerprint:
        raise ApiError(422, "idempotency_key_reused", f"Idempotency-Key {key!r} was used for a different request "
                       f"(job {earlier.id}); use a new key for a new job")  # fmt: skip
    return earlier


def _input_bytes(inputs: dict[str, Any]) -> int:
    return sum(int(info["size"]) for info in inputs.values())


def _is_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)
