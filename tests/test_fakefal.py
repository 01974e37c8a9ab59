"""The fake FAL server, driven by the real fal-client so the fake stays honest."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from typing import Iterator

import fal_client
import fal_client.client as fc
import httpx
import numpy as np
import pytest
import trimesh
from PIL import Image

from tests.fakefal import FakeFal, fal_env, patch_fal_client, running_fake, sample_glb

AUTH = {"Authorization": "Key test-key"}


@pytest.fixture
def fake() -> Iterator[FakeFal]:
    with running_fake() as fake:
        yield fake


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


def client() -> fal_client.SyncClient:
    """A fresh client per test: fal-client caches auth and httpx clients per instance."""
    return fal_client.SyncClient(key="test-key")


# ---- patching ---------------------------------------------------------------


def test_patch_fal_client_sets_and_restores_globals() -> None:
    before = (fc.RUN_URL_FORMAT, fc.QUEUE_URL_FORMAT, fc.REST_URL, fc.CDN_URL, fc.MAX_ATTEMPTS)
    restore = patch_fal_client("http://127.0.0.1:9/")
    assert fc.RUN_URL_FORMAT == "http://127.0.0.1:9/run/"
    assert fc.QUEUE_URL_FORMAT == "http://127.0.0.1:9/queue/"
    assert fc.REST_URL == "http://127.0.0.1:9/rest"
    assert fc.CDN_URL == "http://127.0.0.1:9/cdn"
    assert fc.MAX_ATTEMPTS == 3 and fc.BASE_DELAY == 0.01 and fc.MAX_DELAY == 0.05
    restore()
    assert (fc.RUN_URL_FORMAT, fc.QUEUE_URL_FORMAT, fc.REST_URL, fc.CDN_URL, fc.MAX_ATTEMPTS) == before


def test_running_fake_sets_and_restores_env() -> None:
    old_key = os.environ.get("FAL_KEY")
    with running_fake() as fake:
        assert os.environ["FAL_KEY"] == "test-key"
        assert "127.0.0.1" in os.environ["NO_PROXY"]
        assert os.path.isdir(os.environ["FAL_HOME_DIR"])
        assert fc.REST_URL == fake.base_url + "/rest"
    assert os.environ.get("FAL_KEY") == old_key
    assert fc.REST_URL == "https://rest.fal.ai"


def test_subprocess_can_patch_from_env(fake: FakeFal, tmp_path) -> None:
    """A subprocess gets only env vars; patch_fal_client(url) is all it needs."""
    code = (
        "import os, fal_client\n"
        "from tests.fakefal import patch_fal_client, FAKE_FAL_URL_ENV\n"
        "patch_fal_client(os.environ[FAKE_FAL_URL_ENV])\n"
        "c = fal_client.SyncClient()\n"
        "url = c.upload(b'abc', 'text/plain', 'a.txt')\n"
        "print(c.run('fal-ai/triposr', {'image_url': url})['model_mesh']['url'])\n"
    )
    env = {**os.environ, **fal_env(fake, home_dir=str(tmp_path))}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=os.getcwd(),
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip().startswith(fake.base_url + "/files/")
    assert fake.submits[-1]["via"] == "run"


# ---- uploads ----------------------------------------------------------------


def test_upload_via_cdn(fake: FakeFal) -> None:
    data = png_bytes((255, 0, 0))
    url = client().upload(data, "image/png", "red.png")
    assert url.startswith(fake.base_url + "/files/") and url.endswith("/red.png")
    got = httpx.get(url)
    assert got.content == data and got.headers["content-type"] == "image/png"
    assert got.headers["content-length"] == str(len(data))
    assert fake.uploads == [{"name": "red.png", "content_type": "image/png", "size": len(data),
                             "sha256": hashlib.sha256(data).hexdigest(), "path": "cdn"}]


def test_upload_image_without_name_gets_one(fake: FakeFal) -> None:
    url = client().upload_image(Image.new("RGB", (8, 8), (0, 0, 255)), format="png")
    assert httpx.get(url).status_code == 200
    assert fake.uploads[0]["name"].endswith(".png")


def test_upload_falls_back_to_storage_when_cdn_fails(fake: FakeFal) -> None:
    fake.fail_cdn_upload = True
    data = png_bytes((0, 255, 0))
    url = client().upload(data, "image/png", "green.png")
    assert httpx.get(url).content == data
    assert [u["path"] for u in fake.uploads] == ["fallback"]
    assert ("POST", "/rest/storage/upload/initiate") in fake.requests_log


def test_upload_fail_knob_once_uses_fallback(fake: FakeFal) -> None:
    fake.fail(500, on="upload", times=1)
    url = client().upload(b"hello", "text/plain", "h.txt")
    assert httpx.get(url).content == b"hello"
    assert fake.uploads[0]["path"] == "fallback"


# ---- queue: submit, status, result --------------------------------------------


def test_submit_status_walks_queued_inprogress_completed(fake: FakeFal) -> None:
    fake.set_latency(0.3, 0.6)
    c = client()
    url = c.upload(png_bytes((1, 2, 3)), "image/png", "x.png")
    handle = c.submit("fal-ai/trellis", {"image_url": url})
    seen = list(handle.iter_events(with_logs=True, interval=0.03))

    queued = [s for s in seen if isinstance(s, fal_client.Queued)]
    running = [s for s in seen if isinstance(s, fal_client.InProgress)]
    assert queued and running and isinstance(seen[-1], fal_client.Completed)
    assert queued[0].position == 2 and queued[-1].position == 0
    messages = [line["message"] for s in running for line in s.logs]
    assert any(re.fullmatch(r"Sampling: ([1-9]\d?)%", m) for m in messages)
    assert set(running[0].logs[0]) == {"message", "level", "source", "timestamp"}
    done = seen[-1]
    assert done.metrics == {"inference_time": 0.6} and done.error is None
    assert "Sampling: 100%" in [line["message"] for line in done.logs]
    # Completed sticks, and logs are null unless asked for.
    again = c.status("fal-ai/trellis", handle.request_id, with_logs=False)
    assert isinstance(again, fal_client.Completed) and again.logs is None
    assert fake.status_polls == len(seen) + 1


def stream_events(url: str) -> list[dict]:
    """Every event of one status stream, read to its end (the server closes it)."""
    events = []
    with httpx.stream("GET", url + "/stream", params={"logs": 1}, headers=AUTH, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    return events


def test_status_stream_sends_each_change_then_closes_after_completed(fake: FakeFal) -> None:
    fake.set_latency(0.3, 0.6)
    handle = client().submit("fal-ai/trellis", {"image_url": "https://example.com/a.png"})
    events = stream_events(handle.status_url)
    kinds = [e["status"] for e in events]
    assert kinds[0] == "IN_QUEUE" and kinds[-1] == "COMPLETED" and "IN_PROGRESS" in kinds
    assert kinds.index("COMPLETED") == len(kinds) - 1, "the stream ends with COMPLETED"
    positions = [e["queue_position"] for e in events if e["status"] == "IN_QUEUE"]
    assert positions == sorted(positions, reverse=True) and positions[-1] == 0
    # each event carries only new log lines: together they are the full log, without repeats
    streamed = [line["message"] for e in events for line in e["logs"] or []]
    polled = [line["message"] for line in client().status("fal-ai/trellis", handle.request_id, with_logs=True).logs]
    assert streamed == polled
    assert events[-1]["metrics"] == {"inference_time": 0.6}
    # a stream opened after the end answers the current status at once, and closes
    assert [e["status"] for e in stream_events(handle.status_url)] == ["COMPLETED"]
    assert fake.status_streams == 2


def test_status_stream_ends_when_the_request_is_cancelled(fake: FakeFal) -> None:
    fake.set_latency(0.0, 30.0)
    handle = client().submit("fal-ai/trellis", {"image_url": "https://example.com/a.png"})
    threading.Timer(0.3, handle.cancel).start()
    started = time.monotonic()
    events = stream_events(handle.status_url)
    assert time.monotonic() - started < 2.0
    assert events[-1]["status"] == "COMPLETED" and events[-1]["error_type"] == "request_cancelled"


def test_status_stream_knobs(fake: FakeFal) -> None:
    fake.set_latency(0.0, 1.0)
    handle = client().submit("fal-ai/trellis", {"image_url": "https://example.com/a.png"})
    fake.stream_breaks_after = 1
    assert [e["status"] for e in stream_events(handle.status_url)] == ["IN_PROGRESS"]
    fake.status_stream = False
    missing = httpx.get(handle.status_url + "/stream", headers=AUTH)
    assert missing.status_code == 404


def test_status_http_codes_and_result_before_completion(fake: FakeFal) -> None:
    fake.set_latency(0.0, 0.3)
    handle = client().submit("fal-ai/trellis", {"image_url": "https://example.com/a.png"})
    status = httpx.get(handle.status_url, params={"logs": 1}, headers=AUTH)
    assert status.status_code == 202 and status.json()["status"] == "IN_PROGRESS"
    assert status.headers["x-fal-request-id"] == handle.request_id
    early = httpx.get(handle.response_url, headers=AUTH)
    assert early.status_code == 400 and early.json() == {"detail": "Request is still in progress"}
    handle.get(interval=0.02)
    assert httpx.get(handle.status_url, headers=AUTH).status_code == 200


def test_subscribe_returns_textured_colourful_glb(fake: FakeFal) -> None:
    fake.set_latency(0.05, 0.1)
    result = client().subscribe("fal-ai/trellis", {"image_url": "https://example.com/a.png"},
                                interval=0.02)
    mesh_file = result["model_mesh"]
    assert mesh_file["content_type"] == "model/gltf-binary" and mesh_file["file_name"] == "model.glb"
    assert set(result["timings"]) >= {"inference"}
    data = httpx.get(mesh_file["url"]).content
    assert len(data) == mesh_file["file_size"] and data[:4] == b"glTF"
    scene = trimesh.load(io.BytesIO(data), file_type="glb")
    (geom,) = scene.geometry.values()
    texture = geom.visual.material.baseColorTexture
    assert texture is not None and geom.visual.uv is not None
    pixels = np.asarray(texture.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels // 64, axis=0)) >= 8  # many distinct vivid colours


@pytest.mark.parametrize(
    ("app", "arguments", "mesh_field", "extra"),
    [
        ("fal-ai/trellis-2", {"image_url": "u"}, "model_glb", set()),
        ("fal-ai/hunyuan3d-v3/image-to-3d", {"input_image_url": "u"}, "model_glb",
         {"model_urls", "thumbnail"}),
        ("fal-ai/hunyuan-3d/v3.1/pro/image-to-3d", {"input_image_url": "u"}, "model_glb",
         {"model_urls", "thumbnail"}),
        ("fal-ai/meshy/v6/image-to-3d", {"image_url": "u"}, "model_glb", set()),
        ("tripo3d/tripo/v2.5/image-to-3d", {"image_url": "u"}, "model_mesh",
         {"rendered_image", "task_id"}),
        ("fal-ai/hyper3d/rodin", {"input_image_urls": ["u"]}, "model_mesh", {"seed", "textures"}),
        ("fal-ai/hunyuan3d/v2/turbo", {"input_image_url": "u"}, "model_mesh", {"seed", "timings"}),
        ("fal-ai/trellis/multi", {"image_urls": ["u", "v"]}, "model_mesh", {"timings"}),
        ("fal-ai/triposr", {"image_url": "u"}, "model_mesh", {"timings"}),
    ],
)
def test_output_shape_per_endpoint(fake: FakeFal, app: str, arguments: dict,
                                   mesh_field: str, extra: set[str]) -> None:
    out = client().run(app, arguments)
    assert mesh_field in out and extra <= set(out)
    assert httpx.get(out[mesh_field]["url"]).content[:4] == b"glTF"
    if "model_urls" in extra:
        assert out["model_urls"]["glb"]["url"] == out[mesh_field]["url"]
    for image_field in {"thumbnail", "rendered_image"} & extra:
        png = httpx.get(out[image_field]["url"])
        assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"


def test_result_bytes_and_omit_output_knobs(fake: FakeFal) -> None:
    fake.result_bytes = b"this is not a GLB"
    out = client().subscribe("fal-ai/trellis", {"image_url": "u"}, interval=0.01)
    assert httpx.get(out["model_mesh"]["url"]).content == b"this is not a GLB"
    assert out["model_mesh"]["file_size"] == len(b"this is not a GLB")

    fake.omit_output_field = True
    out = client().subscribe("fal-ai/trellis-2", {"image_url": "u"}, interval=0.01)
    assert "model_glb" not in out


def test_submit_with_endpoint_subpath_polls_owner_alias_urls(fake: FakeFal) -> None:
    c = client()
    handle = c.submit("fal-ai/hunyuan3d/v2/multi-view",
                      {"front_image_url": "f", "back_image_url": "b", "left_image_url": "l"})
    assert f"/queue/fal-ai/hunyuan3d/requests/{handle.request_id}" in handle.status_url
    assert "model_mesh" in c.result("fal-ai/hunyuan3d/v2/multi-view", handle.request_id)


def test_unknown_request_is_404(fake: FakeFal) -> None:
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        client().status("fal-ai/trellis", "no-such-id")
    assert err.value.status_code == 404


# ---- cancel -----------------------------------------------------------------


def test_cancel_running_request(fake: FakeFal) -> None:
    fake.set_latency(0.2, 5.0)
    c = client()
    handle = c.submit("fal-ai/trellis", {"image_url": "u"})
    c.cancel("fal-ai/trellis", handle.request_id)  # via from_request_id URLs
    assert fake.cancelled == [handle.request_id]

    status = handle.status(with_logs=True)
    assert isinstance(status, fal_client.Completed) and status.error == "Request was cancelled"
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        handle.get()
    assert err.value.status_code == 400 and "cancelled" in str(err.value)
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        handle.cancel()  # a second cancel: already over
    assert err.value.status_code == 400
    assert err.value.response.json() == {"status": "ALREADY_COMPLETED"}


def test_cancel_completed_and_unknown(fake: FakeFal) -> None:
    c = client()
    handle = c.submit("fal-ai/trellis", {"image_url": "u"})
    handle.get(interval=0.01)
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        handle.cancel()
    assert err.value.status_code == 400
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        c.cancel("fal-ai/trellis", "no-such-id")
    assert err.value.status_code == 404
    assert fake.cancelled == [] and fake.cancel_calls == [handle.request_id, "no-such-id"]


def test_subscribe_client_timeout_cancels(fake: FakeFal) -> None:
    fake.set_latency(0.0, 5.0)
    with pytest.raises(fal_client.FalClientTimeoutError):
        client().subscribe("fal-ai/trellis", {"image_url": "u"}, client_timeout=1.1)
    assert fake.cancelled == [fake.submits[0]["request_id"]]


# ---- failures -----------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 422, 429, 500])
def test_fail_knob_on_submit_raises_http_error(fake: FakeFal, status: int) -> None:
    fake.fail(status)
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        client().submit("fal-ai/trellis", {"image_url": "u"})
    assert err.value.status_code == status
    assert err.value.response.headers["x-fal-request-id"]
    attempts = fake.requests_log.count(("POST", "/queue/fal-ai/trellis"))
    assert attempts == (fc.MAX_ATTEMPTS if status == 429 else 1)
    if status == 401:
        assert err.value.message == "No user found for Key ID and Secret"
    if status == 403:
        assert "Exhausted balance" in err.value.message
    if status == 422:
        assert err.value.message[0]["loc"] == ["body", "image_url"]
    if status == 500:
        assert err.value.error_type == "runner_server_error"
    assert fake.submits == []


def test_429_once_is_retried_then_succeeds(fake: FakeFal) -> None:
    fake.fail(429, times=1)
    out = client().subscribe("fal-ai/trellis", {"image_url": "u"}, interval=0.01)
    assert "model_mesh" in out
    assert fake.requests_log.count(("POST", "/queue/fal-ai/trellis")) == 2
    assert len(fake.submits) == 1


@pytest.mark.parametrize("on", ["status", "result"])
def test_fail_knob_on_status_and_result(fake: FakeFal, on: str) -> None:
    c = client()
    handle = c.submit("fal-ai/trellis", {"image_url": "u"})
    fake.fail(500, on=on, times=1, detail="boom")
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        handle.get(interval=0.01)
    assert err.value.status_code == 500 and err.value.message == "boom"
    assert "model_mesh" in handle.get(interval=0.01)  # times=1: next call works


def test_missing_auth_is_401(fake: FakeFal) -> None:
    resp = httpx.post(fake.base_url + "/queue/fal-ai/trellis", json={"image_url": "u"})
    assert resp.status_code == 401
    assert resp.json() == {"detail": "No user found for Key ID and Secret"}


def test_clear_failures_and_reset(fake: FakeFal) -> None:
    fake.fail(403)
    fake.clear_failures()
    client().run("fal-ai/trellis", {"image_url": "u"})
    fake.fail(403)
    fake.reset()
    client().run("fal-ai/trellis", {"image_url": "u"})
    assert len(fake.submits) == 1 and fake.requests_log == [("POST", "/run/fal-ai/trellis")]


# ---- validation and counting ----------------------------------------------------


@pytest.mark.parametrize(
    ("app", "arguments", "missing"),
    [
        ("fal-ai/trellis", {"seed": 1}, "image_url"),
        ("fal-ai/trellis/multi", {"image_url": "u"}, "image_urls"),
        ("fal-ai/hunyuan3d/v2", {"image_url": "u"}, "input_image_url"),
        ("fal-ai/hunyuan3d/v2/multi-view", {"front_image_url": "f"}, "back_image_url"),
        ("tripo3d/tripo/v2.5/multiview-to-3d", {"image_url": "u"}, "front_image_url"),
        ("fal-ai/hyper3d/rodin", {"prompt": "cat"}, "input_image_urls"),
    ],
)
def test_missing_required_field_is_422(fake: FakeFal, app: str, arguments: dict, missing: str) -> None:
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        client().submit(app, arguments)
    assert err.value.status_code == 422
    assert err.value.message == [{"loc": ["body", missing], "msg": "field required", "type": "missing"}]


def test_submit_counts_by_sha256(fake: FakeFal) -> None:
    c = client()
    red, blue = png_bytes((255, 0, 0)), png_bytes((0, 0, 255))
    red_url = c.upload(red, "image/png", "red.png")
    red_again_url = c.upload(red, "image/png", "red-copy.png")  # same bytes, new URL
    blue_url = c.upload(blue, "image/png", "blue.png")
    c.submit("fal-ai/trellis", {"image_url": red_url})
    c.submit("fal-ai/trellis", {"image_url": red_again_url})
    c.submit("fal-ai/trellis/multi", {"image_urls": [red_url, blue_url]})
    c.run("fal-ai/hunyuan3d/v2/multi-view",
          {"front_image_url": red_url, "back_image_url": red_url, "left_image_url": blue_url})
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    assert fake.submit_counts_by_sha256 == {sha(red): 4, sha(blue): 2}
    assert [s["via"] for s in fake.submits] == ["queue", "queue", "queue", "run"]


def test_data_uri_inputs_are_counted(fake: FakeFal) -> None:
    data = png_bytes((9, 9, 9))
    client().run("fal-ai/triposr", {"image_url": fal_client.encode(data, "image/png")})
    assert fake.submit_counts_by_sha256 == {hashlib.sha256(data).hexdigest(): 1}


# ---- async client ---------------------------------------------------------------


def test_async_client_upload_and_subscribe(fake: FakeFal) -> None:
    async def main() -> dict:
        ac = fal_client.AsyncClient(key="test-key")
        url = await ac.upload(png_bytes((5, 5, 5)), "image/png", "a.png")
        return await ac.subscribe("fal-ai/trellis-2", {"image_url": url}, interval=0.01)

    out = asyncio.run(main())
    assert httpx.get(out["model_glb"]["url"]).content == sample_glb()
    assert sum(fake.submit_counts_by_sha256.values()) == 1


def test_stop_makes_clients_fail_fast() -> None:
    fake = FakeFal().start()
    restore = patch_fal_client(fake.base_url)
    try:
        c = client()
        c.run("fal-ai/triposr", {"image_url": "u"})
        fake.stop()
        with pytest.raises(httpx.TransportError):
            c.run("fal-ai/triposr", {"image_url": "u"})
    finally:
        restore()
        fake.stop()
