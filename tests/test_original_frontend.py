"""The original image2model frontend's requests, replayed as it makes them.

A page on another origin (a second local server, as the SvelteKit app on :5173 would be) runs,
in real Chromium, the same calls as that frontend's `src/lib/services/api.js`: `uploadBatch`
(fetch with FormData, `face_limit`, a Bearer header), `createProgressStream` (an EventSource
with listeners only for task_progress, task_completed, task_failed and file_update) and
`getJobFiles` (files[] and download_urls[]). In both auth modes: open (the frontend still sends
its own Bearer key) and API_KEYS, where the EventSource carries the job's token.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.rest_helpers import OPEN_LIMITS, assert_error, backend, png, post_images, wait_job  # noqa: F401

KEY = "frontend-key-0123456789abcdef"

FRONTEND_JS = """
async ({base, key, files, streamBy, keepOpen}) => {
  // uploadBatch(files, faceLimit)
  const form = new FormData();
  for (const f of files) {
    const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
    form.append('files', new File([bytes], f.name, {type: 'image/png'}));
  }
  form.append('face_limit', 5000);
  const response = await fetch(`${base}/upload/`, {method: 'POST', body: form,
                                                 headers: {'Authorization': `Bearer ${key}`}});
  const data = await response.json();
  if (!response.ok) return {uploadError: data.detail || data.message || data.error};
  const taskId = data.task_id || data.job_id;
  const seen = {taskId, jobId: data.job_id, notes: data.notes, progress: [], files: [], completed: null, failed: null, errors: [],
                completedEvents: 0};
  // createProgressStream(taskId, callbacks); the other two: a client that follows job_id itself
  const streamUrl = {
    task_id: `${base}/status/tasks/${taskId}/stream`,
    job_id: `${base}/status/tasks/${data.job_id}/stream`,
    job_id_and_token: `${base}/status/tasks/${data.job_id}/stream?token=${encodeURIComponent(data.token)}`,
  }[streamBy];
  await new Promise(resolve => {
    const eventSource = new EventSource(streamUrl);
    eventSource.addEventListener('task_progress', (event) => {
      const d = JSON.parse(event.data);
      seen.progress.push({progress: d.progress, total: d.total_files ?? d.total, current: d.current,
                          message: d.message});
    });
    eventSource.addEventListener('task_completed', (event) => {
      const d = JSON.parse(event.data);
      seen.completedEvents += 1;
      seen.completed = {jobId: d.result?.job_id || d.job_id || taskId, lastEventId: event.lastEventId,
                        current: d.current, total: d.total_files, progress: d.progress};
      if (!keepOpen) { eventSource.close(); resolve(); }
    });
    eventSource.addEventListener('task_failed', (event) => {
      const d = JSON.parse(event.data);
      seen.failed = d.error || 'Processing failed';
      eventSource.close();
      resolve();
    });
    eventSource.addEventListener('file_update', (event) => {
      const d = JSON.parse(event.data);
      seen.files.push({index: d.file_index, name: d.filename, status: d.status, progress: d.progress,
                       message: d.message});
    });
    eventSource.onerror = () => {
      // a plain EventSource reconnects after the end; the 204 it gets makes it stop for good
      if (eventSource.readyState === EventSource.CLOSED) { seen.errors.push('Connection lost'); resolve(); }
    };
  });
  if (!seen.completed) return seen;
  // getJobFiles(jobId), then a download the way a plain <a href> makes it: no header at all
  const list = await fetch(`${base}/download/${seen.completed.jobId}/all`,
                           {headers: {'Authorization': `Bearer ${key}`}});
  const listed = await list.json();
  seen.listed = (listed.files || []).map((file, index) => ({
    filename: file.filename, size: file.size || 0, downloadUrl: listed.download_urls?.[index],
    mimeType: file.mime_type}));
  const first = await fetch(seen.listed[0].downloadUrl);
  const head = new Uint8Array(await first.arrayBuffer()).slice(0, 4);
  seen.firstDownload = {status: first.status, magic: String.fromCharCode(...head)};
  return seen;
}
"""


class FrontendOrigin:
    """A second local server that serves a blank page: the frontend's origin."""

    def __init__(self) -> None:
        class Blank(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                body = b"<!doctype html><title>original frontend</title><p>frontend"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Blank)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def frontend() -> Iterator[FrontendOrigin]:
    origin = FrontendOrigin()
    yield origin
    origin.server.shutdown()


def run_frontend(browser: Any, frontend: FrontendOrigin, server: Any, key: str, stream_by: str = "task_id",
                 keep_open: bool = False) -> dict[str, Any]:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(frontend.origin + "/upload")
        # photos big enough that a build takes a few stream events (0.2 s; 96x72 took 28 ms, and
        # the stream could see a photo only waiting and then done)
        files = [{"name": name, "b64": base64.b64encode(png(seed, (1600, 1200))).decode()}
                 for name, seed in (("chair.png", 1), ("table.png", 2))]
        return page.evaluate(FRONTEND_JS, {"base": f"{server.url}/api/v1", "key": key, "files": files,
                                           "streamBy": stream_by, "keepOpen": keep_open})
    finally:
        context.close()


@pytest.mark.parametrize("mode", ["open", "api_keys"])
def test_the_original_frontend_follows_a_job_to_its_files(browser, frontend, live_server_factory,  # noqa: ANN001
                                                          mode: str) -> None:
    keys = {"api_keys": KEY} if mode == "api_keys" else {}
    server = live_server_factory(fal_key="", cors_origins=frontend.origin, workers=1, **keys, **OPEN_LIMITS)
    seen = run_frontend(browser, frontend, server, KEY if keys else "anything-the-frontend-has")
    assert "uploadError" not in seen, seen
    assert seen["errors"] == [] and seen["failed"] is None, seen
    # "0 of 2 files completed" for ever was the bug: the counts move and reach the end
    assert seen["completed"]["jobId"] == seen["jobId"]
    assert (seen["taskId"] == seen["jobId"]) == (mode == "open"), "keyed: task_id carries the job's token"
    assert seen["completed"]["current"] == seen["completed"]["total"] == 2
    assert {p["total"] for p in seen["progress"]} == {2}
    currents = [p["current"] for p in seen["progress"]]
    assert currents == sorted(currents) and seen["completed"]["progress"] == 100
    assert any(0 < p["progress"] < 100 for p in seen["progress"]), seen["progress"]
    assert all(p["message"] for p in seen["progress"])
    # per-file progress, by name: each file went from waiting to done, and working was seen
    # (for at least one: the offline model can make a small photo between two stream events)
    working = []
    for index, name in enumerate(("chair.png", "table.png")):
        updates = [u for u in seen["files"] if u["index"] == index]
        assert {u["name"] for u in updates} == {name}
        statuses = [u["status"] for u in updates]
        # in order, and done at the end (the first photo may be done before the stream opens)
        order = [("pending", "processing", "completed").index(status) for status in statuses]
        assert order == sorted(order) and statuses[-1] == "completed", statuses
        assert updates[-1]["progress"] == 100
        working.append("processing" in statuses)
    assert any(working), seen["files"]
    assert any(u["status"] == "processing" and 0 < u["progress"] < 100 for u in seen["files"]), seen["files"]
    # the results, listed and downloaded as the frontend does
    # each model, then the offline model's cut-out preview ("what the model saw")
    assert [f["filename"] for f in seen["listed"]] == ["chair.glb", "chair.preview.png", "table.glb",
                                                       "table.preview.png"]
    assert all(f["downloadUrl"].startswith(server.url + "/api/v1/download/") for f in seen["listed"])
    assert {f["mimeType"] for f in seen["listed"]} == {"model/gltf-binary", "image/png"}
    assert seen["firstDownload"] == {"status": 200, "magic": "glTF"}
    assert "face_limit was ignored" in seen["notes"][0]


def test_without_its_token_a_keyed_stream_fails_plainly_and_a_finished_stream_stays_closed(  # noqa: ANN001
        browser, frontend, live_server_factory) -> None:
    server = live_server_factory(fal_key="", cors_origins=frontend.origin, api_keys=KEY, sse_retry_ms=200,
                                 **OPEN_LIMITS)
    refused = run_frontend(browser, frontend, server, KEY, stream_by="job_id")
    assert refused["errors"] == ["Connection lost"] and refused["progress"] == [], refused
    # an EventSource left open after the end reconnects once with Last-Event-ID, gets 204 and
    # stops: the completed event arrives once, then the source is closed for good
    kept = run_frontend(browser, frontend, server, KEY, stream_by="job_id_and_token", keep_open=True)
    assert kept["completedEvents"] == 1 and kept["errors"] == ["Connection lost"], kept
    assert int(kept["completed"]["lastEventId"]) == server.runtime.service.get(kept["jobId"]).version


def test_the_original_api_routes_and_shapes(live_server_factory) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="", api_keys=KEY, **OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        health = client.get("/api/v1/health/")
        assert health.status_code == 200 and health.json()["status"] == "healthy"
        assert client.get("/api/v1/health").json()["status"] == "healthy"
        # its tests send X-API-Key; the frontend sends Bearer: both are the key
        upload = post_images(client, [("a.png", png())], headers={"X-API-Key": KEY})
        assert upload.status_code == 202, upload.text
        job_id, task_id = upload.json()["job_id"], upload.json()["task_id"]
        assert task_id.startswith(job_id + ".")  # keyed: the task id carries the job's token
        wait_job(server, job_id)
        for path in (f"/api/v1/status/tasks/{task_id}", f"/api/v1/status/tasks/{task_id}/status",
                     f"/api/v1/download/{task_id}/all"):
            assert client.get(path).status_code == 200, path  # no key: the attached token opens it
        assert_error(client.post(f"/api/v1/jobs/{task_id}/cancel"), 401, "missing_api_key")
        assert client.post(f"/api/v1/jobs/{task_id}/cancel", headers={"X-API-Key": KEY}).status_code == 202
        for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}):
            for path in (f"/api/v1/status/tasks/{job_id}", f"/api/v1/status/tasks/{job_id}/status"):
                assert client.get(path, headers=headers).json()["state"] == "succeeded"
        assert_error(client.get(f"/api/v1/status/tasks/{job_id}/status", headers={"X-API-Key": "wrong"}),
                     401, "invalid_api_key")
        # every error body has a plain-text detail, which the frontend shows
        missing = client.get(f"/api/v1/status/tasks/{job_id}")
        assert_error(missing, 401, "missing_api_key", "X-API-Key", "?token=")
        assert isinstance(missing.json()["detail"], str)


def test_job_tokens_open_one_job_for_reading_only(live_server_factory) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="", api_keys=KEY, **OPEN_LIMITS)
    key = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        first = post_images(client, [("a.png", png(1))], headers=key).json()
        second = post_images(client, [("b.png", png(2))], headers=key).json()
        wait_job(server, first["job_id"])
        wait_job(server, second["job_id"])
        job, token = first["job_id"], first["token"]
        assert first["token_expires_at"] > first["items"][0]["queued_at"] + 3000
        assert KEY not in json.dumps(first)
        reads = [f"/api/v1/status/tasks/{job}", f"/api/v1/download/{job}/all", f"/api/v1/download/{job}/a.glb",
                 f"/api/v1/download/{job}/all.zip"]
        for path in reads:
            assert client.get(path, params={"token": token}).status_code == 200, path
        with client.stream("GET", f"/api/v1/status/tasks/{job}/stream", params={"token": token}) as stream:
            assert stream.status_code == 200
        # the token is this job's only, can't change anything, and a forged or expired one fails
        other = second["job_id"]
        assert_error(client.get(f"/api/v1/status/tasks/{other}", params={"token": token}), 401, "invalid_token")
        assert_error(client.get(f"/api/v1/download/{other}/b.glb", params={"token": token}), 401, "invalid_token")
        assert_error(client.post(f"/api/v1/jobs/{job}/cancel", params={"token": token}), 401, "missing_api_key")
        assert_error(client.delete(f"/api/v1/jobs/{job}", params={"token": token}), 401, "missing_api_key")
        expiry, _, signature = token.partition(".")
        forged = f"{int(expiry) + 3600}.{signature}"
        assert_error(client.get(f"/api/v1/status/tasks/{job}", params={"token": forged}), 401, "invalid_token")
        tokens = server.app.state.rest_api.security.tokens
        stale, _ = tokens.mint(job, now=0)
        assert_error(client.get(f"/api/v1/status/tasks/{job}", params={"token": stale}), 401, "invalid_token")
        # the list gives absolute links with fresh tokens, which work without a key
        listed = client.get(f"/api/v1/download/{job}/all", headers=key).json()
        url = listed["download_urls"][0]
        assert url.startswith(server.url) and "token=" in url
        assert httpx.get(url).content[:4] == b"glTF"


def test_cors_preflights_are_answered_as_cors_means(live_server_factory) -> None:  # noqa: ANN001
    allowed = "http://localhost:5173"
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,x-api-key"}
    for origins in ("", allowed):
        server = live_server_factory(fal_key="", cors_origins=origins, **OPEN_LIMITS)
        refused = httpx.options(server.url + "/api/v1/upload/", headers={"Origin": "http://evil.example", **preflight})
        assert refused.status_code == 204, (origins, refused.status_code, refused.text)
        assert not [h for h in refused.headers if h.lower().startswith("access-control-allow")], refused.headers
    good = httpx.options(server.url + "/api/v1/upload/", headers={"Origin": allowed, **preflight})
    assert good.status_code == 200 and good.headers["access-control-allow-origin"] == allowed
    assert "x-api-key" in good.headers["access-control-allow-headers"].lower()
    # an OPTIONS that is no preflight still gets the API's own answer
    plain = httpx.options(server.url + "/api/v1/upload/")
    assert plain.status_code == 405 and plain.json()["error"]["code"] == "method_not_allowed"


def test_download_links_use_the_address_a_trusted_proxy_reports(live_server_factory) -> None:  # noqa: ANN001
    forwarded = {"X-Forwarded-Host": "3d.example.org", "X-Forwarded-Proto": "https"}
    for trusted, base in (("127.0.0.1", "https://3d.example.org"), ("", None)):
        server = live_server_factory(fal_key="", trusted_proxies=trusted, **OPEN_LIMITS)
        base = base or server.url  # an untrusted peer's X-Forwarded-* headers are ignored
        with httpx.Client(base_url=server.url, timeout=30) as client:
            job_id = post_images(client, [("a.png", png())]).json()["job_id"]
            wait_job(server, job_id)
            urls = client.get(f"/api/v1/download/{job_id}/all", headers=forwarded).json()["download_urls"]
        assert urls == [f"{base}/api/v1/download/{job_id}/a.glb",
                        f"{base}/api/v1/download/{job_id}/a.preview.png"], (trusted, urls)
