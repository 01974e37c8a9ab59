"""The operator's page at /admin: behind ADMIN_KEY, in Chromium against the real app.

Screenshots of every step go to tests/artifacts/admin/ (gitignored). The page refreshes
itself every couple of seconds, so each check waits for the page to show the store's truth.
The queue test runs on both backends: in Redis mode the page is the whole cluster's picture.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from image2model.examples import EXAMPLES_DIR
from image2model.jobs.model import ItemState, JobState
from image2model.jobs.service import Upload
from tests.engine_helpers import wait_done
from tests.rest_helpers import assert_error

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "admin"
SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
KEY = "operator-key-for-the-tests-7f3a9c"


@pytest.fixture(autouse=True, scope="module")
def artifacts_dir() -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[[], Any]]:
    """Pages in fresh browser contexts (no login cookie), closed before the server stops."""
    contexts: list[Any] = []

    def build() -> Any:
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        contexts.append(context)
        return context.new_page()

    yield build
    for context in contexts:
        context.close()


def uploads(tmp_path: Path, names: list[str]) -> list[Upload]:
    """Copies of the example photos (the service moves an upload's file into the job)."""
    made = []
    for n, name in enumerate(names):
        target = tmp_path / f"upload{time.monotonic_ns()}-{n}" / name
        target.parent.mkdir(parents=True)
        shutil.copy(EXAMPLES_DIR / name, target)
        made.append(Upload(name, target))
    return made


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def log_in(page: Any, url: str, password: str = KEY) -> None:
    page.goto(url + "/admin")
    page.locator("input[data-testid=textbox]").fill("admin")
    page.locator("input[data-testid=password]").fill(password)
    page.locator("button", has_text="Login").click()


def wait_for(page: Any, check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        page.wait_for_timeout(200)
    raise AssertionError(f"timed out waiting for {what}; the page says:\n{page.locator('body').inner_text()}")


def card(page: Any, label: str) -> str:
    return page.locator(f'[data-card="{label}"] .value').inner_text().strip()


def state_count(page: Any, state: str) -> int:
    return int(page.locator(f'#adm-states [data-state="{state}"] b').inner_text())


def job_rows(page: Any) -> list[list[str]]:
    """The recent-jobs table as text: [[id, created, model, state, done / images, owner], ...]."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('#adm-jobs [role=row]'))
        .map(r => Array.from(r.querySelectorAll('[role=gridcell], td')).map(c => c.innerText.trim()))
        .filter(cells => cells.length && cells[0])""")


def in_hand(page: Any) -> str:
    """Images in the (only) worker's hand, from the workers table."""
    cells = page.locator("#adm-workers tbody td:nth-child(5)")
    return cells.first.inner_text().strip() if cells.count() == 1 else ""


def row_of(page: Any, job_id: str) -> list[str] | None:
    return next((row for row in job_rows(page) if row[0] == job_id), None)


def result_text(page: Any) -> str:
    notice = page.locator("#adm-result .adm-notice")
    return notice.inner_text().strip() if notice.count() else ""


def act(page: Any, button: str, job_id: str) -> str:
    """Type a job id, press Cancel or Delete, and return what the page answered."""
    page.locator("#adm-job-id textarea, #adm-job-id input").first.fill(job_id)
    before = result_text(page)
    page.click(f"#adm-{button}")
    return wait_for(page, lambda: (text := result_text(page)) and text != before and text, f"an answer to {button}")


# --- the page is off without a key, and nothing under /admin answers without the login -----
@SQLITE
def test_without_admin_key_admin_is_a_plain_404(live_server_factory, backend) -> None:  # noqa: ANN001
    server = live_server_factory(admin_key="")
    with httpx.Client(base_url=server.url, follow_redirects=True) as client:
        for path in ("/admin", "/admin/", "/admin/config", "/admin/gradio_api/info", "/admin/login"):
            answer = client.get(path)
            assert answer.status_code == 404, (path, answer.status_code, answer.text[:200])
        assert client.post("/admin/gradio_api/queue/join", json={}).status_code == 404
        assert client.get("/").status_code == 200  # the public page is untouched


@SQLITE
def test_admin_routes_refuse_anyone_without_the_key(live_server_factory, backend) -> None:  # noqa: ANN001
    server = live_server_factory(admin_key=KEY)
    assert KEY not in repr(server.runtime.settings)
    with httpx.Client(base_url=server.url) as client:
        answer = client.get("/admin")
        assert answer.status_code == 307 and answer.headers["location"] == "admin/"
        assert client.head("/admin").status_code == 307  # as GET (a 404 before; found from outside)
        page = client.get("/admin/")
        assert page.status_code == 200 and "auth_required" in page.text and "adm-cards" not in page.text
        for path in ("/admin/config", "/admin/gradio_api/info", "/admin/gradio_api/openapi.json"):
            assert client.get(path).status_code == 401, path
        for path in ("/admin/gradio_api/queue/join", "/admin/gradio_api/call/refresh", "/admin/gradio_api/upload"):
            assert client.post(path, json={"data": []}).status_code == 401, path
        assert client.post("/admin/login", data={"username": "admin", "password": KEY + "x"}).status_code == 400
        assert client.post("/admin/login", data={"username": "root", "password": KEY}).status_code == 400
        assert client.get("/admin/config").status_code == 401
        assert client.post("/admin/login", data={"username": "admin", "password": KEY}).status_code == 200
        config = client.get("/admin/config")
        assert config.status_code == 200 and "adm-cards" in config.text
        # the admin page's events are no part of any public API
        assert not client.get("/admin/gradio_api/info").json()["named_endpoints"]
    public = httpx.get(server.url + "/gradio_api/info").json()
    assert not any("refresh" in name or "delete" in name for name in public["named_endpoints"])


@SQLITE
def test_password_tries_are_limited(live_server_factory, backend) -> None:  # noqa: ANN001
    """Found from outside (fourth round): 120 wrong passwords were all answered. Past
    RATE_LIMIT_LOGIN the login answers 429 with Retry-After, even to the right key, and the
    page itself stays reachable."""
    server = live_server_factory(admin_key=KEY, rate_limit_login="3/minute")
    with httpx.Client(base_url=server.url) as client:
        for n in range(3):
            assert client.post("/admin/login", data={"username": "admin", "password": f"guess{n}"}).status_code == 400
        refused = client.post("/admin/login/", data={"username": "admin", "password": KEY})
        body = assert_error(refused, 429, "rate_limited", "Too many login attempts")
        assert int(refused.headers["retry-after"]) >= 1 and body["details"]["limit"] == 3
        assert "access-token" not in refused.headers.get("set-cookie", "")
        assert client.get("/admin/").status_code == 200


# --- in Chromium ------------------------------------------------------------------------
@SQLITE
def test_operator_sees_jobs_workers_failures_and_deletes_a_job(
        live_server_factory, fake_fal, new_page, tmp_path, backend) -> None:  # noqa: ANN001
    server = live_server_factory(admin_key=KEY)
    service, store = server.runtime.service, server.runtime.store
    page = new_page()

    log_in(page, server.url, password="not-the-key")
    wait_for(page, lambda: page.get_by_text("Incorrect Credentials").count(), "the refusal")
    shot(page, "01-wrong-key-refused")
    assert page.locator("#adm-cards").count() == 0

    log_in(page, server.url)
    page.locator("#adm-cards .adm-card").first.wait_for(timeout=20000)
    me = str(os.getpid())  # the embedded worker runs in this (the server's) process
    wait_for(page, lambda: me in page.locator("#adm-workers").inner_text(), "this process listed as a worker")
    assert " s ago" in page.locator("#adm-workers").inner_text()  # its last heartbeat
    assert card(page, "Worker processes") == "1"

    # jobs made after the page opened show up by themselves (no reload)
    done = wait_done(service, service.create_job(uploads(tmp_path, ["duck.png"]), model="local/relief").id)
    fake_fal.fail(422, on="submit")
    failed = wait_done(service, service.create_job(uploads(tmp_path, ["mug.png"]), model="fal-ai/trellis").id)
    assert done.state == JobState.SUCCEEDED and failed.state == JobState.FAILED
    error = failed.items[0].error
    assert error is not None
    # the table refreshes itself: a row first drawn while its job ran must come to show its end
    wait_for(page, lambda: (row_of(page, done.id) or [])[2:5] == ["local/relief", "succeeded", "1 / 1"]
             and (row_of(page, failed.id) or [])[2:5] == ["fal-ai/trellis", "failed", "1 / 1"],
             "both jobs in the table, as they ended")
    wait_for(page, lambda: state_count(page, "succeeded") == 1 and state_count(page, "failed") == 1, "jobs by state")
    failures = wait_for(page, lambda: error.code in (t := page.locator("#adm-failures").inner_text()) and t,
                        "the failure group")
    assert error.message in failures
    assert card(page, "FAL images this hour").endswith("/ 200")
    shot(page, "02-jobs-workers-failures")

    # pick a job from the table, delete it; the store no longer has it
    page.locator("#adm-jobs [role=gridcell]", has_text=done.id).first.click()
    wait_for(page, lambda: page.locator("#adm-job-id textarea, #adm-job-id input").first.input_value() == done.id,
             "the picked id in the box")
    page.click("#adm-delete")
    answer = wait_for(page, lambda: result_text(page), "the delete answer")
    assert f"Deleted job {done.id}" in answer
    assert store.get(done.id) is None
    wait_for(page, lambda: row_of(page, done.id) is None, "the deleted job gone from the table")
    shot(page, "03-deleted")

    assert "No job with id 0123456789abcdef" in act(page, "delete", "0123456789abcdef")
    shot(page, "04-unknown-id")
    assert "already ended (failed)" in act(page, "cancel", failed.id)

    # a running image: in a worker's hand, and stopped from the page (FAL is told)
    fake_fal.clear_failures()
    fake_fal.set_latency(0.0, 120.0)
    slow = service.create_job(uploads(tmp_path, ["vase.png"]), model="fal-ai/trellis")
    wait_for(page, lambda: card(page, "Running") == "1" and in_hand(page) == "1", "the image in the worker's hand")
    shot(page, "05-running")
    assert act(page, "cancel", slow.id) == f"Cancelled job {slow.id}: 1 running image told to stop."
    assert wait_done(service, slow.id, timeout=30).state == JobState.CANCELLED
    wait_for(page, lambda: card(page, "Running") == "0" and in_hand(page) == "0", "the worker's hands empty")


def test_operator_sees_the_queue_wait_with_no_worker_and_cancels_from_the_page(
        live_server_factory, new_page, tmp_path, backend) -> None:  # noqa: ANN001
    server = live_server_factory(admin_key=KEY, embedded_worker=False, fal_key="", fal_images_per_hour=0)
    service, store = server.runtime.service, server.runtime.store
    page = new_page()
    log_in(page, server.url)
    page.locator("#adm-cards .adm-card").first.wait_for(timeout=20000)
    assert card(page, "Images waiting") == "0"
    assert "spending guard off" in page.locator('[data-card="FAL images this hour"]').inner_text()

    job = service.create_job(uploads(tmp_path, ["duck.png", "mug.png", "vase.png"]), model="local/relief")
    wait_for(page, lambda: card(page, "Images waiting") == "3", "three images waiting")
    wait_for(page, lambda: card(page, "Oldest wait").endswith(" s") and card(page, "Oldest wait") != "0 s",
             "the oldest wait counting")
    assert "No worker process is alive" in page.locator("#adm-workers").inner_text()
    assert card(page, "Worker processes") == "0"
    assert row_of(page, job.id)[3:5] == ["queued", "0 / 3"]
    shot(page, f"06-queue-waiting-no-worker-{backend}")

    answer = act(page, "cancel", job.id)
    assert answer == f"Cancelled job {job.id}: 3 waiting images will not start."
    assert [item.state for item in store.get(job.id).items] == [ItemState.CANCELLED] * 3
    wait_for(page, lambda: card(page, "Images waiting") == "0" and state_count(page, "cancelled") == 1,
             "the queue emptied")
    assert row_of(page, job.id)[3:5] == ["cancelled", "3 / 3"]
    shot(page, f"07-cancelled-{backend}")

    assert "Type a job id" in act(page, "delete", "   ")
    assert f"Deleted job {job.id}" in act(page, "delete", job.id)
    assert store.get(job.id) is None
