"""The dashboard in headless Chromium against the real service (API + worker on loopback).

Signs in with a token, submits a tiny digits job through the form, watches the list reach
``succeeded``, opens the job page (summary, plots when the job has PNG artifacts) and downloads
the model through the page; also: a wrong token, another owner's job, cancelling a queued job.

Uses Debian's Chromium (``make browser`` installs it as root) through the ``playwright``
package; ``playwright install`` is never run (it downloads a browser: no network here).
Screenshots go to ``test-artifacts/dashboard/`` at the repository root (git-ignored).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import service_harness
from service_harness import ROOT, Service, submit

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found: `make browser` installs Debian's chromium (as root)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install -e '.[test]')"
)
expect, Page = sync_api.expect, sync_api.Page

service = service_harness.service  # fixture
worker = service_harness.worker  # fixture, used by the last test only: the tests above need their jobs to stay queued

# --headless etc. matter here: with no network, Chromium's background services would stall it.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SHOTS = ROOT / "test-artifacts" / "dashboard"
PLOTS = ("widths.png", "macs.png", "search.png", "finetune.png")
SET_HIDDEN = """hidden => {
    Object.defineProperty(document, "hidden", {value: hidden, configurable: true});
    document.dispatchEvent(new Event("visibilitychange"));
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: sync_api.Browser) -> Iterator[Page]:
    """A fresh tab (own sessionStorage); fails the test on a script error or a CSP violation."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    context.set_default_timeout(20_000)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    page.on("console", lambda msg: "Content Security Policy" in msg.text and problems.append(msg.text))
    yield page
    context.close()
    assert not problems, problems


def sign_in(page: Page, service: Service, token: str) -> None:
    page.goto(f"{service.url}/")
    expect(page).to_have_url(re.compile(r"/ui/login"))  # no token yet: sent to the login page
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")
    expect(page).to_have_url(f"{service.url}/")
    expect(page.locator("#logout")).to_be_visible()


def test_pages_carry_a_strict_csp_and_the_api_is_unchanged(service):
    for path in ("/", "/ui/login", "/ui/jobs/0123", "/ui/static/app.js", "/ui/static/app.css"):
        response = httpx.get(service.url + path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{service.url}/ui/static/app.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{service.url}/ui/static/index.html").status_code == 404  # allow-list of names only
    assert httpx.get(f"{service.url}/ui/static/..%2Fpages.py").status_code == 404
    api = httpx.get(f"{service.url}/jobs")
    assert api.status_code == 401 and "content-security-policy" not in api.headers
    assert not [p for p in httpx.get(f"{service.url}/openapi.json").json()["paths"] if p == "/" or p.startswith("/ui")]


def test_wrong_token_shows_the_login_error(page, service):
    page.goto(f"{service.url}/ui/jobs/{'0' * 32}")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.fill("#token", "ap_not-a-real-token")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("invalid token")
    expect(page).to_have_url(re.compile(r"/ui/login"))
    page.screenshot(path=SHOTS / "login-error.png")


def test_form_shows_api_errors_and_other_owners_jobs_stay_hidden(page, service):
    bob = submit(service.client(service.token("bob")))
    assert bob.status_code == 201, bob.text
    bob_id = bob.json()["id"]
    alice = service.client(service.token("alice"))
    mine = submit(alice)
    assert mine.status_code == 201, mine.text
    try:
        sign_in(page, service, alice.headers["authorization"].removeprefix("Bearer "))
        expect(page.locator(f'tr[data-job-id="{mine.json()["id"]}"]')).to_be_visible()
        expect(page.locator(f'tr[data-job-id="{bob_id}"]')).to_have_count(0)
        expect(page.locator("#jobs-count")).to_have_text("(1)")

        page.fill("#budget-value", "1.5")
        page.click("#submit")
        expect(page.locator("#submit-error")).to_contain_text("422 bad_budget")
        expect(page.locator("#submit-error")).to_contain_text("must lie in (0, 1)")
        page.screenshot(path=SHOTS / "submit-error.png", full_page=True)
        page.fill("#budget-value", "0.5")
        page.fill("#finetune-extra", "{not json")
        page.click("#submit")
        expect(page.locator("#submit-error")).to_contain_text("not valid JSON")
        page.fill("#finetune-extra", "")

        expect(page.locator("#search-options")).to_be_hidden()  # evolution's options show with it
        page.select_option("#method", "evolution")
        expect(page.locator("#search-options")).to_be_visible()
        page.fill("#search-workers", "9")  # over the API's limit: the browser refuses to send it
        assert page.eval_on_selector("#search-workers", "el => el.validity.rangeOverflow")
        page.fill("#search-workers", "2")
        page.select_option("#budget-kind", "latency_ms")  # valid in the form, refused by the API
        page.click("#submit")
        expect(page.locator("#submit-error")).to_contain_text("latency tables are measured per process")
        page.select_option("#budget-kind", "flops")
        page.fill("#budget-value", "0.5")
        page.fill("#search-workers", "1")
        page.select_option("#method", "halp")
        expect(page.locator("#search-options")).to_be_hidden()

        page.check('input[name="source"][value="onnx"]')  # an ONNX upload replaces the arch name
        expect(page.locator("#arch")).to_be_hidden()
        page.set_input_files(
            "#onnx", {"name": "bad.onnx", "mimeType": "application/octet-stream", "buffer": b"not onnx"}
        )
        with page.expect_response(lambda r: r.url.endswith("/jobs") and r.request.method == "POST") as answer:
            page.click("#submit")
        problem = answer.value.json()  # the graph reached the API's ONNX intake (no part is missing)
        assert answer.value.status == 422 and problem["error"] != "missing_field", problem
        expect(page.locator("#submit-error")).to_contain_text(f"422 {problem['error']}")
        page.screenshot(path=SHOTS / "submit-onnx-error.png", full_page=True)

        page.goto(f"{service.url}/ui/jobs/{bob_id}")
        expect(page.locator("#job-missing")).to_contain_text("No such job")
        expect(page.locator("#job-body")).to_be_hidden()

        newer = submit(alice)  # two jobs, one per page: the list pages through them, newest first
        assert newer.status_code == 201, newer.text
        page.goto(f"{service.url}/?per_page=1")
        expect(page.locator("#jobs-count")).to_have_text("(1–1 of 2)")
        expect(page.locator(f'tr[data-job-id="{newer.json()["id"]}"]')).to_be_visible()
        expect(page.locator("#jobs-newer")).to_be_disabled()
        page.click("#jobs-older")
        expect(page.locator("#jobs-count")).to_have_text("(2–2 of 2)")
        expect(page.locator(f'tr[data-job-id="{mine.json()["id"]}"]')).to_be_visible()
        expect(page.locator("#jobs-older")).to_be_disabled()
        page.click("#jobs-newer")
        expect(page.locator(f'tr[data-job-id="{newer.json()["id"]}"]')).to_be_visible()
    finally:
        service.cancel_all_queued()


def test_polling_pauses_while_hidden_a_refused_token_and_logout_sign_out(page, service):
    token = service.token("erin")
    sign_in(page, service, token)
    polls: list[float] = []
    page.on("request", lambda request: "/jobs?limit=" in request.url and polls.append(time.monotonic()))
    page.wait_for_timeout(2300)
    assert polls, "the job list is not polled"
    hidden_at = time.monotonic()
    page.evaluate(SET_HIDDEN, True)
    page.wait_for_timeout(3500)  # well over one poll interval (2 s)
    assert not [t for t in polls if t > hidden_at + 0.5], "polled while hidden"
    shown_at = time.monotonic()
    page.evaluate(SET_HIDDEN, False)
    page.wait_for_timeout(800)
    assert [t for t in polls if t >= shown_at], "did not catch up when shown again"

    page.evaluate("() => sessionStorage.setItem('autoprune.token', 'ap_revoked')")  # as if revoked
    expect(page).to_have_url(re.compile(r"/ui/login"))  # the next poll's 401 signs out
    expect(page.locator("#login-error")).to_have_text("Signed out: invalid token.")
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")
    expect(page).to_have_url(f"{service.url}/")
    page.click("#logout")
    expect(page).to_have_url(re.compile(r"/ui/login"))
    expect(page.locator("#login-error")).to_have_text("Signed out.")
    assert page.evaluate("() => sessionStorage.length") == 0
    page.goto(f"{service.url}/")
    expect(page).to_have_url(re.compile(r"/ui/login"))


def test_cancel_a_queued_job_from_its_page(page, service):
    client = service.client(service.token("carol"))
    response = submit(client)  # no worker runs yet: the job stays queued
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    sign_in(page, service, client.headers["authorization"].removeprefix("Bearer "))
    page.click(f'tr[data-job-id="{job_id}"] a')
    expect(page).to_have_url(f"{service.url}/ui/jobs/{job_id}")
    expect(page.locator("#job-status")).to_have_text("queued")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    expect(page.locator("#job-status")).to_have_text("cancelled")
    expect(page.locator("#cancel")).to_be_hidden()
    expect(page.locator("#job-error")).to_contain_text("cancelled")
    page.screenshot(path=SHOTS / "job-cancelled.png", full_page=True)
    assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_submit_watch_report_and_download(page, service, worker, tmp_path):
    token = service.token("dana")
    sign_in(page, service, token)
    expect(page.locator("#jobs-empty")).to_be_visible()
    page.fill("#arch", "resnet20")
    page.select_option("#method", "global")
    page.fill("#epochs", "1")
    page.fill("#finetune-extra", '{"max_steps_per_epoch": 4}')
    page.click("#submit")
    expect(page.locator("#submit-status")).to_contain_text("Queued job")
    row = page.locator("tr[data-job-id]")
    expect(row).to_have_count(1)
    job_id = row.get_attribute("data-job-id")
    spec = service.job(job_id).spec
    assert spec["finetune"] == {"epochs": 1, "max_steps_per_epoch": 4} and spec["dataset"] == "digits"

    expect(row).to_have_attribute("data-status", re.compile("running|succeeded"), timeout=30_000)  # no reload
    page.screenshot(path=SHOTS / "jobs-running.png", full_page=True)
    # the default job also times the pruned model against the original (never slower): 10-40 s more
    expect(row).to_have_attribute("data-status", "succeeded", timeout=150_000)
    expect(row.locator("progress")).to_have_attribute("value", "1")
    page.screenshot(path=SHOTS / "jobs-succeeded.png", full_page=True)

    row.locator("a").click()
    expect(page).to_have_url(f"{service.url}/ui/jobs/{job_id}")
    expect(page.locator("#job-status")).to_have_text("succeeded")
    summary = page.locator("#summary tbody")
    for label in ("top-1 (%)", "MACs (M)", "params (M)", "latency torch (ms)"):
        expect(summary).to_contain_text(label)
    artifacts = {a["name"]: a for a in service.client(token).get(f"/jobs/{job_id}/artifacts").json()["data"]}
    expect(page.locator("#artifacts li")).to_have_count(len(artifacts))
    plots = [name for name in PLOTS if name in artifacts]
    expect(page.locator("#plots img")).to_have_count(len([n for n in artifacts if n.endswith(".png")]))
    for name in plots:
        image = page.locator(f'#plots img[alt="{name}"]')
        expect(image).to_have_attribute("src", re.compile(r"^blob:"))
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    page.screenshot(path=SHOTS / "job-succeeded.png", full_page=True)
    if "report.html" in artifacts:
        expect(page.locator("#report-link")).to_have_attribute("href", re.compile(r"^blob:"))
        with page.context.expect_page() as opened:
            page.click("#report-link")
        report = opened.value
        report.wait_for_load_state()
        assert report.url.startswith("blob:") and report.locator("body").inner_text().strip()
        report.screenshot(path=SHOTS / "report.png", full_page=True)
        report.close()

    with page.expect_download() as info:
        page.get_by_role("button", name="model.safetensors", exact=True).click()
    download = info.value
    assert download.suggested_filename == "model.safetensors"
    saved = tmp_path / "model.safetensors"
    download.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == artifacts["model.safetensors"]["sha256"]
    from safetensors.torch import load_file

    tensors = load_file(str(saved))
    assert tensors and all(t.numel() > 0 for t in tensors.values())
