"""How much one evolution search gains from being spread over worker slots (issue #4), on loopback.

The same job, an evolution search of ``--trials`` candidates on a digits ResNet-20 (no fine-tuning,
so the search dominates), run through the real service (`autoprune serve` + `autoprune worker` as
subprocesses, SQLite, the harness of tests/api) in two set-ups on the same cores:

- ``1 slot``: one worker, ``--concurrency 1``, the job child with all the cores as torch threads;
- ``2 slots``: one worker, ``--concurrency 2`` (one thread per child), ``search_workers=2``: the
  job's child leads the search and a helper child adds trials to the same Optuna study.

Runs alternate between the set-ups (``--repeats`` each). Each job uploads its own weights file,
so every job has a study of its own. Writes --out/<--name>.{json,md} (default search_spread).

    .venv/bin/python -m bench.search_spread [--trials 40] [--repeats 2] [--name N --note "what else ran"]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from autoprune.models import create_model
from bench.harness import Service, stop_process, submit
from bench.load_api import machine

HERE = Path(__file__).resolve().parent

SETUPS = {"1 slot": {"concurrency": 1, "search_workers": 1}, "2 slots": {"concurrency": 2, "search_workers": 2}}


def one_job(svc: Service, client: Any, weights: Path, setup: dict[str, int], trials: int) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    worker = svc.start_worker(setup["concurrency"], AUTOPRUNE_CHILD_THREADS=str(max(1, cores // setup["concurrency"])))
    try:
        with open(weights, "rb") as f:
            response = submit(
                client, {"weights": ("w.safetensors", f)}, method="evolution", finetune='{"epochs": 0}',
                search_trials=str(trials), search_workers=str(setup["search_workers"]),
            )  # fmt: skip
        if response.status_code != 201:
            raise RuntimeError(f"refused: {response.status_code} {response.text}")
        job = svc.wait_status(response.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=1800)
    finally:
        stop_process(worker)
    if job.status.value != "succeeded":
        raise RuntimeError(f"the job ended {job.status.value}: {job.error}; logs in {svc.root}")
    search = job.result["allocation"][0]
    return {
        "job_s": job.finished_at - job.started_at,
        "search_s": job.result["timings"]["allocation"],
        "trials_by": search["trials_by"],
        "best_score": search["best_score"],
        "load_average": os.getloadavg()[0],
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# One evolution search over worker slots",
        "",
        f"{result['date']}, {m['cpu']}, {m['cores']} cores, load average at start {m['load_average_at_start'][0]:.2f}. "
        f"Digits ResNet-20 (random-init weights, uploaded), flops=0.5, evolution with {result['trials']} trials, "
        "no fine-tuning; the service on loopback with SQLite. Median of "
        f"{result['repeats']} runs per set-up, alternating.",
        *([f"Conditions: {result['note']}"] if result.get("note") else []),
        "",
        "| set-up | search s (median) | job s (median) | trials by process (last run) | runs: search s |",
        "|---|---|---|---|---|",
    ]
    for name, runs in result["runs"].items():
        search = statistics.median(r["search_s"] for r in runs)
        job = statistics.median(r["job_s"] for r in runs)
        each = ", ".join(f"{r['search_s']:.1f}" for r in runs)
        lines.append(f"| {name} | {search:.1f} | {job:.1f} | {runs[-1]['trials_by']} | {each} |")
    one, two = (statistics.median(r["search_s"] for r in result["runs"][k]) for k in SETUPS)
    lines += ["", f"Search speedup, 2 slots over 1: **{one / two:.2f}×** (medians, same cores).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.search_spread", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--name", default="search_spread", help="file name of the results (json, md)")
    parser.add_argument("--note", default="", help="what else ran on the machine, printed with the table")
    args = parser.parse_args(argv)
    date, host = datetime.now(timezone.utc).isoformat(timespec="seconds"), machine()
    svc = Service(Path(tempfile.mkdtemp(prefix="autoprune-spread-")))
    try:
        svc.start_api()
        client = svc.client(svc.token("bench"))
        torch.manual_seed(0)
        weights = svc.root / "resnet20.safetensors"
        save_file(
            {k: v.contiguous() for k, v in create_model("resnet20", num_classes=10).state_dict().items()}, str(weights)
        )
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SETUPS}
        for i in range(args.repeats):
            for name, setup in SETUPS.items():
                start = time.perf_counter()
                runs[name].append(one_job(svc, client, weights, setup, args.trials))
                print(f"run {i + 1} {name}: search {runs[name][-1]['search_s']:.1f} s "
                      f"({time.perf_counter() - start:.0f} s wall) {runs[name][-1]['trials_by']}", flush=True)  # fmt: skip
        result = {"date": date, "machine": host, "trials": args.trials, "repeats": args.repeats, "runs": runs,
                  "note": args.note, "load_average_at_end": os.getloadavg()}  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / f"{args.name}.md").write_text(markdown(result))
        print(markdown(result))
        return 0
    finally:
        svc.close()
        shutil.rmtree(svc.root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
