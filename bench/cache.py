"""The run cache's key: the code version and the job's fingerprint.

A run directory is reused only when both match what the suite would run now, so a table never
mixes runs of different code:

- the **code version** is a sha256 over the tracked ``autoprune/**/*.py`` and ``solvers/**/*.py``
  files (sorted by path; each path and its content's sha256, CRLF read as LF), as they are in the
  working tree: the same on any fresh clone of a commit (no mtimes), and different as soon as a
  source file that can change a result does. Computed once per process. Without git (an
  exported tree) every ``*.py`` file under those folders is hashed, the same set on a clean tree.
- the **fingerprint** is a sha256 of the job's description (a JSON object: arch, method,
  criterion, budget, seed, fine-tune, data, the baseline's file name and content hash, ...), so a
  retrained baseline or another recipe is a different job.

Each finished run records both in its ``bench.json`` (with the description); the suite's results
json records the code version of every row.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("autoprune", "solvers")
MARKER = "bench.json"  # in each run directory, written after its report
VERSION_DIGITS = 16  # of the code version in directory names; the json files keep all 64


def source_files(root: Path = REPO) -> list[str]:
    """The source files that can change a result, as sorted POSIX paths relative to ``root``."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", *SOURCE_DIRS], cwd=root, capture_output=True, check=True
        ).stdout.decode()
        names = [name for name in listed.split("\0") if name.endswith(".py") and (root / name).is_file()]
    except (OSError, subprocess.CalledProcessError):  # no git, or not a checkout
        names = [
            path.relative_to(root).as_posix()
            for folder in SOURCE_DIRS
            for path in (root / folder).rglob("*.py")
            if "__pycache__" not in path.parts
        ]
    return sorted(names)


def source_hash(root: Path, files: list[str]) -> str:
    """sha256 over each file's path and content hash, in the given (sorted) order."""
    digest = hashlib.sha256()
    for name in files:
        content = (root / name).read_bytes().replace(b"\r\n", b"\n")
        digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return digest.hexdigest()


@functools.cache
def code_version() -> str:
    """This checkout's code version (64 hex digits), computed once per process."""
    return source_hash(REPO, source_files(REPO))


def short(version: str | None) -> str:
    return version[:12] if version else "not recorded"


def fingerprint(job: Mapping[str, Any]) -> str:
    """sha256 of the job's description as canonical JSON."""
    return hashlib.sha256(json.dumps(job, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


@functools.cache
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """A file's sha256, hashed once per process while its size and mtime stay the same."""
    stat = path.stat()
    return _file_sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)


def read_marker(directory: Path) -> dict[str, Any] | None:
    path = directory / MARKER
    return json.loads(path.read_text()) if path.exists() else None


def write_marker(directory: Path, *, job: Mapping[str, Any], version: str, **extra: Any) -> None:
    marker = {"fingerprint": fingerprint(job), "code_version": version, "job": dict(job), **extra}
    (directory / MARKER).write_text(json.dumps(marker, indent=2, default=str) + "\n")


def is_cached(directory: Path, job: Mapping[str, Any], version: str) -> bool:
    """A finished run (its report and marker exist) of this job, made by this code version."""
    marker = read_marker(directory)
    return (
        (directory / "report.json").exists()
        and marker is not None
        and marker.get("fingerprint") == fingerprint(job)
        and marker.get("code_version") == version
    )


def resolve_version(runs_root: Path, prefix: str) -> str:
    """The full code version of the cached runs under ``runs_root`` whose version starts with ``prefix``."""
    prefix = prefix.strip().lower()
    if len(prefix) < 6:
        raise SystemExit(f"--code-version: give at least 6 hex digits, not {prefix!r}")
    found = {
        marker["code_version"]
        for folder in (runs_root.glob(f"{prefix[:VERSION_DIGITS]}*") if runs_root.exists() else [])
        if folder.is_dir()
        for run in folder.iterdir()
        if (marker := read_marker(run)) and str(marker.get("code_version", "")).startswith(prefix)
    }
    if len(found) != 1:
        known = sorted(d.name for d in runs_root.iterdir() if d.is_dir()) if runs_root.exists() else []
        what = "no finished run" if not found else "several versions"
        cached = ", ".join(known) or "none"
        raise SystemExit(f"--code-version {prefix}: {what} under {runs_root} (cached versions: {cached})")
    return found.pop()
