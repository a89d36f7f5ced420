"""Files under the data dir: staged uploads, job inputs, and per-attempt outputs.

Layout: ``uploads/*.partial`` (bodies being received), ``jobs/<id>/inputs/`` (accepted
uploads, server-named), ``jobs/<id>/scratch/<attempt-tag>/`` (an attempt's or a submission
check's temporary files: removed when it ends, swept at start), ``jobs/<id>/<attempt-tag>.tmp/``
(what a running attempt writes) and
``jobs/<id>/<attempt-tag>/`` (published: fsynced, then renamed in one step), and
``jobs/<id>/checkpoint/`` (resumable state shared by the attempts). A retry gets a new
tag, so it never overwrites another attempt's files; downloads resolve only the paths that the
store recorded when the attempt's fenced completion succeeded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from api.jobs.model import Artifact
from api.uploads import UploadedFile

INPUT_NAMES = {"weights": "weights", "data": "data", "onnx": "model"}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore:
    """The local (or shared-volume) artifact directory."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.staging = self.root / "uploads"

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def resolve(self, relative: str) -> Path:
        """The absolute path of a recorded relative path; refuses anything outside the root."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"{relative!r} is outside the data dir")
        return path

    def adopt_inputs(
        self, job_id: str, files: dict[str, UploadedFile], suffixes: dict[str, str]
    ) -> dict[str, dict[str, object]]:
        """fsync staged uploads and move them into the job's inputs dir under server-chosen names (blocking)."""
        inputs_dir = self.job_dir(job_id) / "inputs"
        inputs_dir.mkdir(parents=True, exist_ok=False)
        out: dict[str, dict[str, object]] = {}
        for name, upload in files.items():
            target = inputs_dir / f"{INPUT_NAMES[name]}{suffixes[name]}"
            with upload.path.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(upload.path, target)
            out[name] = {
                "path": str(target.relative_to(self.root)), "size": upload.size,
                "sha256": upload.sha256, "filename": upload.filename,
            }  # fmt: skip
        _fsync_dir(inputs_dir)
        return out

    def remove_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def checkpoint_dir(self, job_id: str) -> Path:
        """Where the job's attempts keep their resumable state; it outlives each attempt."""
        return self.job_dir(job_id) / "checkpoint"

    def drop_checkpoint(self, job_id: str) -> None:
        """Once the job has its final status, nothing will resume from its checkpoint."""
        shutil.rmtree(self.checkpoint_dir(job_id), ignore_errors=True)

    def attempt_dir(self, job_id: str, tag: str) -> Path:
        """A fresh directory for one attempt's outputs (``.tmp`` until published).

        Leftover ``.tmp`` dirs of earlier attempts are removed: their workers lost the lease,
        so their fenced completion would be refused anyway.
        """
        for stale in self.job_dir(job_id).glob("*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        path = self.job_dir(job_id) / f"{tag}.tmp"
        path.mkdir(parents=True)
        return path

    def scratch_dir(self, job_id: str, tag: str) -> Path:
        """A fresh directory for one attempt's temporary files (extracted data): inside the job's dir,
        never the system's temp dir. Other attempts' leftovers are removed (their workers lost the job)."""
        root = self.job_dir(job_id) / "scratch"
        if root.is_dir():
            for stale in root.iterdir():
                shutil.rmtree(stale, ignore_errors=True)
        path = root / tag
        path.mkdir(parents=True)
        return path

    def drop_scratch(self, job_id: str, tag: str | None = None) -> None:
        """Remove one attempt's scratch dir (every ending), or all of the job's."""
        root = self.job_dir(job_id) / "scratch"
        shutil.rmtree(root / tag if tag else root, ignore_errors=True)
        try:
            root.rmdir()  # when no other attempt's is left
        except OSError:
            pass

    def sweep_scratch(self, idle: Callable[[list[str]], set[str]]) -> int:
        """At start: remove the scratch dirs of jobs that have a row and are not running (``idle(ids)``
        says which); a killed worker or validator leaves them. Row-less dirs (a submission being
        checked) are left to :meth:`sweep_orphans`."""
        jobs_dir = self.root / "jobs"
        if not jobs_dir.is_dir():
            return 0
        having = [p.parent.name for p in jobs_dir.glob("*/scratch")]
        idle_ids = idle(having) if having else set()
        for job_id in idle_ids:
            self.drop_scratch(job_id)
        return len(idle_ids)

    def publish(self, tmp: Path) -> tuple[Path, list[Artifact]]:
        """fsync every output, rename ``X.tmp`` to ``X`` and describe the files."""
        final = tmp.with_suffix("")
        artifacts = []
        for path in sorted(tmp.iterdir()):
            if not path.is_file() or path.is_symlink() or path.name.startswith("."):
                continue
            with path.open("rb") as f:
                os.fsync(f.fileno())
            artifacts.append(Artifact(
                name=path.name, path=str((final / path.name).relative_to(self.root)),
                size=path.stat().st_size, sha256=sha256_of(path),
            ))  # fmt: skip
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return final, artifacts

    def sweep_orphans(self, known: Callable[[list[str]], set[str]], older_than_s: float = 3600.0) -> int:
        """Delete job dirs that no job row names: an API that died between moving a submission's
        inputs in and inserting its row leaves one. ``known(ids)`` says which ids have rows; the
        age guard leaves alone a submission another API process is validating right now."""
        jobs_dir = self.root / "jobs"
        if not jobs_dir.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        old = [p.name for p in jobs_dir.iterdir() if p.is_dir() and p.stat().st_mtime < cutoff]
        orphans = set(old) - known(old)
        for job_id in orphans:
            self.remove_job(job_id)
        return len(orphans)

    def sweep_partials(self, older_than_s: float = 3600.0) -> int:
        """Delete abandoned upload bodies (a crash mid-request leaves them behind)."""
        if not self.staging.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for path in self.staging.glob("*.partial"):
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        return removed
