"""End to end over HTTP: a real API and a real worker prune a digits model; cancel works."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import service_harness
import torch
from safetensors.torch import save_file
from service_harness import Service, submit, wait_for

import autoprune
from autoprune.data import iterate_batches, load_data
from autoprune.models import create_model

postgres = service_harness.postgres  # fixture
service = service_harness.service  # fixture
worker = service_harness.worker  # fixture

REPORT_FIELDS = {
    "arch", "method", "budget", "flops_before", "flops_after", "params_before", "params_after",
    "latency_ms_before", "latency_ms_after", "accuracy_before", "accuracy_after", "layers", "timings",
}  # fmt: skip


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=3)
    path = tmp_path_factory.mktemp("weights") / "resnet20.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_digits_job_end_to_end(service, worker, weights, tmp_path):
    client = service.client(service.token("e2e"))
    with open(weights, "rb") as f:
        response = submit(client, {"weights": ("resnet20.safetensors", f)}, method="global", criterion="taylor")
    assert response.status_code == 201, response.text
    job = response.json()
    assert (
        job["status"] == "queued"
        and job["inputs"]["weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    )

    seen = []

    def finished():
        body = client.get(f"/jobs/{job['id']}").json()
        seen.append((body["status"], body["stage"], body["progress"]))
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    body = wait_for(finished, 180, "the job to finish", 0.3)
    assert body["status"] == "succeeded", body
    running = [p for status, _, p in seen if status == "running"]
    assert running == sorted(running), "progress went backwards"
    assert {stage for _, stage, _ in seen} & {"importance", "finetune", "export"}
    report = body["result"]
    assert REPORT_FIELDS <= set(report)
    assert report["flops_after"] <= 0.5 * report["flops_before"] and report["criterion"] == "taylor"

    listing = client.get(f"/jobs/{job['id']}/artifacts").json()
    names = {a["name"] for a in listing["data"]}
    assert {"report.json", "model.safetensors", "spec.json", "model.onnx", "model.pt2"} <= names
    for artifact in listing["data"]:
        data = client.get(f"/jobs/{job['id']}/artifacts/{artifact['name']}")
        assert data.status_code == 200
        assert len(data.content) == artifact["size"]
        assert hashlib.sha256(data.content).hexdigest() == artifact["sha256"] == data.headers["x-content-sha256"]
        (tmp_path / artifact["name"]).write_bytes(data.content)

    assert report["data"] == "digits"
    assert str(service.data_dir) not in (tmp_path / "report.json").read_text()  # no server paths for the user
    model = autoprune.load_pruned(tmp_path / "spec.json", tmp_path / "model.safetensors").eval()
    x, _ = next(iter(iterate_batches(load_data("digits"), "test", 16)))
    with torch.inference_mode():
        assert model(x).shape == (16, 10)
    assert sum(p.numel() for p in model.parameters()) == report["params_after"]

    jobs = client.get("/jobs").json()
    assert jobs["data"][0]["id"] == job["id"]
    metrics = dict(line.rsplit(" ", 1) for line in client.get("/metrics").text.splitlines() if not line.startswith("#"))
    assert (
        int(metrics['autoprune_jobs{status="succeeded"}']) >= 1
        and int(metrics["autoprune_job_duration_seconds_count"]) >= 1
    )


def test_cancel_a_running_job(service, worker):
    client = service.client(service.token("canceller"))
    job_id = submit(client, finetune='{"epochs": 50, "max_steps_per_epoch": 20}').json()["id"]
    wait_for(lambda: client.get(f"/jobs/{job_id}").json()["stage"] in ("finetune",), 120, "fine-tuning to start", 0.2)
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 200 and response.json()["cancel_requested"]
    job = service.wait_status(job_id, {"cancelled", "failed", "succeeded"}, 30)
    assert job.status.value == "cancelled" and job.artifacts == ()
    assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
    assert not list((service.data_dir / "jobs" / job_id).glob("attempt-*"))
    assert client.delete(f"/jobs/{job_id}").status_code == 204  # a finished job: deleted with its files
    assert client.get(f"/jobs/{job_id}").status_code == 404 and not (service.data_dir / "jobs" / job_id).exists()


def test_the_same_flow_on_postgresql(postgres, tmp_path):
    """API and worker on PostgreSQL (claims with FOR UPDATE SKIP LOCKED): a job runs to the end."""
    svc = Service(tmp_path, postgres.new_database())
    try:
        svc.start_api()
        svc.start_worker()
        client = svc.client(svc.token("pg"))
        response = submit(client, exports="none")  # the exports are the SQLite flow's to check
        assert response.status_code == 201, response.text
        job = svc.wait_status(response.json()["id"], {"succeeded", "failed"}, 150)
        assert job.status.value == "succeeded", job.error
        report = client.get(f"/jobs/{job.id}/artifacts/report.json").json()
        assert report == client.get(f"/jobs/{job.id}").json()["result"]
        assert client.get("/healthz").json()["database"] == "postgresql"
    finally:
        svc.close()


def test_autoprune_submit_waits_with_progress_and_downloads(service, worker, weights, tmp_path):
    """The user's one-command client: submit, follow (a line per stage in a log), download."""
    out = tmp_path / "downloaded"
    finished = subprocess.run(
        [sys.executable, "-m", "autoprune.cli", "submit", "--url", service.url, "--token", service.token("cli"),
         "--weights", str(weights), "--finetune-epochs", "1", "--max-steps-per-epoch", "4", "--exports", "onnx", "--no-ensure-faster", "--wait", "--download", str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    assert lines[0].startswith("submitted job ")
    statuses = ("queued", "running", "succeeded", "failed", "cancelled")
    progress = [line.split() for line in lines if line.startswith("    ") and line.split()[0] in statuses]
    stages = [words[1] for words in progress if words[0] == "running" and len(words) > 2]
    assert stages and set(stages) <= {
        "intake",
        "baseline",
        "timing",
        "importance",
        "latency_table",
        "allocation",
        "surgery",
        "finetune",
        "export",
        "done",
    }  # the polls see some stages (1 s apart)
    assert progress[-1][0] == "succeeded"
    assert len(progress) < 40  # not one line per poll
    downloaded = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "spec.json", "report.json", "report.html", "model.onnx"} <= downloaded
    assert "model.pt2" not in downloaded  # --exports onnx
    summary = json.loads(finished.stdout[finished.stdout.index("{") :])
    assert summary["method"] == "auto"  # the default: it chooses among allocators for a flops budget
    report = json.loads((out / "report.json").read_text())
    model = autoprune.load_pruned(out / "spec.json", out / "model.safetensors")
    assert sum(p.numel() for p in model.parameters()) == report["params_after"]
