"""Routers, one per resource; each route validates, calls the service, returns."""

from fastapi import APIRouter

from api.routes import artifacts, health, jobs, metrics

router = APIRouter()
for _module in (jobs, artifacts, health, metrics):
    router.include_router(_module.router)
