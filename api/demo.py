"""The service flow in one command: start an API and a worker, submit over HTTP, follow, download.

    python -m api.demo [--dir demo-service] [--train-epochs 4] [--finetune-epochs 2]

Trains a ResNet-20 baseline on digits locally (so the upload is a real trained model), starts
`autoprune serve` and `autoprune worker` on loopback with a SQLite store in ``--dir``, creates a
token, POSTs the job with the weights, polls GET /jobs/{id} with progress, downloads and
checks every artifact, prints the report, and stops both processes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from api.client import Client
from autoprune.spec import DEFAULT_METHOD


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="demo-service", help="data dir (SQLite, uploads, artifacts)")
    parser.add_argument("--train-epochs", type=int, default=12, help="baseline epochs trained before submitting")
    parser.add_argument("--finetune-epochs", type=int, default=4, help="fine-tune epochs of the job")
    args = parser.parse_args(argv)
    root = Path(args.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {
        **os.environ,
        "AUTOPRUNE_DATA_DIR": str(root / "data"),
        "AUTOPRUNE_PORT": str(port),
        "AUTOPRUNE_DATABASE_URL": "",
    }

    weights = root / "baseline.safetensors"
    if not weights.exists():
        from autoprune.pipeline import train_baseline

        print(f"1/4 training a ResNet-20 baseline on digits ({args.train_epochs} epochs)")
        result = train_baseline("resnet20", "digits", weights, epochs=args.train_epochs)
        print(f"    top-1 {100 * result['accuracy']:.1f}%")
    token = subprocess.run(
        [sys.executable, "-m", "autoprune.cli", "token", "create", "--owner", "demo"], env=env,
        check=True, capture_output=True, text=True,
    ).stdout.split()[-1]  # fmt: skip
    print(f"2/4 starting the API on http://127.0.0.1:{port} and one worker (logs in {root})")
    procs = [
        subprocess.Popen([sys.executable, "-m", "autoprune.cli", cmd], env=env, start_new_session=True,
                         stdout=open(root / f"{cmd}.log", "wb"), stderr=subprocess.STDOUT)
        for cmd in ("serve", "worker")
    ]  # fmt: skip
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/healthz")
        with Client(f"http://127.0.0.1:{port}", token) as client:
            # channel_step 8: widths onnxruntime's fast kernels take, so the pruned model is faster there too
            fields = {"arch": "resnet20", "dataset": "digits", "budget": '{"flops": 0.5}', "method": DEFAULT_METHOD,
                      "finetune": json.dumps({"epochs": args.finetune_epochs}), "channel_step": "8"}  # fmt: skip
            job = client.submit(fields, {"weights": str(weights)})
            print(f"3/4 submitted job {job['id']}; polling GET /jobs/{job['id']}")
            job = client.follow(job["id"])
            if job["status"] != "succeeded":
                return 1
            out = root / "artifacts"
            names = client.download_all(job["id"], out)
            print(f"4/4 downloaded {', '.join(names)} into {out} (SHA-256 checked)")
        from autoprune.cli import print_summary
        from autoprune.report.schema import Report

        print_summary(Report.model_validate(job["result"]), str(out))
        return 0
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(30)


def _wait_healthy(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the API did not come up at {url}")


if __name__ == "__main__":
    raise SystemExit(main())
