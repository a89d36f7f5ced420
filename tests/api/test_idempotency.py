"""Idempotent submission (RELIABILITY.md F6): a retried POST /jobs under one Idempotency-Key queues one job."""

from __future__ import annotations

import threading
import uuid

import httpx
import pytest
import service_harness
import torch
from safetensors.torch import save
from service_harness import TINY_FINETUNE, submit

from api.client import Client
from autoprune.models import create_model

service = service_harness.service  # fixture

FIELDS = {"arch": "resnet20", "dataset": "digits", "budget": '{"flops": 0.5}', "finetune": TINY_FINETUNE}


def post(client: httpx.Client, key: str | bytes, weights: bytes | None = None, **fields: str) -> httpx.Response:
    values = {**FIELDS, **fields}
    parts: list[tuple[str, object]] = [(k, (None, v)) for k, v in values.items()]
    if weights is not None:
        parts.append(("weights", ("w.safetensors", weights)))
    return client.post("/jobs", files=parts, headers={"Idempotency-Key": key})


def job_dirs(service) -> set[str]:
    return {p.name for p in (service.data_dir / "jobs").iterdir()} if (service.data_dir / "jobs").exists() else set()


def weights(seed: int) -> bytes:
    torch.manual_seed(seed)
    return save({k: v.contiguous() for k, v in create_model("resnet20", num_classes=10).state_dict().items()})


@pytest.fixture
def owner() -> str:
    return f"alice-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def alice(service, owner):
    with service.client(service.token(owner)) as c:
        yield c
    service.cancel_all_queued()  # no worker runs in this module


def test_a_repeat_gets_the_first_job_and_a_different_request_is_refused(service, alice):
    key = str(uuid.uuid4())
    first = post(alice, key)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers, first.text
    again = post(alice, key)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"] and alice.get("/jobs").json()["count"] == 1
    changed = post(alice, key, budget='{"flops": 0.4}')
    assert changed.status_code == 422 and changed.json()["error"] == "idempotency_key_reused"
    assert first.json()["id"] in changed.json()["detail"]
    with service.client(service.token("bob")) as bob:  # keys belong to their owner
        theirs = post(bob, key)
        assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    assert alice.get("/jobs").json()["count"] == 1
    assert not list((service.data_dir / "uploads").glob("*.partial"))


def test_file_contents_are_part_of_the_request_and_a_refused_one_keeps_no_key(alice):
    key = str(uuid.uuid4())
    refused = post(alice, key, weights=b"not a safetensors file")
    assert refused.status_code == 422 and refused.json()["error"] != "idempotency_key_reused"
    first = post(alice, key, weights=weights(0))  # nothing was queued under the key: it is free
    assert first.status_code == 201, first.text
    assert post(alice, key, weights=weights(0)).json()["id"] == first.json()["id"]
    other = post(alice, key, weights=weights(1))  # same names, other tensors
    assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"
    assert submit(alice).status_code == 201 and submit(alice).status_code == 201  # unkeyed: a job each
    assert alice.get("/jobs").json()["count"] == 3


def test_concurrent_repeats_queue_one_job_and_keep_one_input_dir(service, alice, owner):
    key = str(uuid.uuid4())
    before = job_dirs(service)
    answers: list[httpx.Response] = []

    def send() -> None:
        with service.client(service.token(owner)) as c:
            answers.append(post(c, key))

    threads = [threading.Thread(target=send) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in answers) == [200, 200, 201], [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert job_dirs(service) - before == {answers[0].json()["id"]}  # the others' inputs were removed


@pytest.mark.parametrize("key", ["", "has space", "é".encode(), "x" * 256])
def test_a_malformed_key_is_a_400(alice, key):
    response = post(alice, key)
    assert response.status_code == 400 and response.json()["error"] == "bad_idempotency_key"


class LosesFirstAnswer(httpx.HTTPTransport):
    """The server gets the POST and queues the job; the client never hears back (a dropped connection)."""

    lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST" and not self.lost:
            self.lost += 1
            response.read()
            response.close()
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


def test_the_client_retries_a_lost_answer_without_a_second_job(service, alice, owner):
    transport = LosesFirstAnswer()
    with Client(service.url, service.token(owner), transport=transport) as client:
        job = client.submit(FIELDS, {})
    assert transport.lost == 1
    listed = alice.get("/jobs").json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == job["id"]
