"""`python app.py` as a real process: it serves, and SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from image2model.jobs.model import ItemState, JobState
from image2model.runtime import Runtime
from tests.conftest import ROOT, free_port, make_settings, wait_for_port
from tests.engine_helpers import uploads_for, wait_done, wait_until


def start_app(data_dir: Path, port: int, fal_url: str) -> subprocess.Popen:
    env = dict(os.environ)
    env.update({
        "DATA_DIR": str(data_dir), "PORT": str(port), "FAL_KEY": "test-key", "REDIS_URL": "",
        "FAL_POLL_SECONDS": "0.05", "NO_PROXY": "127.0.0.1,localhost", "I2M_TEST_FAKE_FAL_URL": fal_url,
        "PYTHONPATH": str(ROOT),
    })
    env.pop("GRADIO_SERVER_PORT", None)
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "app_process.py")], env=env, cwd=str(ROOT))


def test_app_serves_page_and_api_then_sigterm_hands_items_back(fake_fal, tmp_path) -> None:  # noqa: ANN001
    fake_fal.set_latency(0.0, 3.0)
    data_dir = tmp_path / "data"
    port = free_port()
    proc = start_app(data_dir, port, fake_fal.base_url)
    observer = Runtime(make_settings(data_dir))  # reads the same SQLite store, runs nothing
    try:
        wait_for_port(port, timeout=60)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "gradio" in page.text.lower()
        # a job created through the app's own store and queue, picked up by its embedded consumer
        job = observer.service.create_job(uploads_for(tmp_path, ["bowl.png"]), model="fal-ai/trellis")
        wait_until(lambda: observer.service.get(job.id).items[0].request_id, timeout=30)
        request_id = observer.service.get(job.id).items[0].request_id

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal after a complete graceful shutdown
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 20
        item = observer.service.get(job.id).items[0]
        assert item.state == ItemState.QUEUED and "resume" in item.message
        results = observer.files.results_dir(job.id)
        assert not results.exists() or not any(results.iterdir()), "a half-written result was left"

        # start again: the queued item resumes the same FAL request and finishes
        proc = start_app(data_dir, port, fake_fal.base_url)
        done = wait_done(observer.service, job.id, timeout=60)
        assert done.state == JobState.SUCCEEDED, done.items[0].error
        assert done.items[0].request_id == request_id
        assert len(fake_fal.submits) == 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        observer.close()


def test_the_web_process_loads_no_mesh_or_vision_library_until_it_needs_one() -> None:
    """trimesh with SciPy (~58 MB) and OpenCV (~15 MB) load on a model's first conversion or
    offline run, not when the app starts: 1,000 open streams stay under P3's 300 MB."""
    import tempfile

    probe = ("import sys, app; app.create_app(); "
             "print(sorted(m for m in ('trimesh', 'cv2', 'scipy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent,
                          env={**os.environ, "DATA_DIR": str(Path(tempfile.mkdtemp()) / "data"), "FAL_KEY": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_the_app_sends_no_telemetry_to_hugging_face_unless_asked() -> None:
    """Gradio and gradio_client (which the MCP server uses to call this app) report usage to
    huggingface.co by default; the app turns that off, and an operator's own setting wins."""
    probe = "import app; from gradio.analytics import analytics_enabled; print(analytics_enabled())"
    for given, expected in ((None, "False"), ("True", "True")):
        env = {k: v for k, v in os.environ.items() if k != "GRADIO_ANALYTICS_ENABLED"}
        if given is not None:
            env["GRADIO_ANALYTICS_ENABLED"] = given
        done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == expected, (given, done.stdout)


def test_an_upload_cut_by_a_killed_web_process_leaves_no_file_after_a_restart(fake_fal, tmp_path) -> None:  # noqa: ANN001
    """Found from outside (fifth round): kill -9 mid-upload left its temp file in `incoming`
    until a restart an hour later. The file names its writer, so the next start removes it."""
    data_dir, port = tmp_path / "data", free_port()
    proc = start_app(data_dir, port, fake_fal.base_url)
    try:
        wait_for_port(port, timeout=60)
        head = (f"POST /api/v1/upload/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Content-Type: multipart/form-data; boundary=b0\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
        part = b'--b0\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n' + b"\0" * 1_000_000
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(head + f"{len(part):x}\r\n".encode() + part + b"\r\n")  # and never the end
            incoming = data_dir / "incoming"
            wait_until(lambda: incoming.is_dir() and any(incoming.glob("upload-*")), timeout=20)
            (left,) = incoming.glob("upload-*")
            assert left.name.startswith(f"upload-{proc.pid}@"), left.name
            proc.kill()
            proc.wait(30)
        assert left.exists()
        proc = start_app(data_dir, port, fake_fal.base_url)
        wait_for_port(port, timeout=60)
        assert not left.exists(), "the killed process's upload file survived the restart"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
