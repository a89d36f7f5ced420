"""Load benchmark of the job service on loopback (issue #4): status polling with wrk, large submissions.

Starts a real deployment the way tests/api do (temp data dir, SQLite, `autoprune serve` and one
`autoprune worker` as subprocesses, a token from the token store), runs one tiny digits job to
completion so that GET /jobs/{id} returns the full report (the heavy, realistic poll), stops the
worker, then drives that GET with wrk: paced at --rate for --duration seconds, then as fast as
--connections allow; /healthz and GET /jobs briefly. Last, POSTs --submissions uploads of a valid
--upload-mb npz data archive and of a valid VGG-16-BN safetensors (57 MiB) and cancels each job.
Writes --out/load_api.{json,md} and stops everything it started, also on Ctrl-C.

    .venv/bin/python -m bench.load_api [--duration 60] [--connections 8] [--rate 200] [--upload-mb 50]

``--mode slow-validations`` (issue #20) measures the same paced status polling while the API is
busy: two submissions whose checks are slow (a zip of --slow-images flat 4096x4096 PNGs, each
under the pixel cap and ~0.3 s to decode) are kept in flight the whole time, resubmitted as they
are answered, and one long job runs on the worker. Writes --out/load_api_slow.{json,md}.

    .venv/bin/python -m bench.load_api --mode slow-validations [--duration 60] [--rate 200]

Needs wrk (Debian/Ubuntu: apt-get install -y wrk).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from api.settings import MiB, Settings
from bench.harness import Service, stop_process, submit

HERE = Path(__file__).resolve().parent

# The harness lowers these for its hostile-input tests; the benchmark starts from the product defaults.
API_LIMITS = ("MAX_UPLOAD_BYTES", "MAX_ARCHIVE_BYTES", "MAX_ARCHIVE_MEMBERS", "SUBMITS_PER_MINUTE",
              "REQUESTS_PER_MINUTE")  # fmt: skip
BENCH_REQUESTS_PER_MINUTE = 10_000_000
WRK_TIMEOUT_S = 5
IMAGE_BYTES = 32 * 32 * 3 + 8  # one uint8 32x32 RGB image and its int64 label

# wrk 4 has no open-loop mode (wrk2 is not packaged): with BENCH_RATE > 0, delay() hands out send
# slots from one schedule per wrk thread, so the offered rate is BENCH_RATE whatever the latency.
WRK_SCRIPT = r"""
local token = os.getenv("BENCH_TOKEN") or ""
if token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
if rate > 0 then
  local ffi = require("ffi")  -- LuaJIT: clock_gettime(CLOCK_MONOTONIC = 1)
  ffi.cdef[[ typedef struct { long sec; long nsec; } bench_ts; int clock_gettime(int, bench_ts *); ]]
  local ts = ffi.new("bench_ts")
  local function now_ms() ffi.C.clock_gettime(1, ts); return tonumber(ts.sec) * 1e3 + tonumber(ts.nsec) / 1e6 end
  local interval, slot = 1000 / rate, nil
  delay = function()
    local now = now_ms()
    slot = (slot or now) + interval
    return math.max(0, slot - interval - now)
  end
end
done = function(s, lat, req)
  local e = s.errors
  io.write(string.format('BENCH_JSON {"duration_us": %d, "requests": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "mean": %.1f, "max": %d, "stdev": %.1f, ' ..
    '"p50": %d, "p75": %d, "p90": %d, "p99": %d, "p99.9": %d}}\n',
    s.duration, s.requests, s.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    lat.min, lat.mean, lat.max, lat.stdev, lat:percentile(50), lat:percentile(75),
    lat:percentile(90), lat:percentile(99), lat:percentile(99.9)))
end
"""


def bench_env(upload_bytes: int) -> tuple[dict[str, str], list[str]]:
    """AUTOPRUNE_* overrides on top of the product defaults, and one line per limit saying why."""
    fields = Settings.model_fields
    env = {"AUTOPRUNE_REQUESTS_PER_MINUTE": str(BENCH_REQUESTS_PER_MINUTE)}
    notes = [
        f"AUTOPRUNE_REQUESTS_PER_MINUTE raised {fields['requests_per_minute'].default} -> {BENCH_REQUESTS_PER_MINUTE}: "
        "every poll uses one token, and the per-token bucket would otherwise answer 429 after the first burst"
    ]
    need = upload_bytes + MiB  # multipart framing and the text fields
    for name in ("max_upload_bytes", "max_archive_bytes"):
        default = fields[name].default
        if need > default:
            env[f"AUTOPRUNE_{name.upper()}"] = str(need)
            notes.append(f"AUTOPRUNE_{name.upper()} raised {default} -> {need}: the upload is {upload_bytes} bytes")
        else:
            notes.append(f"AUTOPRUNE_{name.upper()} kept at the default {default} (the upload fits)")
    notes.append("other API limits at their defaults; worker and job knobs from tests/api/service_harness.FAST_ENV "
                 "(tiny job, 1 thread for the job child and the validator)")  # fmt: skip
    return env, notes


def cpu_seconds(api_pid: int) -> tuple[float, float, float]:
    """CPU seconds so far of (the API process, our reaped children: wrk, the whole machine over all cores)."""
    ticks = os.sysconf("SC_CLK_TCK")
    stat = Path(f"/proc/{api_pid}/stat").read_text().rsplit(")", 1)[1].split()  # fields 14, 15: utime, stime
    machine = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]  # idle, iowait: 4th, 5th
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (
        (int(stat[11]) + int(stat[12])) / ticks,
        children.ru_utime + children.ru_stime,
        (sum(machine) - machine[3] - machine[4]) / ticks,
    )


def run_wrk(
    svc: Service, path: str, token: str, seconds: int, connections: int, rate: float, script: Path
) -> dict[str, Any]:
    """One wrk run (one thread); latency percentiles from wrk's own histogram via its done() hook."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={WRK_TIMEOUT_S}s", "--latency",
           "-s", str(script), svc.url + path]  # fmt: skip
    env = {**os.environ, "BENCH_TOKEN": token, "BENCH_RATE": str(rate)}
    api_pid, load_before = svc.procs[0].pid, os.getloadavg()[0]
    before = cpu_seconds(api_pid)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    api_cpu, wrk_cpu, all_cpu = (b - a for a, b in zip(before, cpu_seconds(api_pid)))
    line = next((x for x in out.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    duration = raw["duration_us"] / 1e6
    return {
        "path": path, "connections": connections, "offered_rate": rate or None, "seconds": seconds,
        "requests": raw["requests"], "requests_per_s": raw["requests"] / duration,
        "bytes_per_response": raw["bytes"] / max(raw["requests"], 1),
        "errors": raw["errors"], "error_count": sum(raw["errors"].values()),
        "latency_ms": {k: v / 1000 for k, v in raw["latency_us"].items()},
        "api_cpu_percent": 100 * api_cpu / duration, "wrk_cpu_percent": 100 * wrk_cpu / duration,
        "others_cpu_percent": 100 * max(all_cpu - api_cpu - wrk_cpu, 0.0) / duration,
        "load_average_1m": [load_before, os.getloadavg()[0]], "wrk_output": out,
    }  # fmt: skip


class TimedFile(io.FileIO):
    """A file that notes when it was read to the end: httpx has then handed the whole body to the socket."""

    eof_at: float | None = None

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        if not data and self.eof_at is None:
            self.eof_at = time.perf_counter()
        return data


def make_archive(path: Path, upload_bytes: int) -> Path:
    """A valid npz dataset archive (train.npz + test.npz of random 32x32 RGB images), stored uncompressed."""
    rng = np.random.default_rng(0)
    total = max(upload_bytes // IMAGE_BYTES, 12)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for split, count in (("train", total - total // 6), ("test", total // 6)):
            buffer = io.BytesIO()
            np.savez(buffer, x=rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), y=rng.integers(0, 10, count))
            archive.writestr(f"{split}.npz", buffer.getvalue())
    return path


def make_vgg_weights(path: Path) -> Path:
    """Freshly initialised VGG-16-BN weights for 10 classes: the largest built-in CIFAR architecture."""
    import torch
    from safetensors.torch import save_file

    from autoprune.models import create_model

    torch.manual_seed(0)
    model = create_model("cifar_vgg16_bn", num_classes=10, in_channels=3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def time_uploads(client: httpx.Client, field: str, path: Path, count: int, **fields: str | None) -> dict[str, Any]:
    """POST /jobs ``count`` times with ``path`` as ``field``; every accepted job is cancelled (DELETE) at once."""
    samples, errors = [], []
    for _ in range(count):
        with TimedFile(path) as handle:
            start = time.perf_counter()
            response = submit(client, files={field: (path.name, handle, "application/octet-stream")}, **fields)
            end = time.perf_counter()
            sent = handle.eof_at or end
        if response.status_code != 201:
            errors.append(f"POST {response.status_code}: {response.text[:300]}")
            continue
        samples.append({"total_s": end - start, "body_sent_s": sent - start, "after_body_s": end - sent})
        cancel = client.delete(f"/jobs/{response.json()['id']}")
        if cancel.status_code != 200:
            errors.append(f"DELETE {cancel.status_code}: {cancel.text[:300]}")
    size = path.stat().st_size
    keys = ("total_s", "body_sent_s", "after_body_s")
    median = {key: statistics.median(s[key] for s in samples) for key in keys} if samples else {}
    return {
        "field": field, "file": path.name, "bytes": size, "mib": size / MiB, "fields": fields, "submissions": count,
        "samples": samples, "median": median, "errors": errors,
        "mib_per_s_median": size / MiB / median["total_s"] if samples else None,
    }  # fmt: skip


def finished_job(svc: Service, client: httpx.Client) -> tuple[str, dict[str, Any]]:
    """Submit the harness's tiny digits job, let one worker finish it, stop the worker; (id, timings)."""
    start = time.perf_counter()
    response = submit(client)
    first_submit = time.perf_counter() - start
    if response.status_code != 201:
        raise RuntimeError(f"the job was refused: {response.status_code} {response.text}")
    job_id = response.json()["id"]
    worker = svc.start_worker()
    job = svc.wait_status(job_id, {"succeeded", "failed", "cancelled"}, timeout=900)
    stop_process(worker)
    if job.status.value != "succeeded":
        raise RuntimeError(f"the job ended {job.status.value}: {job.error_code}: {job.error}; logs in {svc.root}")
    body = client.get(f"/jobs/{job_id}")
    if body.status_code != 200 or not body.json().get("result"):
        raise RuntimeError(f"GET /jobs/{job_id} has no report: {body.status_code} {body.text[:300]}")
    wall = time.perf_counter() - start
    return job_id, {"first_submit_s": first_submit, "job_wall_s": wall, "status_bytes": len(body.content)}


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((x.split(":", 1)[1].strip() for x in cpuinfo if x.startswith("model name")), platform.processor())
    mem = next(x.split()[1] for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(int(mem) / 2**20, 1), "kernel": platform.release(),
            "load_average_at_start": os.getloadavg()}  # fmt: skip


def versions() -> dict[str, str]:
    names = ("autoprune", "fastapi", "starlette", "uvicorn", "sqlalchemy", "httpx", "torch")
    found = {name: metadata.version(name) for name in names}
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
    found |= {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    return {**found, "wrk": wrk[0] if wrk else "?"}


LABELS = {
    "status_paced": "`/jobs/{id}` (finished job)", "status_max": "`/jobs/{id}` (finished job)",
    "healthz": "`/healthz`", "list": "`/jobs` (list)",
    "archive": "npz data archive (`data`)", "weights": "VGG-16-BN safetensors (`weights`)",
}  # fmt: skip


def _ms(run: dict[str, Any], key: str) -> str:
    return f"{run['latency_ms'][key]:.2f}"


def markdown(result: dict[str, Any]) -> str:
    """The README-sized summary: one table for the GET runs, one for the uploads, then the caveats."""
    m, runs, rate = result["machine"], result["runs"], result["args"]["rate"]
    cores = m["cores"]
    lines = [
        f"Job service on loopback, {result['date'][:10]}: one uvicorn process (`autoprune serve`), SQLite,"
        f" wrk {result['versions']['wrk'].split()[1]} with one thread. Machine: {m['cpu']}, {cores} cores, shared by"
        " the API, wrk and other engineers' jobs running at the same time: 1-min load average"
        f" {m['load_average_at_start'][0]:.1f} at the start, {result['load_average_at_end'][0]:.1f} at the end"
        f" (*rest* below: CPU used by everything else, in % of one core; the machine has {100 * cores}%).",
        "",
        "| GET | load | requests/s | p50 ms | p90 ms | p99 ms | max ms | errors | requests | bytes/response"
        " | CPU API / wrk / rest |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        load = f"paced at {run['offered_rate']:g}/s" if run["offered_rate"] else "unpaced"
        cpu = " / ".join(f"{run[k]:.0f}%" for k in ("api_cpu_percent", "wrk_cpu_percent", "others_cpu_percent"))
        lines.append(
            f"| {LABELS[name]} | {load}, {run['connections']} conns, {run['seconds']} s"
            f" | {run['requests_per_s']:.0f} | "
            f"{_ms(run, 'p50')} | {_ms(run, 'p90')} | {_ms(run, 'p99')} | {_ms(run, 'max')} | {run['error_count']} | "
            f"{run['requests']} | {run['bytes_per_response']:.0f} | {cpu} |"
        )
    lines += [
        "",
        "| POST /jobs upload | size | n | 201 after (median s) | body sent (median s) | body sent → 201 (median s)"
        " | MiB/s (median) | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, up in result["uploads"].items():
        med = up["median"]
        cells = [f"{med[k]:.2f}" for k in ("total_s", "body_sent_s", "after_body_s")] if med else ["–"] * 3
        speed = f"{up['mib_per_s_median']:.0f}" if med else "–"
        lines.append(
            f"| {LABELS[name]} | {up['mib']:.1f} MiB | {len(up['samples'])} | {' | '.join(cells)} | {speed}"
            f" | {len(up['errors'])} |"
        )
    paced = runs["status_paced"]
    misses = [text for failed, text in [
        (paced["seconds"] < 60, f"it ran {paced['seconds']} s"), (rate < 200, f"it offered {rate:g} req/s"),
        (paced["error_count"] > 0, "it had errors"),
        (paced["requests"] < 0.99 * rate * paced["seconds"], "the API did not keep up with the offered rate"),
    ] if failed]  # fmt: skip
    verdict = "met by this run" if not misses else f"not met by this run ({', '.join(misses)})"
    lines += [
        "",
        "- Issue #4's target (status polling at ≥ 200 req/s for 60 s, 0 errors):"
        f" {verdict}. The paced run offered {rate:g} req/s for {paced['seconds']} s:"
        f" {paced['requests']} requests answered"
        f" ({paced['requests_per_s']:.1f}/s over wrk's wall time), {paced['error_count']} errors (4xx/5xx, socket"
        f" errors, timeouts > {WRK_TIMEOUT_S} s). Unpaced, the same GET ran at"
        f" {runs['status_max']['requests_per_s']:.0f} req/s: the API's ceiling in this run, with the CPU share it got;"
        " its latency is mostly queueing behind the other connections.",
        "- The polled job is finished (`succeeded`), so each response carries the whole report; the worker was stopped"
        " before the load, so only the API serves.",
        "- Pacing: wrk 4 has no open-loop mode, so a Lua `delay()` hands out send slots at the offered rate;"
        " latency is measured from each request's actual send (no coordinated-omission correction, unlike wrk2).",
        "- Uploads: a valid npz data archive (random 32×32 images, zip stored) with `arch=resnet20`, and"
        " random-init VGG-16-BN weights (`cifar_vgg16_bn`, safetensors) with `dataset=digits`. *201 after* is"
        " the whole request: streaming to disk with SHA-256, then the validator subprocess (extract + load the"
        " archive, or build the model + load the weights) and the insert. *Body sent* is when the client handed"
        " the last byte to the socket (the kernel buffers a few MiB, so it is approximate). Each job was cancelled"
        " (DELETE) right after its 201.",
        "- The run's first submission, with the validator importing torch, took"
        f" {result['job']['first_submit_s']:.2f} s.",
        "- Settings: " + "; ".join(result["settings_notes"]) + ".",
        "- On 2 cores shared with other work, tails (p99, max) move a lot from run to run with the others' load.",
    ]
    return "\n".join(lines) + "\n"


def measure(svc: Service, args: argparse.Namespace) -> dict[str, Any]:
    """On a started API: the finished job, the wrk runs against it, then the uploads."""
    token = svc.token("bench")
    with svc.client(token) as client:
        print(f"API on {svc.url}; running one tiny digits job with one worker (data dir {svc.root})")
        job_id, job = finished_job(svc, client)
        print(f"job {job_id} succeeded in {job['job_wall_s']:.1f} s; GET /jobs/{{id}} is {job['status_bytes']} bytes")
        script = svc.root / "bench.lua"
        script.write_text(WRK_SCRIPT)
        status = f"/jobs/{job_id}"
        plan = [("status_paced", status, args.duration, args.rate), ("status_max", status, args.duration, 0),
                ("healthz", "/healthz", args.brief, 0), ("list", "/jobs", args.brief, 0)]  # fmt: skip
        runs = {}
        for name, path, seconds, rate in plan:
            pace = f"{rate:g}/s" if rate else "unpaced"
            print(f"wrk {name}: GET {path}, {seconds} s, {args.connections} connections, {pace}")
            runs[name] = run = run_wrk(svc, path, token, seconds, args.connections, rate, script)
            print(f"    {run['requests_per_s']:.0f} req/s, p50 {_ms(run, 'p50')} ms, p99 {_ms(run, 'p99')} ms,"
                  f" errors {run['errors']}")  # fmt: skip
        print(f"uploads: {args.submissions} x a {args.upload_mb:g} MiB npz archive, then VGG-16-BN weights")
        archive = make_archive(svc.root / "bench-data.zip", int(args.upload_mb * MiB))
        weights = make_vgg_weights(svc.root / "vgg16_bn.safetensors")
        uploads = {
            "archive": time_uploads(client, "data", archive, args.submissions, dataset=None),
            "weights": time_uploads(client, "weights", weights, args.submissions, arch="cifar_vgg16_bn"),
        }
    for name, up in uploads.items():
        total = up["median"].get("total_s", float("nan"))
        print(f"    {name} {up['mib']:.1f} MiB: 201 after {total:.2f} s (median), errors {up['errors']}")
    return {"job": {"id": job_id, **job}, "runs": runs, "uploads": uploads}


def make_slow_archive(path: Path, images: int) -> Path:
    """An image-folder zip of ``images`` flat 4096x4096 PNGs (one encoding, many names): tiny to upload,
    each under the pixel cap, and ~0.3 s of the validator's CPU to decode."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4096, 4096), (90, 120, 150)).save(buffer, format="PNG")
    png = buffer.getvalue()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(images):
            split = "test" if i % 5 == 4 else "train"
            archive.writestr(f"{split}/c{i % 2}/img{i:04d}.png", png)
    return path


class SlowSubmitter:
    """Keeps one slow submission in flight (a thread), resubmitting as each is answered."""

    def __init__(self, svc: Service, token: str, archive: Path) -> None:
        self.svc, self.token, self.archive = svc, token, archive
        self.stop = False
        self.out_since: float | None = None  #: when the request now in flight was sent
        self.answers: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        with httpx.Client(base_url=self.svc.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=600) as c:
            while not self.stop:
                self.out_since = start = time.monotonic()
                with self.archive.open("rb") as handle:
                    response = submit(c, files={"data": (self.archive.name, handle)}, dataset=None)
                self.out_since = None
                body = (
                    response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
                )
                self.answers.append({"start": start, "end": time.monotonic(), "status": response.status_code,
                                     "error": body.get("error")})  # fmt: skip
                if response.status_code == 201:
                    c.delete(f"/jobs/{body['id']}")

    def in_flight_share(self, start: float, end: float) -> float:
        """The share of [start, end] during which this submitter had a request out."""
        spans = [(a["start"], a["end"]) for a in self.answers]
        if self.out_since is not None:
            spans.append((self.out_since, end))
        covered = sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)
        return covered / (end - start)


def _poll(svc: Service, token: str, job_id: str, args: argparse.Namespace, what: str) -> dict[str, Any]:
    script = svc.root / "bench.lua"
    script.write_text(WRK_SCRIPT)
    print(f"wrk: GET /jobs/{job_id}, {args.duration} s, {args.connections} connections, {args.rate:g}/s, {what}")
    run = run_wrk(svc, f"/jobs/{job_id}", token, args.duration, args.connections, args.rate, script)
    print(f"    {run['requests_per_s']:.0f} req/s, p50 {_ms(run, 'p50')} ms, p99 {_ms(run, 'p99')} ms, "
          f"errors {run['errors']}")  # fmt: skip
    return run


def measure_slow(svc: Service, args: argparse.Namespace) -> dict[str, Any]:
    """Paced status polling, first with the API alone, then while two slow validations and one job
    run (issue #20): the same machine at the same time, so the difference is what they cost."""
    token = svc.token("bench")
    with svc.client(token) as client:
        print(f"API on {svc.url}; one tiny digits job first, for the status to poll")
        job_id, job = finished_job(svc, client)
        quiet = _poll(svc, token, job_id, args, "the API alone")
        worker = svc.start_worker()
        long_job = submit(client, finetune='{"epochs": 500, "max_steps_per_epoch": 100}').json()["id"]
        svc.wait_status(long_job, {"running"}, timeout=300)
        archive = make_slow_archive(svc.root / "slow-images.zip", args.slow_images)
        slow = [SlowSubmitter(svc, svc.token(f"slow{i}"), archive) for i in range(2)]
        for submitter in slow:
            submitter.thread.start()
        time.sleep(5)  # both checks under way
        start = time.monotonic()
        busy = _poll(svc, token, job_id, args, f"while two {args.slow_images}-image checks and a job run")
        end = time.monotonic()
        shares = [s_.in_flight_share(start, end) for s_ in slow]
        running = client.get(f"/jobs/{long_job}").json()
        for submitter in slow:
            submitter.stop = True
        client.delete(f"/jobs/{long_job}")
        stop_process(worker)
        for submitter in slow:
            submitter.thread.join(300)
    answers = [a for s_ in slow for a in s_.answers]
    return {
        "job": {"id": job_id, **job}, "runs": {"quiet": quiet, "busy": busy}, "slow_images": args.slow_images,
        "archive_bytes": archive.stat().st_size, "validations_in_flight_share": shares,
        "validations": [{"seconds": a["end"] - a["start"], "status": a["status"], "error": a["error"]} for a in answers],
        "long_job": {"status": running.get("status"), "stage": running.get("stage"),
                     "progress": running.get("progress")},
    }  # fmt: skip


def markdown_slow(result: dict[str, Any]) -> str:
    m, rate = result["machine"], result["args"]["rate"]
    done = result["validations"]
    share = " and ".join(f"{100 * x:.0f}%" for x in result["validations_in_flight_share"])
    busy = result["runs"]["busy"]
    met = busy["latency_ms"]["p99"] < 50 and busy["error_count"] == 0
    lines = [
        f"Status polling under load, {result['date'][:10]} (issue #20): one uvicorn process, SQLite, wrk with one"
        f" thread; {m['cpu']}, {m['cores']} cores shared with other work (1-min load {m['load_average_at_start'][0]:.1f}"
        f" at the start, {result['load_average_at_end'][0]:.1f} at the end).",
        "",
        "| GET `/jobs/{id}`, paced | requests/s | p50 ms | p90 ms | p99 ms | max ms | errors | requests"
        " | CPU API / wrk / rest |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, label in (("quiet", "the API alone"), ("busy", "two slow checks + a job running")):
        run = result["runs"][name]
        cpu = " / ".join(f"{run[k]:.0f}%" for k in ("api_cpu_percent", "wrk_cpu_percent", "others_cpu_percent"))
        lines.append(
            f"| {label}: {rate:g}/s, {run['connections']} conns, {run['seconds']} s | {run['requests_per_s']:.0f} | "
            f"{_ms(run, 'p50')} | {_ms(run, 'p90')} | {_ms(run, 'p99')} | {_ms(run, 'max')} | {run['error_count']} | "
            f"{run['requests']} | {cpu} |"
        )
    answered = ", ".join(sorted({f"{v['status']} {v['error'] or ''}".strip() for v in done})) or "none"
    median = f"{statistics.median(v['seconds'] for v in done):.0f} s median" if done else "none within the run"
    lines += [
        "",
        f"- Busy run: two submissions of a {result['archive_bytes'] / MiB:.1f} MiB zip of {result['slow_images']}"
        f" 4096x4096 PNGs were in flight {share} of the time (resubmitted when answered; answers: {answered},"
        f" {median}), and one job fine-tuned on the worker (at the end: {result['long_job']['status']},"
        f" {result['long_job']['stage']}, progress {result['long_job']['progress']}).",
        f"- Target (p99 < 50 ms, 0 errors while busy): {'met' if met else 'not met'} by this run.",
        "- " + "; ".join(result["settings_notes"]) + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load_api", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=60, help="seconds of each GET /jobs/{id} run (paced, unpaced)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections")
    parser.add_argument("--rate", type=float, default=200.0, help="offered requests/s of the paced status run")
    parser.add_argument("--brief", type=int, default=10, help="seconds of the /healthz and GET /jobs runs")
    parser.add_argument("--upload-mb", type=float, default=50.0, help="size of the data archive upload, MiB")
    parser.add_argument("--submissions", type=int, default=5, help="uploads of each kind")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where load_api.{json,md} go")
    parser.add_argument(
        "--mode",
        choices=("standard", "slow-validations"),
        default="standard",
        help="slow-validations: paced polling while two slow checks and a job run (issue #20)",
    )
    parser.add_argument("--slow-images", type=int, default=100, help="4096x4096 PNGs in each slow submission")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: `apt-get install -y wrk` (Debian/Ubuntu) or build it from "
              "https://github.com/wg/wrk, then run this again", file=sys.stderr)  # fmt: skip
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally below stops what we started
    date, host = datetime.now(timezone.utc).isoformat(timespec="seconds"), machine()
    env, notes = bench_env(max(int(args.upload_mb * MiB), 60 * MiB))  # the VGG-16-BN weights are 57 MiB
    svc = Service(Path(tempfile.mkdtemp(prefix="autoprune-load-")))
    done = False
    try:
        for key in API_LIMITS:
            svc.env.pop(f"AUTOPRUNE_{key}", None)
        svc.env.update(env)
        print("\n".join(["settings:", *notes]))
        svc.start_api()
        slow = args.mode == "slow-validations"
        result = {"date": date, "machine": host, "versions": versions(),
                  "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "settings": env, "settings_notes": notes, **(measure_slow if slow else measure)(svc, args),
                  "load_average_at_end": os.getloadavg()}  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        stem = "load_api_slow" if slow else "load_api"
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / f"{stem}.md").write_text((markdown_slow if slow else markdown)(result))
        print(f"wrote {args.out / stem}.json and .md")
        done = True
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        svc.close()
        if done:
            shutil.rmtree(svc.root, ignore_errors=True)
        else:
            print(f"stopped everything; logs kept in {svc.root}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
