"""create_app(settings): routers, the one error handler, a response counter, and the lifespan
that opens the database (migrating it), the artifact dir and the validator subprocess."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from api import errors, web
from api.metrics import RequestCounter
from api.routes import router
from api.settings import Settings, get_settings
from api.state import AppState


class CountResponses:
    """Pure ASGI middleware (no body buffering) counting responses for /metrics."""

    def __init__(self, app: Any, counter: RequestCounter) -> None:
        self.app, self.counter = app, counter

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.counter.observe(scope["method"], message["status"])
            await send(message)

        await self.app(scope, receive, counted)


def _operation_id(route: APIRoute) -> str:
    return route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    responses = RequestCounter()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = AppState.open(settings, responses)
        app.state.autoprune = state
        try:
            yield
        finally:
            state.close()

    docs = settings.docs_enabled  # off in production unless AUTOPRUNE_DOCS=true
    app = FastAPI(
        title="autoprune", version="0.1.0", lifespan=lifespan, generate_unique_id_function=_operation_id,
        description="Structured channel pruning as a job service. Every route but /healthz takes a bearer token.",
        docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )  # fmt: skip
    errors.install(app, settings.data_dir)
    app.include_router(router)
    app.include_router(web.router)  # the dashboard's pages at / and /ui/...
    app.add_middleware(CountResponses, counter=responses)
    return app
