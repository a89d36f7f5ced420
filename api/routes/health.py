"""GET /healthz: the only route without a token."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.deps import StateDep
from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(state: StateDep) -> Health | JSONResponse:
    """200 when the database answers."""
    try:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return JSONResponse(Health(status="unhealthy", database="unreachable").model_dump(), status_code=503)
    return Health(status="ok", database=state.engine.dialect.name)
