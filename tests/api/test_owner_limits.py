"""Per-owner quotas, deleting finished jobs, a full disk, per-owner metrics, closed docs, no server
paths in errors, and a locked database that does not stall the event loop (issue 20, cases 5-8),
against an API configured for production with small quotas."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from safetensors.torch import save
from service_harness import Service, submit

from autoprune.models import create_model

OPERATOR = "operator-" + "m" * 32
QUOTA_BYTES = 1_500_000  # one set of resnet20 weights (1.1 MB), not two


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = Service(tmp_path_factory.mktemp("limits"))
    service.start_api(
        AUTOPRUNE_ENVIRONMENT="production", AUTOPRUNE_MAX_QUEUED_PER_OWNER="2",
        AUTOPRUNE_MAX_STORED_BYTES_PER_OWNER=str(QUOTA_BYTES), AUTOPRUNE_METRICS_TOKEN=OPERATOR,
        AUTOPRUNE_FAILPOINT="upload_enospc:full.safetensors",
    )  # fmt: skip
    yield service
    service.cancel_all_queued()
    service.close()


@pytest.fixture(scope="module")
def weights() -> bytes:
    state = {k: v.contiguous() for k, v in create_model("resnet20", num_classes=10).state_dict().items()}
    return save(state)


def finish(svc: Service, job_id: str, status: str = "failed") -> None:
    """Time travel: the job ran and ended (no worker needed)."""
    with svc.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE jobs SET status = ?, finished_at = created_at + 1, error_code = 'bad_model' WHERE id = ?",
            (status, job_id),
        )


def test_an_owner_has_a_queue_quota(svc):
    client = svc.client(svc.token("queuer"))
    first, second = submit(client), submit(client)
    assert first.status_code == second.status_code == 201
    third = submit(client)
    assert third.status_code == 429 and third.json()["error"] == "queue_quota", third.text
    assert "2 jobs queued" in third.json()["detail"] and third.headers["Retry-After"]
    other = submit(svc.client(svc.token("someone-else")))
    assert other.status_code == 201  # one owner's full queue is not everyone's
    cancelled = client.delete(f"/jobs/{first.json()['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert submit(client).status_code == 201


def test_a_finished_job_is_deleted_with_its_files_which_frees_the_storage_quota(svc, weights):
    client = svc.client(svc.token("keeper"))
    kept = submit(client, {"weights": ("w.safetensors", weights)})
    assert kept.status_code == 201, kept.text
    job_id = kept.json()["id"]
    over = submit(client, {"weights": ("w.safetensors", weights)})
    assert over.status_code == 413 and over.json()["error"] == "storage_quota", over.text
    assert "DELETE /jobs/{id}" in over.json()["detail"]
    assert (svc.data_dir / "jobs" / job_id / "inputs").is_dir()
    finish(svc, job_id)
    deleted = client.delete(f"/jobs/{job_id}")
    assert deleted.status_code == 204 and not deleted.content
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert client.delete(f"/jobs/{job_id}").status_code == 404
    assert not (svc.data_dir / "jobs" / job_id).exists()
    assert submit(client, {"weights": ("w.safetensors", weights)}).status_code == 201


def test_a_full_disk_during_an_upload_is_a_retryable_507(svc, weights):
    client = svc.client(svc.token("uploader"))
    response = submit(client, {"weights": ("full.safetensors", weights)})
    assert response.status_code == 507 and response.json()["error"] == "storage_full", response.text
    assert response.headers["Retry-After"]
    assert not list((svc.data_dir / "uploads").glob("*.partial"))


def metrics(client: httpx.Client) -> dict[str, str]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return dict(line.rsplit(" ", 1) for line in response.text.splitlines() if not line.startswith("#"))


def test_metrics_show_an_owner_only_its_own_jobs(svc):
    mine = svc.client(svc.token("watcher"))
    assert submit(mine).status_code == 201
    own = metrics(mine)
    assert own['autoprune_jobs{status="queued"}'] == "1" and own["autoprune_queue_depth"] == "1"
    assert not [k for k in own if k.startswith("autoprune_http_responses_total")]
    everything = metrics(svc.client(OPERATOR))
    assert int(everything['autoprune_jobs{status="queued"}']) > 1
    assert [k for k in everything if k.startswith("autoprune_http_responses_total")]
    assert svc.client("not-the-operator-token").get("/metrics").status_code == 401


def test_docs_and_the_schema_are_closed_in_production(svc):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(svc.url + path).status_code == 404, path


def test_errors_do_not_show_server_paths(svc):
    client = svc.client(svc.token("prober"))
    response = submit(client, {"data": ("data.zip", b"PK\x03\x04garbage")}, dataset=None)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "data.zip" in detail and str(svc.data_dir) not in detail and "/jobs/" not in detail, detail


def test_a_locked_database_does_not_stall_the_event_loop(svc):
    """Another process holds SQLite's write lock for 3 s while a submission waits to insert its row:
    /healthz answers meanwhile (it took the lock's whole 3 s when the insert ran on the event loop)."""
    client = svc.client(svc.token("patient"))
    db = sqlite3.connect(svc.settings.db_url.removeprefix("sqlite:///"), isolation_level=None, timeout=30)
    db.execute("BEGIN IMMEDIATE")
    result: list[httpx.Response] = []
    answered: list[float] = []
    poster = threading.Thread(target=lambda: (result.append(submit(client)), answered.append(time.monotonic())))
    poster.start()
    time.sleep(0.5)  # the submission is past its reads, waiting for the lock
    latencies = []
    with httpx.Client(timeout=30) as probe:
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            start = time.perf_counter()
            assert probe.get(f"{svc.url}/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.05)
    released = time.monotonic()
    db.execute("ROLLBACK")
    db.close()
    poster.join(60)
    assert result and result[0].status_code == 201, result
    assert answered[0] >= released  # the submission did wait for the lock all along
    assert max(latencies) < 1.0, latencies


def test_the_store_keeps_each_jobs_bytes(svc, weights):
    client = svc.client(svc.token("counter"))
    job_id = submit(client, {"weights": ("w.safetensors", weights)}).json()["id"]
    assert svc.store.get(job_id).stored_bytes == len(weights)
