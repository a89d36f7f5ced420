"""`make compose-test`: the docker-compose topology built and run for real, end to end.

    python deploy/compose_test.py [--keep] [--workers 2]

1. Docker: as root, installs docker.io, docker-compose and debootstrap when missing and starts
   the daemon when none answers. Not root and no usable docker: says why and exits 0 (skipped).
2. Local base images, built once and kept in docker's image store (no registry needed):
   Debian bookworm from `debootstrap --variant=minbase` + `docker import`, then a Python 3.11
   base and a PostgreSQL 15 image (deploy/base/). Rebuilt only when their recipe changes.
3. The app image from the Dockerfile on that base, through docker-compose.test.yml. Its
   dependencies come from a wheelhouse that this machine's pip fills (local mirrors first, then
   PyPI; kept in ~/.cache/autoprune-compose-test), served to the build on 127.0.0.1; layers
   are cached by docker.
4. Up: PostgreSQL, the API, two workers (host networking, ports on 127.0.0.1).
5. A token from `autoprune token create` inside the API container; a digits ResNet-20 baseline
   trained once inside the API container (cached); the default digits job submitted over HTTP.
6. While the job runs, the worker container that holds it is `docker kill`ed; the other worker
   takes it over when the lease runs out. Then the API container is restarted.
7. Checks: the job succeeded once (attempt 2, one published attempt directory, one set of
   artifact rows), the token, the job and its Idempotency-Key survived the API restart, every
   artifact downloads with its SHA-256, the report is sane, the image's healthchecks pass.
8. Tears everything down (`down -v`); the images stay cached. --keep leaves it running.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "deploy" / ".cache"  # this run's leftovers: the downloaded artifacts, a JSON summary
# What outlives a clean clone: the wheelhouse and the trained baseline (the images live in
# docker's image store).
KEEP = Path(os.environ.get("AUTOPRUNE_COMPOSE_CACHE") or Path.home() / ".cache" / "autoprune-compose-test")
BASE_DIR = ROOT / "deploy" / "base"
PROJECT = "autoprune-ct"
DEBIAN_IMAGE = "autoprune-local/debian:bookworm"
PYTHON_IMAGE = "autoprune-local/python:3.11-bookworm"
POSTGRES_IMAGE = "autoprune-local/postgres:15-bookworm"
APP_IMAGE = "autoprune:compose-test"
HASH_LABEL = "autoprune.recipe-sha256"
# A fixed port: the pip arguments (with this URL) are part of the dependency layer's cache key.
WHEELHOUSE_PORT = int(os.environ.get("AUTOPRUNE_WHEELHOUSE_PORT", "18765"))
BASELINE_EPOCHS = 1  # the test is about the topology, not accuracy; one epoch is ~15 s on one core
# The job: the default digits job of `autoprune submit` (ResNet-20, 50% of MACs, the default
# method), with the demo's channel step and a short fine-tune (2 epochs of 8 steps), long enough
# to kill the worker that runs it while it fine-tunes.
JOB_FIELDS = {
    "arch": "resnet20",
    "dataset": "digits",
    "budget": json.dumps({"flops": 0.5}),
    "channel_step": "8",
    "finetune": json.dumps({"epochs": 2, "max_steps_per_epoch": 8}),
}
EXPECTED_ARTIFACTS = {"model.safetensors", "spec.json", "report.json", "model.onnx"}

T0 = time.monotonic()
TIMES: dict[str, float] = {}


class Skip(Exception):
    """Docker cannot be had here: say why and exit 0."""


class Failed(Exception):
    """A check of the end-to-end run failed."""


def log(msg: str) -> None:
    print(f"[compose-test {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def run(
    cmd: list[str],
    *,
    check: bool = True,
    capture: bool = False,
    env: dict[str, str] | None = None,
    input: str | None = None,
    quiet: bool = False,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    if not quiet:
        log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=check, text=True, env=env, input=input, timeout=timeout,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None)  # fmt: skip


@contextmanager
def timed(name: str):  # type: ignore[no-untyped-def]
    start = time.monotonic()
    yield
    TIMES[name] = round(time.monotonic() - start, 1)


# ---------------------------------------------------------------- 1. docker


def docker_ok() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ).returncode == 0  # fmt: skip


def apt_install(packages: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    if run(cmd, check=False, env=env).returncode != 0:
        run(["apt-get", "update", "-qq"], env=env)
        run(cmd, env=env)


def ensure_docker() -> list[str]:
    """A working daemon and a compose command; installs and starts them as root."""
    root = os.geteuid() == 0
    if not docker_ok():
        if not root:
            raise Skip("docker is not usable here and this is not root (cannot install or start it)")
        if shutil.which("apt-get") is None:
            raise Skip("docker is not usable here and there is no apt-get to install docker.io")
        missing = [p for p, exe in (("docker.io", "dockerd"), ("docker-compose", "docker-compose"),
                                    ("debootstrap", "debootstrap")) if shutil.which(exe) is None]  # fmt: skip
        if missing:
            log(f"installing {' '.join(missing)} (apt-get)")
            try:
                apt_install(missing)
            except subprocess.CalledProcessError as exc:
                raise Skip(f"apt-get could not install {' '.join(missing)}: {exc}") from None
        if not docker_ok():
            log("starting dockerd (log: /var/log/autoprune-dockerd.log)")
            # Every container and build of this test uses the host's network: no docker0 bridge and no
            # NAT rules, so the daemon puts no private-range address on this machine.
            with open("/var/log/autoprune-dockerd.log", "ab") as out:
                subprocess.Popen(["dockerd", "--bridge=none", "--iptables=false"], stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
            deadline = time.monotonic() + 60
            while not docker_ok():
                if time.monotonic() > deadline:
                    raise Skip("dockerd did not come up in 60 s (see /var/log/autoprune-dockerd.log)")
                time.sleep(1)
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") is None:
        if not root:
            raise Skip("neither `docker compose` nor `docker-compose` is installed, and this is not root")
        apt_install(["docker-compose"])
    return ["docker-compose"]


# ---------------------------------------------------------------- 2. base images


def image_label(image: str) -> str | None:
    """The recipe hash an image was built from; None when the image is absent."""
    out = subprocess.run(["docker", "image", "inspect", "-f", f'{{{{index .Config.Labels "{HASH_LABEL}"}}}}', image],
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout.strip() if out.returncode == 0 else None


def apt_mirror() -> str:
    """The Debian mirror apt already uses here (deb.debian.org otherwise)."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            text = path.read_text()
        except OSError:
            continue
        for url in re.findall(r"(?:^deb\s+(?:\[[^\]]*\]\s+)?|^URIs:\s*)(\S+)", text, re.M):
            if url.rstrip("/").endswith("/debian") and not url.startswith("cdrom"):
                return url.rstrip("/")
    return "http://deb.debian.org/debian"


def ensure_debian_base() -> None:
    if image_label(DEBIAN_IMAGE) is not None:
        return
    if shutil.which("debootstrap") is None:
        if os.geteuid() != 0:
            raise Skip("debootstrap is missing and this is not root")
        apt_install(["debootstrap"])
    mirror = apt_mirror()
    rootfs = CACHE / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    log(f"building {DEBIAN_IMAGE}: debootstrap --variant=minbase bookworm from {mirror} (once)")
    run(["nice", "debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror], capture=True)
    (rootfs / "etc/apt/sources.list").write_text(
        f"deb {mirror} bookworm main\ndeb {mirror} bookworm-updates main\n"
        f"deb {mirror.removesuffix('/debian')}/debian-security bookworm-security main\n"
    )
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (rootfs / sub).glob("*"):
            if p.is_file():
                p.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["docker", "import", "-c", "ENV LANG=C.UTF-8", "-c", 'CMD ["bash"]', "-c",
                    f"LABEL {HASH_LABEL}=debootstrap-bookworm", "-", DEBIAN_IMAGE],
                   stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    if tar.wait() != 0:
        raise Failed("tar of the debootstrap root failed")
    shutil.rmtree(rootfs, ignore_errors=True)


def recipe_hash(*paths: Path, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_base(image: str, dockerfile: str, *inputs: str) -> bool:
    """Build a base from deploy/base/ unless the image store has it from the same recipe."""
    base_id = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", DEBIAN_IMAGE],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    want = recipe_hash(*(BASE_DIR / n for n in (dockerfile, *inputs)), extra=base_id)
    if image_label(image) == want:
        return False
    log(f"building {image} from deploy/base/{dockerfile} (once; cached in docker's image store)")
    run(["nice", "docker", "build", "-q", "--network", "host", "--label", f"{HASH_LABEL}={want}",
         "-t", image, "-f", str(BASE_DIR / dockerfile), str(BASE_DIR)],
        env={**os.environ, "DOCKER_BUILDKIT": "0"}, capture=True)  # fmt: skip
    return True


def ensure_bases() -> str:
    start = time.monotonic()
    had_debian = image_label(DEBIAN_IMAGE) is not None
    ensure_debian_base()
    built = [ensure_base(PYTHON_IMAGE, "python.Dockerfile"),
             ensure_base(POSTGRES_IMAGE, "postgres.Dockerfile", "postgres-entrypoint.sh")]  # fmt: skip
    state = "cached" if had_debian and not any(built) else "built"
    TIMES["bases"] = round(time.monotonic() - start, 1)
    return state


# ---------------------------------------------------------------- 3. app image


def requirements() -> list[str]:
    import tomllib

    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def ensure_wheelhouse() -> Path:
    """Every dependency wheel, as this machine's pip resolves them (local mirrors, then PyPI)."""
    reqs = requirements()
    key = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:12]
    house = KEEP / f"wheelhouse-{key}"
    if (house / ".complete").exists():
        return house
    for old in KEEP.glob("wheelhouse-*"):
        shutil.rmtree(old, ignore_errors=True)
    house.mkdir(parents=True)
    log(f"filling the wheelhouse {house} with pip download (once per dependency set)")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(reqs) + "\n")
    try:
        run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", str(house),
             "-r", f.name])  # fmt: skip
    finally:
        os.unlink(f.name)
    (house / ".complete").touch()
    return house


@contextmanager
def serve_directory(path: Path, port: int):  # type: ignore[no-untyped-def]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise Failed(
                        f"could not serve the wheelhouse on 127.0.0.1:{port} (port taken? set "
                        "AUTOPRUNE_WHEELHOUSE_PORT)"
                    ) from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(10)


# ---------------------------------------------------------------- 4-8. the topology


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Topology:
    def __init__(self, compose: list[str], env: dict[str, str]) -> None:
        self.base = [*compose, "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml"),
                     "-f", str(ROOT / "docker-compose.test.yml")]  # fmt: skip
        self.env = env

    def compose(self, *args: str, capture: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*self.base, *args], env=self.env, capture=capture, check=check)

    def ids(self, service: str) -> list[str]:
        out = run([*self.base, "ps", "-q", service], env=self.env, capture=True, quiet=True).stdout
        return [line for line in out.split() if line]

    def psql(self, sql: str) -> str:
        (pg,) = self.ids("postgres")
        return run(["docker", "exec", pg, "psql", "-U", "autoprune", "-d", "autoprune", "-tA", "-F", "|", "-c", sql],
                   capture=True, quiet=True).stdout.strip()  # fmt: skip


def container_state(cid: str) -> dict[str, object]:
    out = run(["docker", "inspect", "-f", "{{json .State}}", cid], capture=True, quiet=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def wait_healthz(url: str, timeout: float) -> float:
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise Failed(f"the API did not answer {url}/healthz within {timeout:.0f} s")


def check(condition: bool, what: str) -> None:
    if not condition:
        raise Failed(what)
    log(f"ok: {what}")


def baseline(topo: Topology, api_id: str) -> Path:
    """A trained digits ResNet-20, trained once inside the API container (the image's torch)."""
    path = KEEP / f"baseline-resnet20-digits-e{BASELINE_EPOCHS}.safetensors"
    if path.exists():
        return path
    KEEP.mkdir(parents=True, exist_ok=True)
    log(f"training the digits ResNet-20 baseline inside the API container ({BASELINE_EPOCHS} epochs; cached)")
    code = ("from autoprune.pipeline import train_baseline; "
            "import torch; torch.set_num_threads(1); "
            f"r = train_baseline('resnet20', 'digits', '/tmp/baseline.safetensors', epochs={BASELINE_EPOCHS}); "
            "print('top-1', r['accuracy'])")  # fmt: skip
    with timed("baseline_training"):
        run(["docker", "exec", "-e", "OMP_NUM_THREADS=1", api_id, "python", "-c", code])
    run(["docker", "cp", f"{api_id}:/tmp/baseline.safetensors", str(path)])
    return path


def post_job(http, weights: Path, key: str):  # type: ignore[no-untyped-def]
    parts = [(k, (None, v)) for k, v in JOB_FIELDS.items()]
    with open(weights, "rb") as f:
        parts.append(("weights", (weights.name, f.read())))
    return http.post("/jobs", files=parts, headers={"Idempotency-Key": key})


# Which worker container runs a job: the one whose forkserver has a child (the job's process).
# (The workers' INFO log, which names their worker id, is not printed: see docs/deploy.md.)
_JOB_CHILDREN = """
import os
procs = {}
for p in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{p}/cmdline", "rb").read()
        ppid = int(next(l for l in open(f"/proc/{p}/status") if l.startswith("PPid:")).split()[1])
    except (OSError, StopIteration, ValueError):
        continue
    procs[int(p)] = (cmd, ppid)
servers = {p for p, (cmd, _) in procs.items() if b"multiprocessing.forkserver" in cmd}
print(sum(1 for cmd, ppid in procs.values() if ppid in servers))
"""


def busy_workers(topo: Topology) -> list[str]:
    busy = []
    for cid in topo.ids("worker"):
        out = run(["docker", "exec", cid, "python", "-c", _JOB_CHILDREN], capture=True, quiet=True, check=False)
        if out.returncode == 0 and int(out.stdout.strip() or 0) > 0:
            busy.append(cid)
    return busy


def exercise(topo: Topology, url: str, workers: int) -> dict[str, object]:
    import httpx

    from api.client import Client

    facts: dict[str, object] = {}
    (api_id,) = topo.ids("api")
    worker_ids = topo.ids("worker")
    check(len(worker_ids) == workers, f"{workers} worker containers are up")

    out = run(["docker", "exec", api_id, "autoprune", "token", "create", "--owner", "compose-test"],
              capture=True).stdout  # fmt: skip
    token = out.split()[-1]
    check(len(token) > 20, "a token was created inside the API container")
    weights = baseline(topo, api_id)

    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    key = uuid.uuid4().hex
    start = time.monotonic()
    response = post_job(http, weights, key)
    check(response.status_code == 201, f"POST /jobs answered 201 ({response.status_code})")
    job_id = response.json()["id"]
    facts["submit_s"] = round(time.monotonic() - start, 2)
    log(f"job {job_id} queued; following it")

    killed: str | None = None
    restarted = False
    seen: list[tuple[str, str | None, int]] = []
    deadline = time.monotonic() + 600
    job: dict = {}
    while time.monotonic() < deadline:
        try:
            job = http.get(f"/jobs/{job_id}").json()
        except httpx.HTTPError:
            time.sleep(0.5)  # the API is restarting
            continue
        state = (job["status"], job.get("stage"), job["attempt"])
        if not seen or seen[-1] != state:
            seen.append(state)
            log(f"job: {job['status']:<9} stage={job.get('stage')} attempt={job['attempt']} "
                f"progress={100 * job['progress']:.0f}%")  # fmt: skip
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        # Killed while it fine-tunes (or, should a poll miss that stage, while it exports).
        if killed is None and job["status"] == "running" and job.get("stage") in ("finetune", "export"):
            worker_id = topo.psql(f"SELECT worker_id FROM jobs WHERE id = '{job_id}'")
            busy = busy_workers(topo)
            check(len(busy) == 1, f"one worker container runs the job ({worker_id})")
            killed = busy[0]
            run(["docker", "kill", killed])
            facts["killed_at"] = {"stage": job.get("stage"), "progress": job["progress"], "worker_id": worker_id}
            kill_time = time.monotonic()
        if killed is not None and not restarted and job["status"] == "running" and job["attempt"] >= 2:
            facts["takeover_s"] = round(time.monotonic() - kill_time, 1)
            log("the other worker has the job; restarting the API container")
            restart_start = time.monotonic()
            run(["docker", "restart", "-t", "10", api_id])
            wait_healthz(url, 120)
            facts["api_restart_s"] = round(time.monotonic() - restart_start, 1)
            restarted = True
        time.sleep(0.25)
    facts["job_s"] = round(time.monotonic() - start, 1)
    check(
        job.get("status") == "succeeded", f"the job succeeded (status {job.get('status')}: {job.get('error_detail')})"
    )
    check(killed is not None, f"a worker container was killed mid-job ({facts.get('killed_at')})")
    check(restarted, "the API container was restarted while the job ran")
    check(job["attempt"] == 2, f"the job finished on its second attempt (attempt {job['attempt']})")
    killed_state = container_state(killed)  # type: ignore[arg-type]
    check(
        killed_state["Status"] == "exited" and killed_state["ExitCode"] == 137,
        f"the killed worker stayed dead (status {killed_state['Status']}, exit {killed_state['ExitCode']})",
    )

    # Exactly once: one row, one set of artifact rows, one published attempt directory.
    row = topo.psql(f"SELECT status, attempt, worker_id FROM jobs WHERE id = '{job_id}'").split("|")
    check(row[0] == "succeeded" and row[1] == "2", f"the job's row: {row[0]}, attempt {row[1]}")
    first_worker = facts["killed_at"]["worker_id"]  # type: ignore[index]
    check(row[2] != first_worker, f"another worker ({row[2]}) than the killed one ({first_worker}) published it")
    survivors = [c for c in topo.ids("worker") if container_state(c)["Status"] == "running"]
    check(len(survivors) == workers - 1, f"{workers - 1} worker container(s) still running")
    survivor = survivors[0]
    names = topo.psql(f"SELECT name FROM artifacts WHERE job_id = '{job_id}' ORDER BY name").split()
    check(len(names) == len(set(names)) and EXPECTED_ARTIFACTS <= set(names),
          f"one set of artifact rows: {', '.join(names)}")  # fmt: skip
    listing = run(["docker", "exec", survivor, "ls", f"/data/jobs/{job_id}"], capture=True, quiet=True).stdout.split()
    attempts = [n for n in listing if n.startswith("attempt-")]
    check(attempts == [f"attempt-2-{row[2].rsplit('-', 1)[-1]}"] and not any(n.endswith(".tmp") for n in listing),
          f"one published attempt directory, no leftovers: {' '.join(sorted(listing))}")  # fmt: skip
    facts["report_resumed"] = (job.get("result") or {}).get("resumed")
    check(
        bool(facts["report_resumed"]),
        f"the second attempt resumed from the first one's checkpoint ({facts['report_resumed']})",
    )

    # Nothing lost across the API restart: the token, the job, its Idempotency-Key, the artifacts.
    listed = http.get("/jobs").json()
    check(listed["count"] == 1 and listed["data"][0]["id"] == job_id, "after the restart, GET /jobs lists the one job")
    replay = post_job(http, weights, key)
    check(
        replay.status_code == 200
        and replay.headers.get("Idempotent-Replayed") == "true"
        and replay.json()["id"] == job_id,
        "after the restart, the same POST with its Idempotency-Key replays the job",
    )
    check(http.get("/jobs").json()["count"] == 1, "and queued no second job")
    downloads = CACHE / "compose-test-artifacts"
    shutil.rmtree(downloads, ignore_errors=True)
    with Client(url, token) as client:
        got = client.download_all(job_id, downloads)
    check(EXPECTED_ARTIFACTS <= set(got), f"downloaded with SHA-256 checked: {', '.join(got)}")
    report = json.loads((downloads / "report.json").read_text())
    check(report["flops_ratio"] <= 0.5 + 1e-6, f"the report meets the budget: flops ratio {report['flops_ratio']:.3f}")
    from safetensors.numpy import load_file

    tensors = load_file(str(downloads / "model.safetensors"))
    check(len(tensors) > 10, f"model.safetensors loads ({len(tensors)} tensors)")
    facts["accuracy"] = {k: round(report[k], 4) for k in ("accuracy_before", "accuracy_pruned", "accuracy_after")}
    facts["flops_ratio"] = round(report["flops_ratio"], 4)
    metrics = http.get("/metrics").text
    check(
        bool(re.search(r'^autoprune_jobs\{status="succeeded"\} 1$', metrics, re.M)), "/metrics counts one succeeded job"
    )

    # The image's HEALTHCHECK (deploy/healthcheck.py) for both roles.
    for name, cid in (("api", api_id), ("worker", survivor)):
        deadline = time.monotonic() + 60
        while (health := container_state(cid).get("Health", {}).get("Status")) not in ("healthy", "unhealthy") \
                and time.monotonic() < deadline:  # fmt: skip
            time.sleep(1)
        check(health == "healthy", f"the {name} container's HEALTHCHECK reports {health}")
    http.close()
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the topology running (tear down with `down -v`)")
    parser.add_argument("--workers", type=int, default=2, help="worker containers (at least 2)")
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2 (one is killed)")
    try:
        compose = ensure_docker()
    except Skip as exc:
        print(f"compose-test skipped: {exc}")
        return 0
    sys.path.insert(0, str(ROOT))
    bases = ensure_bases()
    log(f"base images {bases} ({TIMES['bases']} s)")
    with timed("wheelhouse"):
        house = ensure_wheelhouse()
    env = {**os.environ, "POSTGRES_PASSWORD": secrets.token_urlsafe(24), "CT_PG_PORT": str(free_port()),
           "CT_API_PORT": str(free_port()), "COMPOSE_DOCKER_CLI_BUILD": "0", "DOCKER_BUILDKIT": "0"}  # fmt: skip
    topo = Topology(compose, env)
    topo.compose("down", "-v", "--remove-orphans", capture=True, check=False)  # a previous run's leftovers
    with serve_directory(house, WHEELHOUSE_PORT) as wheel_url:
        env["PIP_INSTALL_ARGS"] = f"--no-index --find-links {wheel_url} --progress-bar off"
        with timed("image_build"):
            topo.compose("build", "api")
    # A rebuilt dependency layer leaves the previous image untagged: ~6 GB each time otherwise.
    run(["docker", "image", "prune", "-f", "--filter", "label=autoprune.compose-test=1"], capture=True, quiet=True)
    size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", APP_IMAGE], capture=True, quiet=True).stdout)
    log(f"image {APP_IMAGE}: {size / 1e9:.2f} GB, built in {TIMES['image_build']} s")
    url = f"http://127.0.0.1:{env['CT_API_PORT']}"
    ok = False
    try:
        with timed("up"):
            topo.compose("up", "-d", "--no-build", "--scale", f"worker={args.workers}")
            wait_healthz(url, 180)
        log(
            f"topology up ({TIMES['up']} s): PostgreSQL on 127.0.0.1:{env['CT_PG_PORT']}, API on {url}, {args.workers} workers"
        )
        facts = exercise(topo, url, args.workers)
        ok = True
    except (Failed, subprocess.CalledProcessError) as exc:
        print(f"compose-test FAILED: {exc}", file=sys.stderr)
        for service in ("api", "worker", "postgres"):
            topo.compose("logs", "--tail", "40", service, check=False)
        return 1
    finally:
        if args.keep:
            log(f"left running (--keep): {' '.join(topo.base)} down -v")
        else:
            with timed("down"):
                topo.compose("down", "-v", "--remove-orphans", check=False)
    total = round(time.monotonic() - T0, 1)
    summary = {"passed": ok, "total_s": total, "bases": bases, "times_s": TIMES, "image": APP_IMAGE,
               "image_bytes": size, **facts}  # fmt: skip
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "compose-test-last.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    log(f"compose-test passed in {total} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
