"""One evolution search spread over worker slots: a real API, real workers, a shared Optuna study.

The plain flow runs on PostgreSQL (two worker processes, as deployed); on SQLite the same flow
runs with its lead killed mid-search.
"""

from __future__ import annotations

import json
import os
import signal

import optuna
import pytest
import service_harness
from service_harness import Service, stop_process, submit, wait_for
from sqlalchemy import text

postgres = service_harness.postgres  # fixture
service = service_harness.service  # fixture

SPREAD_TRIALS = 12  # enough for both slots to run some; each trial costs about a second here
KILLED_TRIALS = 16  # the lead is killed once both slots ran 2: enough left for the replay to matter


def spread_search(svc: Service, owner: str) -> None:
    """Submit a SPREAD_TRIALS-trial evolution search over two slots; check both ran trials and nothing leaked."""
    client = svc.client(svc.token(owner))
    response = submit(client, method="evolution", search_workers="2", search_trials=str(SPREAD_TRIALS), exports="none")
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    body = wait_for(
        lambda: (b := client.get(f"/jobs/{job_id}").json())["status"] in ("succeeded", "failed", "cancelled") and b,
        300, "the job to finish", 0.5,
    )  # fmt: skip
    assert body["status"] == "succeeded", body
    listed = client.get("/jobs").json()
    assert [j["id"] for j in listed["data"]] == [job_id] and listed["count"] == 1  # the helper is internal

    search = body["result"]["allocation"][0]
    with svc.engine.begin() as conn:
        (helper,) = conn.execute(
            text("SELECT id, status, result FROM jobs WHERE parent_id = :id AND kind = 'search'"), {"id": job_id}
        ).all()
    assert helper.status == "succeeded", helper
    assert client.get(f"/jobs/{helper.id}").status_code == 404
    label = f"helper-{helper.id[:8]}"
    helper_result = helper.result if isinstance(helper.result, dict) else json.loads(helper.result)
    by = search["trials_by"]
    assert set(by) == {"lead", label} and by["lead"] >= 1 and by[label] >= 1, by
    assert helper_result["joined"] and helper_result["trials_added"] >= by[label]
    assert search["trials"] == SPREAD_TRIALS and SPREAD_TRIALS <= sum(by.values()) <= SPREAD_TRIALS + 1

    study = optuna.load_study(study_name=search["study_name"], storage=svc.settings.search_storage_url)
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert {t.user_attrs["by"] for t in finished} == {"lead", label}
    assert search["best_score"] == max(
        t.value for t in finished if t.number in {c["trial"] for c in search["candidates"]}
    )


def test_a_spread_search_survives_its_lead_being_killed(service):
    """kill -9 the lead's worker mid-search: the helper steps back, the lead's next attempt replays
    everyone's trials from the study and finishes the search; no trial is lost or run twice."""
    service.cancel_all_queued()
    storage = service.settings.search_storage_url
    earlier = set(optuna.get_all_study_names(storage)) if (service.data_dir / "optuna.db").exists() else set()
    client = service.client(service.token("spread-crash"))
    response = submit(client, method="evolution", search_workers="2", search_trials=str(KILLED_TRIALS), exports="none")
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    first = service.start_worker()
    wait_for(lambda: service.job(job_id).status.value == "running", 60, "the lead to start", 0.1)
    assert f"-{first.pid}-" in service.job(job_id).worker_id
    second = service.start_worker()  # claims the helper
    try:

        def trials_by_process() -> dict[str, int]:
            names = set(optuna.get_all_study_names(storage)) - earlier  # this job's study, once it exists
            if not names:
                return {}
            finished = optuna.load_study(study_name=names.pop(), storage=storage).get_trials(
                states=(optuna.trial.TrialState.COMPLETE,)
            )
            return {
                who: sum(t.user_attrs["by"] == who for t in finished) for who in {t.user_attrs["by"] for t in finished}
            }

        wait_for(lambda: len(by := trials_by_process()) == 2 and min(by.values()) >= 2, 180, "both to run trials", 0.2)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        job = service.wait_status(job_id, {"succeeded", "failed"}, 300)
        assert job.status.value == "succeeded" and job.attempt == 2, job.error
        search = job.result["allocation"][0]
        assert search["resumed_trials"] >= 4  # the first attempt's and the helper's trials were kept
        study = optuna.load_study(study_name=search["study_name"], storage=storage)
        finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        assert (
            KILLED_TRIALS <= len(finished) <= KILLED_TRIALS + 1 and sum(search["trials_by"].values()) >= KILLED_TRIALS
        )
        assert len({t.number for t in finished}) == len(finished)
        with service.engine.begin() as conn:
            (helper_status,) = conn.execute(
                text("SELECT status FROM jobs WHERE parent_id = :id"), {"id": job_id}
            ).one()  # fmt: skip
        assert helper_status in ("queued", "running", "succeeded")  # given back or finished: never failed
    finally:
        stop_process(second)
        service.cancel_all_queued()


def test_an_evolution_search_spreads_over_two_workers_on_postgresql(postgres, tmp_path):
    """Scale-out as deployed: two worker processes on PostgreSQL share the study (schema optuna)."""
    svc = Service(tmp_path, postgres.new_database())
    try:
        svc.start_api()
        svc.start_worker()
        svc.start_worker()
        spread_search(svc, "spread-pg")
    finally:
        svc.close()


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"method": "halp", "search_workers": "2"}, "evolution"),
        ({"method": "evolution", "search_workers": "9"}, "from 1 to 8"),
        ({"method": "evolution", "search_workers": "0"}, "from 1 to 8"),
        ({"method": "evolution", "search_workers": "two"}, "integer"),
        ({"method": "evolution", "search_workers": "2", "budget": '{"latency_ms": 1.0}'}, "latency"),
        ({"method": "global", "search_trials": "20"}, "evolution"),
        ({"method": "evolution", "search_trials": "0"}, "from 1 to 2000"),
        ({"method": "evolution", "search_trials": "1.5"}, "integer"),
    ],
)
def test_search_workers_are_checked_before_queueing(service, fields, needle):
    client = service.client(service.token("spread-bad"))
    response = submit(client, **fields)
    assert response.status_code == 422 and needle in response.json()["detail"], response.text
    assert client.get("/jobs").json()["count"] == 0


@pytest.fixture
def local_worker(tmp_path):
    """A real Worker on a real SQLite store, driven slot-by-slot (no threads) to test its decisions."""
    from api.artifacts import ArtifactStore
    from api.db import make_engine, migrate
    from api.jobs import SqlJobStore
    from api.settings import Settings
    from api.worker.loop import Worker

    settings = Settings(data_dir=tmp_path, heartbeat_s=0.5, lease_s=5)
    engine = make_engine(settings.db_url)
    migrate(engine)
    yield Worker(settings, SqlJobStore(engine), ArtifactStore(tmp_path))
    engine.dispose()


def queue_with_helper(store) -> tuple[str, str]:
    import uuid

    from api.jobs import NewJob

    job_id = uuid.uuid4().hex
    store.create(
        NewJob(id=job_id, owner="o", spec={"method": "evolution"}, inputs={}, max_attempts=3, search_helpers=1)
    )
    with store.engine.begin() as conn:
        (helper_id,) = conn.execute(text("SELECT id FROM jobs WHERE parent_id = :id"), {"id": job_id}).one()
    return job_id, helper_id


def helper_row(store, helper_id):
    with store.engine.begin() as conn:
        return conn.execute(
            text("SELECT status, attempt, error_code, result FROM jobs WHERE id = :id"), {"id": helper_id}
        ).one()


def test_a_helper_whose_job_is_still_queued_is_given_back_without_spending_an_attempt(local_worker):
    store = local_worker.store
    job_id, helper_id = queue_with_helper(store)
    with store.engine.begin() as conn:  # the lead waits out a retry backoff, so the helper is claimed first
        conn.execute(text("UPDATE jobs SET run_after = run_after + 3600 WHERE id = :id"), {"id": job_id})
    helper = store.claim(local_worker.worker_id, 5)
    assert helper.id == helper_id
    local_worker._run(helper)  # decides before starting any child
    row = helper_row(store, helper_id)
    assert (row.status, row.attempt, row.error_code) == ("queued", 0, "waiting_for_lead")


def test_a_helper_claimed_after_its_job_searched_ends_at_once(local_worker):
    from api.jobs import Lease

    store = local_worker.store
    job_id, helper_id = queue_with_helper(store)
    me = local_worker.worker_id
    lead = store.claim(me, 5)
    assert lead.id == job_id and store.advance(Lease(job_id=job_id, attempt=1, worker_id=me), "finetune", 0.5)
    local_worker._run(store.claim(me, 5))
    row = helper_row(store, helper_id)
    result = row.result if isinstance(row.result, dict) else json.loads(row.result)
    assert row.status == "succeeded" and result["joined"] is False and result["trials_added"] == 0
