"""What the routes do, without HTTP: submit (parse, check, store), read, cancel, download.

Submission order: stream the body to staging files → parse the text fields (torch-free, fast
422s) → check file formats by name (415) → move the files into the job's inputs dir → the
validator subprocess builds the model and loads weights and data (422) → insert the job row →
201. A job row therefore never points at a missing or unchecked input.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from api.artifacts import ArtifactStore
from api.errors import ApiError
from api.jobs import Job, JobStatus, JobStore, KeyTaken, NewJob
from api.jobspec import EXPORTS, ONNX_ARCH, ONNX_PREFIX, search_helpers, to_jobspec
from api.settings import Settings
from api.uploads import Form
from api.validator import Validator
from autoprune.types import DEFAULT_METHOD, Budget

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
REFUSED_WEIGHTS = (".pt2", ".ts", ".jit", ".pkl", ".pickle", ".onnx", ".joblib", ".npy")
ARCHIVE_SUFFIXES = {".zip": ".zip", ".tar": ".tar", ".tar.gz": ".tar.gz", ".tgz": ".tar.gz"}  # as autoprune.data reads


@dataclass
class JobService:
    settings: Settings
    store: JobStore
    artifacts: ArtifactStore
    validator: Validator

    def _spec(self, form: Form) -> dict[str, Any]:
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
            raise ApiError(422, "missing_field", "give exactly one of 'dataset' (a name: digits) or 'data' (an archive file)")
        if has_dataset and fields["dataset"] != "digits":
            raise ApiError(422, "unknown_name", f"unknown dataset {fields['dataset']!r}; built in: digits (or upload 'data')")
        spec: dict[str, Any] = {
            "arch": arch,
            "dataset": fields.get("dataset"),
            "budget": _json(fields, "budget"),
            "method": fields.get("method", DEFAULT_METHOD).strip() or DEFAULT_METHOD,
            "criterion": (fields.get("criterion") or "").strip() or None,
            "finetune": _json(fields, "finetune") if "finetune" in fields else {},
            "search_workers": _integer(fields, "search_workers", 1),
            "search_trials": _integer(fields, "search_trials", None),
            "channel_step": _integer(fields, "channel_step", 1),
            "exports": _names(fields, "exports", EXPORTS),
        }
        if not isinstance(spec["finetune"], dict):
            raise ApiError(422, "invalid_spec", "'finetune' must be a JSON object such as {\"epochs\": 5}")
        s = self.settings  # raises BudgetError / SpecError (422) for malformed values
        checked = to_jobspec(spec, data="digits", weights=None, out_dir="-", latency_repeats=s.latency_repeats,
                             calibration_batches=s.calibration_batches, model_file="-")  # fmt: skip
        spec["method"] = checked.method  # "auto" stored as the allocator it stands for
        return spec

    def _suffixes(self, form: Form) -> dict[str, str]:
        out = {}
        if "weights" in form.files:
            name = form.files["weights"].filename.lower()
            suffix = Path(name).suffix
            if suffix in REFUSED_WEIGHTS:
                raise ApiError(415, "unsafe_format", f"{name}: {suffix} files can carry code and are refused; "
                               "upload .safetensors or a weights-only state dict (.pt/.pth)")  # fmt: skip
            if suffix not in WEIGHT_SUFFIXES:
                raise ApiError(415, "unsupported_format", f"{name}: weights must be one of {', '.join(WEIGHT_SUFFIXES)}")
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
        """
        job_id = uuid.uuid4().hex
        fingerprint = None if idempotency_key is None else request_sha256(form)
        try:
            if idempotency_key is not None:
                check_idempotency_key(idempotency_key)
                earlier = self.store.by_key(owner, idempotency_key)
                if earlier is not None:
                    form.discard()
                    return _replayed(earlier, idempotency_key, fingerprint), True
            spec = self._spec(form)
            suffixes = self._suffixes(form)
            inputs = self.artifacts.adopt_inputs(job_id, form.files, suffixes)
        except BaseException:
            form.discard()
            raise
        try:
            paths = {k: str(self.artifacts.resolve(v["path"])) for k, v in inputs.items()}  # type: ignore[arg-type]
            s = self.settings
            request = {
                "spec": spec, "data": paths.get("data", "digits"), "weights": paths.get("weights"),
                "model": paths.get("onnx"),
                "limits": {"max_archive_members": s.max_archive_members, "max_archive_bytes": s.max_archive_bytes,
                           "max_upload_bytes": s.max_upload_bytes, "max_tensor_elements": s.max_tensor_elements},
            }  # fmt: skip
            spec["intake"] = await run_in_threadpool(self.validator.check, request)
            helpers = search_helpers(spec, Budget.from_dict(spec["budget"]))
            new = NewJob(
                id=job_id, owner=owner, spec=spec, inputs=inputs, max_attempts=s.max_attempts, search_helpers=helpers,
                idempotency_key=idempotency_key, request_sha256=fingerprint,
            )  # fmt: skip
            return self.store.create(new), False
        except KeyTaken as taken:  # a concurrent submission under the same key queued first
            self.artifacts.remove_job(job_id)
            return _replayed(taken.earlier, str(idempotency_key), fingerprint), True
        except BaseException:
            self.artifacts.remove_job(job_id)
            raise

    def get(self, owner: str, job_id: str) -> Job:
        job = self.store.get(job_id, owner) if _is_id(job_id) else None
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        return job

    def list(self, owner: str, limit: int, offset: int) -> tuple[list[Job], int]:
        return self.store.list(owner, limit=limit, offset=offset)

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
        raise ApiError(400, "bad_idempotency_key", "Idempotency-Key must be 1-255 visible ASCII characters, e.g. a UUID")


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


def _json(fields: dict[str, str], name: str) -> Any:
    try:
        return json.loads(fields[name])
    except json.JSONDecodeError as exc:
        raise ApiError(422, "bad_json", f"{name!r} is not valid JSON: {exc}") from None


def _integer(fields: dict[str, str], name: str, default: int | None) -> int | None:
    text = fields.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ApiError(422, "invalid_spec", f"{name!r} must be an integer, not {text!r}") from None


def _names(fields: dict[str, str], name: str, default: tuple[str, ...]) -> list[str]:
    """A comma-separated list field; absent: ``default``; ``none`` or empty: no names."""
    if name not in fields:
        return list(default)
    text = fields[name].strip()
    return [] if text in ("", "none") else [part.strip() for part in text.split(",")]


def _is_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)
