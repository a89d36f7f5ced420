"""The image's HEALTHCHECK: one image runs the API and the workers, so the check asks what runs.

- `autoprune serve`: GET /healthz on the port it serves (200 when its database answers).
- `autoprune worker`: the database answers `SELECT 1` (a worker without it can claim nothing).
- anything else (a one-off `autoprune token create`, a shell): healthy.

Exit 0 healthy, 1 unhealthy. Standard library plus what the image already has; no torch import.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def _command() -> list[str]:
    """The container's command line (PID 1's, or the command under docker-init / tini)."""
    with open("/proc/1/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def main() -> int:
    argv = _command()
    if "serve" in argv:
        port = _option(argv, "--port") or os.environ.get("AUTOPRUNE_PORT") or "8000"
        host = _option(argv, "--host") or os.environ.get("AUTOPRUNE_HOST") or "127.0.0.1"
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as response:
                return 0 if response.status == 200 else 1
        except OSError as exc:
            print(f"unhealthy: {exc}", file=sys.stderr)
            return 1
    if "worker" in argv:
        from sqlalchemy import create_engine, text

        from api.settings import Settings

        engine = create_engine(Settings().db_url, pool_pre_ping=False)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy"
            print(f"unhealthy: database: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        finally:
            engine.dispose()
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
