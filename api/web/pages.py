"""Routes for the dashboard's files, with a strict Content-Security-Policy on each.

The files hold no data, so these routes take no token; everything a page shows comes from the
JSON API, called by ``static/app.js`` with the token from sessionStorage. One HTML document
serves every page (``/``, ``/ui/login``, ``/ui/jobs/{id}``); the script picks the view from the
path. The headers are set here rather than by a middleware so that they stay scoped to these
routes: the JSON API and its downloads are unchanged. The routes are left out of the OpenAPI
schema (they are not part of the API contract).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from api.errors import ApiError

STATIC = Path(__file__).parent / "static"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}

# Scripts and styles only from our own files (no inline code, so injected markup cannot run);
# images also from blob: (artifacts fetched with the token) and data:; fetch() only to us; forms
# are sent by the script, never natively; no framing by other sites. report.html opens in a tab
# from a blob: URL and inherits this policy, so nothing in it runs; app.js turns its <style>
# blocks into blob: stylesheets (only our own script can mint blob: URLs of this origin).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' blob:; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
@router.get("/ui/login")
def page() -> FileResponse:
    """The one HTML document; the script shows the login, job list or job view."""
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/ui/jobs/{job_id}")
def job_page(job_id: Annotated[str, PathParam(max_length=64)]) -> FileResponse:
    """The same document: the script reads the id from the path and asks the API for the job."""
    return page()


@router.get("/ui/static/{name}")
def asset(name: Annotated[str, PathParam(max_length=32)]) -> FileResponse:
    """app.js and app.css, by an allow-list of names (no path from the request reaches the disk)."""
    if name not in ASSETS:
        raise ApiError(404, "not_found", f"no dashboard file {name!r}")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=HEADERS)
