"""The dashboard: a few static files (HTML, one vanilla JS file, CSS) served at ``/`` and ``/ui/...``.

No build step and nothing loaded from elsewhere; the pages call the JSON API with ``fetch()``
and the bearer token the user pasted. See :mod:`api.web.pages` for the routes and headers.
"""

from api.web.pages import router

__all__ = ["router"]
