"""The error contract: every failure leaves as ``{"error": code, "detail": text}``.

One place maps exceptions to status codes: our ApiError, the AutopruneError tree (validation
failures are the caller's mistakes: 422), request validation, HTTP errors, a locked or
unreachable database (503 + Retry-After), a full disk (507 storage_full + Retry-After) and,
last, anything else (500, logged, no details). Details never carry the server's own paths.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from autoprune.errors import AutopruneError

log = logging.getLogger(__name__)

HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_PATH_TAIL = r"(?:/[^\s'\":,;()\[\]{}<>]*)*"


class PathScrubber:
    """Replaces absolute paths under the server's own directories (its data dir, working dir,
    temp dir, Python install, home) with their last component: error details name a file
    (``data.zip``), never where the server keeps it."""

    def __init__(self, roots: Iterable[str | os.PathLike[str]] = ()) -> None:
        self.set_roots(roots)

    def set_roots(self, roots: Iterable[str | os.PathLike[str]]) -> None:
        given = [Path(r) for r in roots]
        defaults = [Path.cwd(), Path(tempfile.gettempdir()), Path(sys.prefix), Path(sys.base_prefix), Path.home()]
        spelled = {str(p) for p in given} | {str(p.resolve()) for p in [*given, *defaults]}
        found = {r.rstrip("/") for r in spelled if len(r.rstrip("/")) > 1}
        alternatives = "|".join(re.escape(r) for r in sorted(found, key=len, reverse=True))
        self._pattern = re.compile(f"(?:{alternatives}){_PATH_TAIL}")

    def __call__(self, text: str) -> str:
        return self._pattern.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or ".", text)


scrub_paths = PathScrubber()


def storage_full() -> ApiError:
    return ApiError(507, "storage_full", "the server's disk is full; retry later", {"Retry-After": "60"})


class ApiError(Exception):
    """An error with its HTTP status and public code."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def _body(status: int, code: str, detail: object, headers: Mapping[str, str] | None = None) -> JSONResponse:
    if isinstance(detail, str):
        detail = scrub_paths(detail)
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def install(app: FastAPI, data_dir: Path | None = None) -> None:
    if data_dir is not None:
        scrub_paths.set_roots([data_dir])

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return _body(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(AutopruneError)
    async def _autoprune(_: Request, exc: AutopruneError) -> JSONResponse:
        return _body(422, exc.code, str(exc))  # raised while checking a submission: the caller's

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _body(422, "invalid_request", detail)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return _body(exc.status_code, HTTP_CODES.get(exc.status_code, "http_error"), exc.detail, exc.headers)

    @app.exception_handler(OperationalError)
    async def _db(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return _body(503, "database_unavailable", "the database is busy or unreachable; retry", {"Retry-After": "2"})

    @app.exception_handler(OSError)
    async def _os(_: Request, exc: OSError) -> JSONResponse:
        if exc.errno in DISK_FULL:  # not the caller's fault and not permanent
            log.error("disk full: %s", exc)
            full = storage_full()
            return _body(full.status, full.code, full.detail, full.headers)
        log.exception("unhandled OS error")
        return _body(500, "internal", "internal error")

    @app.exception_handler(Exception)
    async def _other(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _body(500, "internal", "internal error")
