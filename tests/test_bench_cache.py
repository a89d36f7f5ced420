"""bench's cache key: the code version (a content hash of the sources) and the job fingerprint."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import cache


def tree(root: Path) -> Path:
    for name, text in {
        "autoprune/__init__.py": "",
        "autoprune/pipeline.py": "x = 1\n",
        "solvers/uniform.py": "y = 2\n",
        "autoprune/data/README.md": "not python\n",
        "api/app.py": "not hashed\n",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_source_files_without_git(tmp_path: Path) -> None:
    root = tree(tmp_path)
    (root / "autoprune" / "__pycache__").mkdir()
    (root / "autoprune" / "__pycache__" / "stale.py").write_text("")
    assert cache.source_files(root) == ["autoprune/__init__.py", "autoprune/pipeline.py", "solvers/uniform.py"]


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_source_files_are_the_tracked_ones(tmp_path: Path) -> None:
    root = tree(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "autoprune", "solvers"], cwd=root, check=True)
    (root / "autoprune" / "scratch.py").write_text("untracked\n")
    assert cache.source_files(root) == ["autoprune/__init__.py", "autoprune/pipeline.py", "solvers/uniform.py"]


def test_source_hash_follows_content_not_mtimes(tmp_path: Path) -> None:
    root = tree(tmp_path)
    files = cache.source_files(root)
    first = cache.source_hash(root, files)
    assert len(first) == 64 and int(first, 16) >= 0
    os.utime(root / "autoprune" / "pipeline.py", (1, 1))  # a fresh clone's mtimes differ
    assert cache.source_hash(root, files) == first
    (root / "autoprune" / "pipeline.py").write_bytes(b"x = 1\r\n")  # a CRLF checkout of the same file
    assert cache.source_hash(root, files) == first
    (root / "autoprune" / "pipeline.py").write_text("x = 2\n")
    assert cache.source_hash(root, files) != first
    (root / "autoprune" / "pipeline.py").write_text("x = 1\n")
    assert cache.source_hash(root, files) == first
    (root / "solvers" / "uniform.py").rename(root / "solvers" / "other.py")  # same bytes, another module
    assert cache.source_hash(root, cache.source_files(root)) != first


def test_code_version_is_this_checkouts_hash_once_per_process() -> None:
    version = cache.code_version()
    assert version == cache.source_hash(cache.REPO, cache.source_files(cache.REPO))
    assert cache.code_version() is version
    assert any(name.startswith("autoprune/") for name in cache.source_files())
    assert any(name.startswith("solvers/") for name in cache.source_files())


def test_run_reused_only_for_the_same_job_and_code_version(tmp_path: Path) -> None:
    run = tmp_path / "resnet20-uniform-l1-flops=0.5-e1-s0"
    run.mkdir()
    job = {"arch": "resnet20", "method": "uniform", "budget": {"flops": 0.5}, "seed": 0, "baseline": {"sha256": "1"}}
    cache.write_marker(run, job=job, version="v1", wall_seconds=3.0)
    assert not cache.is_cached(run, job, "v1")  # no report yet
    (run / "report.json").write_text("{}")
    assert cache.is_cached(run, job, "v1")
    assert cache.is_cached(run, dict(reversed(list(job.items()))), "v1")  # key order does not matter
    assert not cache.is_cached(run, job, "v2")
    assert not cache.is_cached(run, {**job, "seed": 1}, "v1")
    assert not cache.is_cached(run, {**job, "baseline": {"sha256": "2"}}, "v1")  # a retrained baseline
    marker = cache.read_marker(run)
    assert marker is not None
    assert marker["code_version"] == "v1" and marker["fingerprint"] == cache.fingerprint(job)
    assert marker["job"] == job and marker["wall_seconds"] == 3.0
    (run / cache.MARKER).unlink()
    assert not cache.is_cached(run, job, "v1")  # the layout before code versions is not read


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"abc")
    assert cache.file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    path.write_bytes(b"abcd")
    assert cache.file_sha256(path) != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_resolve_version(tmp_path: Path) -> None:
    full = "0123456789abcdef" + "0" * 48
    run = tmp_path / full[: cache.VERSION_DIGITS] / "resnet20-x-s0"
    run.mkdir(parents=True)
    (tmp_path / full[: cache.VERSION_DIGITS] / "resnet20-baseline").mkdir()
    cache.write_marker(run, job={"a": 1}, version=full)
    assert cache.resolve_version(tmp_path, "0123456") == full
    with pytest.raises(SystemExit):
        cache.resolve_version(tmp_path, "fedcba9")
    with pytest.raises(SystemExit):
        cache.resolve_version(tmp_path, "01")
