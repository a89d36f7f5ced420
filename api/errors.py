"""The error contract: every failure leaves as ``{"error": code, "detail": text}``.

One place maps exceptions to status codes: our ApiError, the AutopruneError tree (validation
failures are the caller's mistakes: 422), request validation, HTTP errors, a locked or
unreachable database (503 + Retry-After) and, last, anything else (500, logged, no details).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from autoprune.errors import AutopruneError

log = logging.getLogger(__name__)

HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


class ApiError(Exception):
    """An error with its HTTP status and public code."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def _body(status: int, code: str, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
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

    @app.exception_handler(Exception)
    async def _other(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _body(500, "internal", "internal error")
