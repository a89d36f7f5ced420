"""`autoprune serve | worker | token create | submit`: the job service's command line.

Only argparse is imported at module level, so ``autoprune --help`` stays fast and works
without the service's dependencies; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

from autoprune.types import DEFAULT_METHOD


def add_commands(sub: Any) -> None:
    """Register the service's subcommands on autoprune's subparsers."""
    serve = sub.add_parser("serve", help="run the HTTP API (uvicorn); settings from AUTOPRUNE_* variables")
    serve.add_argument("--host", help="bind address (default AUTOPRUNE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default AUTOPRUNE_PORT or 8000)")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run a job worker (claims jobs, runs each in a child process)")
    worker.add_argument("--concurrency", type=int, default=1, help="jobs run at once (default 1)")
    worker.set_defaults(func=cmd_worker)

    token = sub.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a token; prints it as the last word (only its hash is kept)")
    create.add_argument("--owner", required=True, help="owner name; jobs are visible to their owner only")
    create.set_defaults(func=cmd_token_create)

    submit = sub.add_parser("submit", help="submit a job over HTTP, optionally wait and download the artifacts")
    submit.add_argument("--url", default=os.environ.get("AUTOPRUNE_URL", "http://127.0.0.1:8000"), help="API base URL")
    submit.add_argument("--token", default=os.environ.get("AUTOPRUNE_TOKEN"), help="bearer token (or AUTOPRUNE_TOKEN)")
    submit.add_argument("--arch", default="resnet20", help="architecture (default resnet20)")
    submit.add_argument("--weights", help="weights file to upload (.safetensors, .pt, .pth)")
    submit.add_argument("--dataset", default="digits", help="built-in dataset (default digits)")
    submit.add_argument("--data", help="dataset archive to upload instead (.zip/.tar/.tar.gz)")
    submit.add_argument("--budget", default='{"flops": 0.5}', help='budget JSON (default {"flops": 0.5})')
    submit.add_argument(
        "--method", default=DEFAULT_METHOD, help=f"allocator (default {DEFAULT_METHOD}: global, or halp for a latency budget)"
    )
    submit.add_argument("--criterion", help="channel importance (default: the method's)")
    submit.add_argument("--finetune", default="{}", help='fine-tune JSON, e.g. {"epochs": 2}')
    submit.add_argument("--search-workers", type=int, default=1,
                        help="evolution: worker slots that share the search (default 1)")  # fmt: skip
    submit.add_argument("--search-trials", type=int, help="evolution: candidates the search evaluates (default 60)")
    submit.add_argument("--channel-step", type=int, default=1, help="kept widths in multiples of this, e.g. 8 (default 1)")
    submit.add_argument("--exports", default="onnx,pt2", help="formats besides safetensors: onnx, pt2, both (default) or none")
    submit.add_argument("--wait", action="store_true", help="poll until the job finishes, showing progress")
    submit.add_argument("--download", metavar="DIR", help="with --wait: download every artifact into DIR")
    submit.set_defaults(func=cmd_submit)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app
    from api.settings import Settings

    _logging()
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings(**overrides)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=10)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from api.artifacts import ArtifactStore
    from api.db import make_engine, migrate
    from api.jobs import SqlJobStore
    from api.settings import Settings
    from api.worker import Worker

    _logging()
    if args.concurrency < 1:
        raise SystemExit("error: --concurrency must be at least 1")
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    migrate(engine)
    Worker(settings, SqlJobStore(engine), ArtifactStore(settings.data_dir), concurrency=args.concurrency).run()
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    from api.db import make_engine, migrate
    from api.security import TokenStore
    from api.settings import Settings

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    migrate(engine)
    try:
        token = TokenStore(engine).create(args.owner)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"token for {args.owner} (shown once; only its hash is stored): {token}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import httpx

    from api.client import ApiClientError, Client

    if not args.token:
        raise SystemExit("error: give --token or set AUTOPRUNE_TOKEN (autoprune token create --owner NAME)")
    fields = {"arch": args.arch, "budget": args.budget, "method": args.method, "finetune": args.finetune,
              "search_workers": str(args.search_workers), "channel_step": str(args.channel_step),
              "exports": args.exports}  # fmt: skip
    if args.criterion:
        fields["criterion"] = args.criterion
    if args.search_trials is not None:
        fields["search_trials"] = str(args.search_trials)
    if not args.data:
        fields["dataset"] = args.dataset
    files = {k: v for k, v in (("weights", args.weights), ("data", args.data)) if v}
    try:
        return _submit(Client(args.url, args.token), fields, files, args)
    except (ApiClientError, httpx.HTTPError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None


def _submit(client: Any, fields: dict[str, str], files: dict[str, str], args: argparse.Namespace) -> int:
    with client:
        job = client.submit(fields, files)
        print(f"submitted job {job['id']} ({job['status']})")
        if not args.wait:
            return 0
        job = client.follow(job["id"])
        if job["status"] != "succeeded":
            return 1
        if args.download:
            for name in client.download_all(job["id"], args.download):
                print(f"downloaded {name}")
        print(json.dumps({k: job["result"][k] for k in SUMMARY_KEYS if k in job["result"]}, indent=2))
    return 0


SUMMARY_KEYS = ("arch", "method", "criterion", "budget", "flops_ratio", "params_ratio", "accuracy_before", "accuracy_after",
                "latency_ms_before", "latency_ms_after", "timings")  # fmt: skip


