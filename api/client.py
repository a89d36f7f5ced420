"""A small synchronous HTTP client of the job API (used by `autoprune submit` and the demo)."""

from __future__ import annotations

import hashlib
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx


class ApiClientError(RuntimeError):
    """The API answered with an error body."""


class ProgressLine:
    """Prints a polled job's status: one rewritten line on a terminal; in a log, a line per
    stage and per 10 points of progress (not one per poll)."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.shown: tuple[str, int] | None = None

    def __call__(self, job: dict[str, Any]) -> None:
        eta = job.get("eta_seconds")
        tail = f", about {eta:.0f} s left" if isinstance(eta, (int, float)) else ""
        line = f"{job['status']:<9} {str(job.get('stage') or ''):<11} {100 * float(job['progress']):5.1f}%{tail}"
        if self.tty:
            print(f"\r    {line}      ", end="", flush=True)
            return
        key = (f"{job['status']} {job.get('stage')}", int(10 * float(job["progress"])))
        if key != self.shown:
            self.shown = key
            print(f"    {line}", flush=True)

    def close(self) -> None:
        if self.tty:
            print()


class Client:
    def __init__(
        self, url: str, token: str, timeout: float = 300.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def _check(self, response: httpx.Response) -> Any:
        if response.is_error:
            try:
                body = response.json()
                message = f"{body['error']}: {body['detail']}"
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            raise ApiClientError(f"HTTP {response.status_code}: {message}")
        return response.json()

    def submit(self, fields: dict[str, str], files: dict[str, str], attempts: int = 3) -> dict[str, Any]:
        """Always multipart (text fields as parts without a filename), even with no file.

        Sent with a fresh Idempotency-Key, so a POST whose answer was lost (connection dropped,
        timeout) or that met a busy database (503) is sent again without queueing a second job.
        """
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        attempt = 1
        while True:
            handles = {name: (Path(path).name, open(path, "rb")) for name, path in files.items()}
            parts: list[tuple[str, Any]] = [(k, (None, v)) for k, v in fields.items()] + list(handles.items())
            try:
                response: httpx.Response | None = self.http.post("/jobs", files=parts, headers=headers)
            except httpx.TransportError:
                if attempt == attempts:
                    raise
                response = None
            finally:
                for _, f in handles.values():
                    f.close()
            if response is not None and (response.status_code != 503 or attempt == attempts):
                return self._check(response)  # type: ignore[no-any-return]
            retry_after = None if response is None else response.headers.get("Retry-After", "")
            time.sleep(float(retry_after) if retry_after and retry_after.isdigit() else attempt)
            attempt += 1

    def job(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/jobs/{job_id}"))  # type: ignore[no-any-return]

    def wait(
        self, job_id: str, on_update: Callable[[dict[str, Any]], None] | None = None, poll_s: float = 1.0
    ) -> dict[str, Any]:
        while True:
            job = self.job(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(poll_s)

    def follow(self, job_id: str) -> dict[str, Any]:
        """Wait for the job, printing its progress; a job that did not succeed is told on stderr."""
        progress = ProgressLine()
        job = self.wait(job_id, on_update=progress)
        progress.close()
        if job["status"] != "succeeded":
            print(f"job {job_id} {job['status']}: {job['error']}: {job['error_detail']}", file=sys.stderr)
        return job

    def download_all(self, job_id: str, directory: str | Path) -> list[str]:
        """Download every artifact, checking each file's SHA-256 against the listing."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        names = []
        for artifact in self._check(self.http.get(f"/jobs/{job_id}/artifacts"))["data"]:
            digest = hashlib.sha256()
            with self.http.stream("GET", f"/jobs/{job_id}/artifacts/{artifact['name']}") as response:
                if response.is_error:
                    response.read()
                    self._check(response)
                with open(out / Path(artifact["name"]).name, "wb") as f:
                    for chunk in response.iter_bytes():
                        digest.update(chunk)
                        f.write(chunk)
            if digest.hexdigest() != artifact["sha256"]:
                raise ApiClientError(f"{artifact['name']}: SHA-256 mismatch after download")
            names.append(artifact["name"])
        return names
