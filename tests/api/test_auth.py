"""Tokens, owner isolation, listing, queued cancel, rate limit and settings refusals."""

from __future__ import annotations

import httpx
import pytest
import service_harness
from service_harness import submit

from api.security import RateLimiter, hash_token
from api.settings import Settings

service = service_harness.service  # fixture

ROUTES = [("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/{id}"), ("DELETE", "/jobs/{id}"),
          ("GET", "/jobs/{id}/artifacts"), ("GET", "/jobs/{id}/artifacts/report.json"), ("GET", "/metrics")]  # fmt: skip


@pytest.fixture(scope="module")
def alice_job(service):
    alice = service.client(service.token("alice"))
    response = submit(alice)
    assert response.status_code == 201, response.text
    yield alice, response.json()["id"]
    service.cancel_all_queued()


@pytest.mark.parametrize("token", [None, "ap_not-a-real-token", "Basic abc", "ap_" + "x" * 200])
def test_every_route_but_healthz_needs_a_valid_token(service, alice_job, token):
    _, job_id = alice_job
    headers = {} if token is None else {"Authorization": token if token.startswith("Basic") else f"Bearer {token}"}
    for method, path in ROUTES:
        response = httpx.request(method, service.url + path.format(id=job_id), headers=headers)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"] == "unauthorized" and response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{service.url}/healthz").status_code == 200


def test_another_owners_job_is_not_found(service, alice_job):
    _, job_id = alice_job
    bob = service.client(service.token("bob"))
    for method, path in ROUTES[2:6]:
        response = bob.request(method, path.format(id=job_id))
        assert response.status_code == 404 and response.json()["error"] == "not_found", (method, path)
    assert bob.get("/jobs").json() == {"data": [], "count": 0}
    assert service.job(job_id).status.value == "queued"  # bob's DELETE did nothing


def test_owner_sees_lists_and_cancels_a_queued_job(service, alice_job):
    alice, job_id = alice_job
    job = alice.get(f"/jobs/{job_id}").json()
    assert job["status"] == "queued" and job["progress"] == 0 and job["eta_seconds"] is None
    assert job["spec"]["budget"] == {"flops": 0.5} and job["spec"]["intake"]["num_classes"] == 10
    second = submit(alice).json()["id"]
    page = alice.get("/jobs", params={"limit": 1}).json()
    assert page["count"] == 2 and [j["id"] for j in page["data"]] == [second]
    assert alice.get("/jobs", params={"limit": 1, "offset": 1}).json()["data"][0]["id"] == job_id
    assert alice.get("/jobs", params={"limit": 0}).status_code == 422
    cancelled = alice.delete(f"/jobs/{second}").json()
    assert cancelled["status"] == "cancelled" and cancelled["error"] == "cancelled"
    assert alice.get(f"/jobs/{second}/artifacts").json() == {"data": [], "count": 0}
    assert alice.get(f"/jobs/{second}/artifacts/report.json").status_code == 404
    assert alice.get("/jobs/not-an-id").status_code == 404


def test_metrics_and_unknown_routes(service, alice_job):
    alice, _ = alice_job
    text = alice.get("/metrics").text
    assert "autoprune_queue_depth" in text and 'autoprune_jobs{status="queued"}' in text
    missing = alice.get("/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert alice.put("/jobs").json()["error"] == "method_not_allowed"


def test_tokens_are_stored_hashed_only(service):
    token = service.token("carol")
    with service.engine.begin() as conn:
        from sqlalchemy import text

        rows = conn.execute(text("SELECT token_hash FROM tokens")).scalars().all()
    assert hash_token(token) in rows and token not in rows
    with pytest.raises(ValueError):
        service.token("no spaces allowed")


def test_rate_limiter_per_key():
    limiter = RateLimiter(per_minute=3)
    assert [limiter.acquire("a") for _ in range(3)] == [0, 0, 0]
    assert 0 < limiter.acquire("a") <= 20
    assert limiter.acquire("b") == 0


@pytest.mark.parametrize(
    "changes",
    [
        {"database_url": "sqlite:///:memory:"},
        {"environment": "production", "database_url": "postgresql://app:changethis@db/app"},
        {"lease_s": 10, "heartbeat_s": 10},
        {"max_upload_bytes": 0},
    ],
)
def test_settings_refuse_unsafe_values(changes):
    with pytest.raises(ValueError):
        Settings(**changes)
    assert Settings(database_url="postgresql://u:p@h/db").db_url.startswith("postgresql+psycopg://")


def test_a_valid_token_is_remembered_for_a_while_and_an_unknown_one_never(tmp_path, monkeypatch):
    """Polls resolve a recent token from memory (no token query, no threadpool hop); the memory
    expires, and made-up tokens are not kept (a flood of them cannot grow it)."""
    from sqlalchemy import delete

    from api.db import make_engine, migrate
    from api.db.tables import TokenRow
    from api.security import TokenStore

    engine = make_engine(Settings(data_dir=tmp_path).db_url)
    migrate(engine)
    tokens = TokenStore(engine, remember_s=60.0)
    token = tokens.create("alice")
    assert tokens.recent_owner(token) is None  # not resolved yet
    assert tokens.owner_of(token) == "alice"
    with engine.begin() as conn:
        conn.execute(delete(TokenRow.__table__))  # gone from the database: memory still answers
    assert tokens.recent_owner(token) == "alice" and tokens.owner_of(token) is None
    for i in range(50):
        assert tokens.owner_of(f"ap_made-up-{i}") is None
    assert len(tokens._recent) == 1
    import api.security as security

    monkeypatch.setattr(security.time, "monotonic", lambda: 10.0**9)  # 60 s later
    assert tokens.recent_owner(token) is None
    engine.dispose()
