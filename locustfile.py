"""Load test: the journeys people make with image2model, for locust (https://locust.io).

    locust -f locustfile.py --host http://127.0.0.1:7860            # web UI on :8089
    python -m bench.load                                            # headless, against a private app + fake FAL

Three kinds of user:
- PageVisitor: opens the page, uploads a few photos through the Gradio API the way
  gradio_client (and the page) does it (POST /gradio_api/upload, then /gradio_api/queue/join
  and the session's /gradio_api/queue/data event stream), follows the progress to the end and
  downloads one result GLB.
- ScriptUser: a REST upload (multipart), the job's SSE stream until `completed`, then all.zip.
- Watcher: many GET /api/v1/status/tasks/{id} of jobs that exist (made at the start and by the
  other users).

Every request with an id in its URL is named with `[id]`, so locust groups them. Each journey
also reports one entry of type JOURNEY (its whole duration); it fails, as does the request
where it went wrong, when a job does not end `succeeded` or a download is not what it should
be. Models: I2M_LOAD_PAGE_MODEL and I2M_LOAD_SCRIPT_MODEL (both `local/relief`, the free
offline model, unless set: a FAL model against a real server costs money per image).
"""

from __future__ import annotations

import io
import json
import os
import random
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import requests
from locust import HttpUser, between, events, task
from locust.env import Environment

EXAMPLES = sorted((Path(__file__).resolve().parent / "image2model" / "examples").glob("*.png"))
PHOTOS: list[tuple[str, bytes]] = [(p.name, p.read_bytes()) for p in EXAMPLES]
PAGE_MODEL = os.environ.get("I2M_LOAD_PAGE_MODEL", "local/relief")
SCRIPT_MODEL = os.environ.get("I2M_LOAD_SCRIPT_MODEL", "local/relief")
SEED_JOBS = int(os.environ.get("I2M_LOAD_SEED_JOBS", "3"))
JOB_SECONDS = float(os.environ.get("I2M_LOAD_JOB_SECONDS", "120"))  # a journey's job must end within this

#: ids of the jobs that exist: made at the start, and by every journey; watchers poll them
JOB_IDS: list[str] = []


class JourneyFailed(Exception):
    """A step went wrong; the request that showed it is already marked failed."""


def fail(response: Any, why: str) -> NoReturn:
    """Mark this request failed (locust records it on leaving its `with`) and end the journey."""
    response.failure(why)
    raise JourneyFailed(why)


@contextmanager
def journey(user: HttpUser, name: str) -> Iterator[None]:
    """Report the whole journey as one JOURNEY entry: failed when any step raised."""
    start = time.perf_counter()
    error: Exception | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - any error (bad JSON, a missing key...) fails the journey
        error = exc
    user.environment.events.request.fire(
        request_type="JOURNEY", name=name, response_time=(time.perf_counter() - start) * 1000,
        response_length=0, exception=error, context={})


def pick_photos() -> list[tuple[str, bytes]]:
    return random.sample(PHOTOS, random.randint(2, min(3, len(PHOTOS))))


def sse_events(response: requests.Response) -> Iterator[tuple[str, str]]:
    """(event, data) of a text/event-stream, as they arrive; comments and ids are skipped."""
    event, data = "message", []
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)


def apply_diff(value: Any, diff: list[list[Any]]) -> Any:
    """Gradio's sse_v3 sends a generator's later outputs as edits of the previous one."""
    for action, path, new in diff:
        if not path:
            value = new if action == "replace" else value + new
            continue
        target = value
        for key in path[:-1]:
            target = target[key]
        last = path[-1]
        if action == "replace":
            target[last] = new
        elif action == "append":
            target[last] += new
        elif action == "add" and isinstance(target, list):
            target.insert(int(last), new)
        elif action == "add":
            target[last] = new
        elif action == "delete":
            del target[int(last) if isinstance(target, list) else last]
    return value


def expect_glb(response: Any) -> None:
    if response.status_code != 200:
        fail(response, f"GLB download answered {response.status_code}")
    if response.content[:4] != b"glTF":
        fail(response, f"the download is not a GLB (starts {response.content[:8]!r})")


@events.test_start.add_listener
def make_jobs_to_watch(environment: Environment, **_: Any) -> None:
    """A few finished jobs exist before anyone watches (outside the figures)."""
    for n in range(SEED_JOBS):
        name, data = PHOTOS[n % len(PHOTOS)]
        answer = requests.post(f"{environment.host}/api/v1/upload/", files=[("files", (name, data, "image/png"))],
                               data={"model": "local/relief"}, timeout=60)
        answer.raise_for_status()
        JOB_IDS.append(answer.json()["job_id"])


class PageVisitor(HttpUser):
    """Opens the page, makes models of a few photos through the Gradio API, downloads one."""

    weight = 1
    wait_time = between(1, 3)

    @task
    def make_models(self) -> None:
        with journey(self, "page visitor: photos -> GLB"):
            fn_index = self.open_page()
            photos = pick_photos()
            uploaded = [self.upload(name, data) for name, data in photos]
            session = uuid.uuid4().hex[:11]
            with self.client.post("/gradio_api/queue/join", name="/gradio_api/queue/join", catch_response=True,
                                  json={"data": [uploaded, PAGE_MODEL, "per_image", {}, ""], "fn_index": fn_index,
                                        "session_hash": session, "event_data": None}) as answer:
                if answer.status_code != 200 or "event_id" not in answer.json():
                    fail(answer, f"queue/join answered {answer.status_code}: {answer.text[:200]}")
                event_id = answer.json()["event_id"]
            files = self.follow(session, event_id, len(photos))
            with self.client.get(files[0]["url"], name="/gradio_api/file=[result].glb",
                                 catch_response=True) as glb:
                expect_glb(glb)

    def open_page(self) -> int:
        """The page and its config, as a browser loads them; the config says /generate's fn_index."""
        with self.client.get("/", name="/ (page)", catch_response=True) as page:
            if page.status_code != 200 or "<html" not in page.text[:2000].lower():
                fail(page, f"the page answered {page.status_code}")
        with self.client.get("/config", name="/config", catch_response=True) as answer:
            if answer.status_code != 200:
                fail(answer, f"config answered {answer.status_code}")
            found = [int(d.get("id", n)) for n, d in enumerate(answer.json()["dependencies"])
                     if d.get("api_name") == "generate"]
            if not found:
                fail(answer, "the config has no /generate endpoint")
        return found[0]

    def upload(self, name: str, data: bytes) -> dict[str, Any]:
        """One photo, as gradio_client uploads each file: its server path comes back."""
        with self.client.post("/gradio_api/upload", files=[("files", (name, data, "image/png"))],
                              name="/gradio_api/upload", catch_response=True) as answer:
            if answer.status_code != 200:
                fail(answer, f"upload answered {answer.status_code}: {answer.text[:200]}")
            path = answer.json()[0]
        return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    def follow(self, session: str, event_id: str, photos: int) -> list[dict[str, Any]]:
        """Read the session's event stream until the event completes; the job must have
        succeeded with one GLB per photo. Returns the GLBs (Gradio FileData)."""
        outputs: list[Any] | None = None
        deadline = time.monotonic() + JOB_SECONDS
        with self.client.get("/gradio_api/queue/data", params={"session_hash": session}, stream=True,
                             timeout=JOB_SECONDS, name="/gradio_api/queue/data (stream)",
                             catch_response=True) as stream:
            if stream.status_code != 200:
                fail(stream, f"queue/data answered {stream.status_code}")
            for _, data in sse_events(stream):
                message = json.loads(data)
                if message.get("event_id") not in (None, event_id):
                    continue
                if message["msg"] == "process_generating":
                    output = message["output"]["data"]
                    outputs = output if outputs is None else [apply_diff(o, d) for o, d in zip(outputs, output)]
                elif message["msg"] == "process_completed":
                    if not message.get("success"):
                        fail(stream, f"/generate failed: {message['output'].get('error')}")
                    final = message["output"].get("data") or outputs
                    if not final:
                        fail(stream, "/generate completed with no output")
                    status = final[0]
                    models = [f for f in final[1] or [] if f["path"].endswith(".glb")]
                    JOB_IDS.append(status["job_id"])
                    if status["state"] != "succeeded":
                        fail(stream, f"job {status['job_id']} ended {status['state']}")
                    if len(models) != photos:
                        fail(stream, f"{len(models)} GLBs for {photos} photos")
                    return models
                if time.monotonic() > deadline:
                    fail(stream, f"no result after {JOB_SECONDS:.0f} s")
            fail(stream, "the event stream ended before the job did")


class ScriptUser(HttpUser):
    """A script on the REST API: upload, follow the SSE stream, download everything as a ZIP."""

    weight = 1
    wait_time = between(1, 3)

    @task
    def make_models(self) -> None:
        with journey(self, "script user: REST upload -> ZIP"):
            photos = pick_photos()
            with self.client.post("/api/v1/upload/", files=[("files", (n, d, "image/png")) for n, d in photos],
                                  data={"model": SCRIPT_MODEL}, name="/api/v1/upload/", catch_response=True) as answer:
                if answer.status_code != 202:
                    fail(answer, f"upload answered {answer.status_code}: {answer.text[:200]}")
                job_id = answer.json()["job_id"]
            JOB_IDS.append(job_id)
            self.follow(job_id)
            with self.client.get(f"/api/v1/download/{job_id}/all.zip", name="/api/v1/download/[id]/all.zip",
                                 catch_response=True) as archive:
                if archive.status_code != 200:
                    fail(archive, f"all.zip answered {archive.status_code}")
                try:
                    names = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
                except zipfile.BadZipFile:
                    fail(archive, f"all.zip is not a ZIP (starts {archive.content[:8]!r})")
                models = [n for n in names if n.endswith(".glb")]
                if len(models) != len(photos):
                    fail(archive, f"all.zip holds {len(models)} GLBs for {len(photos)} photos: {names}")

    def follow(self, job_id: str) -> None:
        """The job's event stream until its end: anything but `completed` with every image made fails."""
        with self.client.get(f"/api/v1/status/tasks/{job_id}/stream", stream=True, timeout=JOB_SECONDS,
                             name="/api/v1/status/tasks/[id]/stream", catch_response=True) as stream:
            if stream.status_code != 200:
                fail(stream, f"stream answered {stream.status_code}")
            deadline = time.monotonic() + JOB_SECONDS
            for event, data in sse_events(stream):
                if event in ("failed", "cancelled"):
                    fail(stream, f"job {job_id} {event}")
                if event == "completed":
                    state = json.loads(data)["state"]
                    if state != "succeeded":
                        fail(stream, f"job {job_id} completed as {state}")
                    return
                if time.monotonic() > deadline:
                    fail(stream, f"job {job_id} not done after {JOB_SECONDS:.0f} s")
            fail(stream, "the stream ended before the job did")


class Watcher(HttpUser):
    """Someone (or a dashboard) polling the status of jobs that exist."""

    weight = 2
    wait_time = between(0.1, 0.5)

    @task
    def poll(self) -> None:
        if not JOB_IDS:
            return
        job_id = random.choice(JOB_IDS)
        with self.client.get(f"/api/v1/status/tasks/{job_id}", name="/api/v1/status/tasks/[id]",
                             catch_response=True) as answer:
            if answer.status_code != 200:
                answer.failure(f"status answered {answer.status_code}: {answer.text[:200]}")
            elif answer.json().get("job_id") != job_id:
                answer.failure("the status is another job's")
