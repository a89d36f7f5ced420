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

from autoprune.errors import AutopruneError
from autoprune.spec import JobOptions
from autoprune.spec_cli import add_options_flags, given_options


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

    submit = sub.add_parser(
        "submit", help="submit a job over HTTP, optionally wait and download the artifacts",
        description="Submit a job to the service. The job's flags are those of `autoprune prune`; "
        "one left out takes the service's default.",
    )  # fmt: skip
    submit.add_argument("--url", default=os.environ.get("AUTOPRUNE_URL", "http://127.0.0.1:8000"), help="API base URL")
    submit.add_argument("--token", default=os.environ.get("AUTOPRUNE_TOKEN"), help="bearer token (or AUTOPRUNE_TOKEN)")
    submit.add_argument("--weights", help="weights file to upload (.safetensors, .pt, .pth)")
    submit.add_argument("--onnx", help="an .onnx classifier to prune, instead of --arch")
    submit.add_argument("--dataset", default="digits", help="built-in dataset (default digits)")
    submit.add_argument("--data", help="dataset archive to upload instead (.zip/.tar/.tar.gz)")
    submit.add_argument("--search-workers", type=int, help="evolution: worker slots that share the search (default 1)")
    submit.add_argument("--wait", action="store_true", help="poll until the job finishes, showing progress")
    submit.add_argument("--download", metavar="DIR", help="with --wait: download every artifact into DIR")
    add_options_flags(submit, http_only=True)
    submit.set_defaults(func=cmd_submit, arch="resnet20", budget="flops=0.5")


def _logging() -> None:
    # force: autoprune.cli.main has configured the root logger already (WARNING)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app
    from api.settings import Settings

    _logging()
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings(**overrides)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=10
    )
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
    try:
        fields = form_fields_of(given_options(args, JobOptions))  # the files go as files
    except AutopruneError as exc:
        raise SystemExit(f"error ({exc.code}): {exc}") from None
    if args.onnx:
        fields.pop("arch", None)
    if not args.data:
        fields["dataset"] = args.dataset
    if args.search_workers is not None:
        fields["search_workers"] = str(args.search_workers)
    files = {k: v for k, v in (("weights", args.weights), ("data", args.data), ("onnx", args.onnx)) if v}
    try:
        return _submit(Client(args.url, args.token), fields, files, args)
    except (ApiClientError, httpx.HTTPError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None


def form_fields_of(given: dict[str, Any]) -> dict[str, str]:
    """The form's text fields for the options given on the command line."""
    fields: dict[str, str] = {}
    options = given.pop("options", {})
    for name, value in {**given, **options}.items():
        if name == "budget":
            fields[name] = json.dumps(value.to_dict())
        elif isinstance(value, dict):
            fields[name] = json.dumps(value)
        elif isinstance(value, list):
            fields[name] = ",".join(value) or "none"
        elif isinstance(value, bool):
            fields[name] = "true" if value else "false"
        else:
            fields[name] = str(value)
    return fields


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
