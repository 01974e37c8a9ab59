"""The named Gradio API from JavaScript: the real @gradio/client (npm, pinned in tests/js) on
Node against the real app on uvicorn with its embedded consumer, offline model, no FAL key.

Also how uploads are named: the name a client gives (FileData.orig_name, a File's name, the
uploaded file name) names the results; a nameless Blob becomes image-<n> with its type's
extension.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from gradio.utils import NamedString

from image2model.examples import EXAMPLES_DIR
from image2model.web.page.files import uploads_from
from tests.engine_helpers import make_image

JS_DIR = Path(__file__).resolve().parent / "js"
SCRIPT = JS_DIR / "client_test.mjs"
INSTALL = "npm ci --prefix tests/js"


def file_data(path: Path, orig_name: str | None) -> dict:
    """What Gradio hands /generate for one uploaded file (preprocess=False)."""
    return {"path": str(path), "url": None, "size": None, "orig_name": orig_name, "mime_type": None,
            "is_stream": False, "meta": {"_type": "gradio.FileData"}}


def test_uploads_are_named_as_the_client_named_them(tmp_path: Path) -> None:
    def upload(folder: str, name: str, fmt: str = "PNG") -> Path:
        return make_image(tmp_path / folder / name, fmt=fmt)

    uploads = uploads_from([
        file_data(upload("a", "duck.png"), "duck.png"),  # a File, or Python's handle_file
        file_data(upload("b", "blob"), "/home/me/photos/mug.png"),  # JS handle_file("…/mug.png")
        file_data(upload("c", "blob"), "C:\\photos\\vase.png"),  # a Windows path as the name
        file_data(upload("d", "blob", "JPEG"), None),  # a bare Blob or Buffer from JavaScript
        file_data(upload("e", "blob"), "blob"),
        file_data(upload("f", "star.webp", "WEBP"), None),  # no orig_name: the uploaded file name
        NamedString(str(upload("g", "shoe.png"))),  # the page: a path string
    ])
    assert [u.name for u in uploads] == ["duck.png", "mug.png", "vase.png", "image-4.jpg", "image-5.png",
                                         "star.webp", "shoe.png"]
    notes = tmp_path / "h" / "blob"
    notes.parent.mkdir()
    notes.write_text("not a picture")
    (single,) = uploads_from(file_data(notes, None))  # one file without its list, and not an image
    assert single.name == "image-1" and single.path == notes


def node_and_client() -> str:
    """The node binary, or skip (saying why) when Node or the installed client is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        reason = "node/npm not found; the @gradio/client test is skipped"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    major = subprocess.run([node, "-p", "process.versions.node.split('.')[0]"], capture_output=True,
                           text=True, timeout=30).stdout.strip()
    if not major.isdigit() or int(major) < 20:
        reason = f"node {major or '?'} is older than 20 (no global File); the @gradio/client test is skipped"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    installed = JS_DIR / "node_modules" / "@gradio" / "client" / "package.json"
    if not installed.is_file():  # npm and its registry are system parts; the package is ours to install
        done = subprocess.run([npm, "ci", "--prefix", str(JS_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{INSTALL} failed: {done.stderr[-2000:]}"
    pinned = json.loads((JS_DIR / "package.json").read_text())["dependencies"]["@gradio/client"]
    version = json.loads(installed.read_text())["version"]
    assert version == pinned, f"tests/js has @gradio/client {version}, package.json pins {pinned}: run {INSTALL}"
    return node


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_javascript_client_names_results_after_its_files(live_server_factory, backend) -> None:  # noqa: ANN001
    node = node_and_client()
    server = live_server_factory(fal_key="", workers=1)  # one worker: the cancel meets waiting images
    run = subprocess.run([node, str(SCRIPT), server.url, str(EXAMPLES_DIR)], cwd=JS_DIR,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"node failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    summary = json.loads(run.stdout.strip().splitlines()[-1])

    service, files = server.runtime.service, server.runtime.files
    named = service.get(summary["named"]["job_id"])
    assert [item.name for item in named.items] == ["duck.png", "mug.png"]
    assert [item.model_file.name for item in named.items] == ["duck.glb", "mug.glb"]
    # the models only; the offline model's cut-out ("what the model saw") is in the status
    assert summary["named_files"] == ["duck.glb", "mug.glb"]
    assert summary["named"] == service.status(named), "/generate's last update is not the job's status"
    glb = files.result_path(named.id, "duck.glb")
    assert glb.read_bytes()[:4] == b"glTF" and summary["glb_bytes"] == glb.stat().st_size

    nameless = service.get(summary["nameless"]["job_id"])
    assert [item.name for item in nameless.items] == ["image-1.png", "image-2.png"]
    assert [item.model_file.name for item in nameless.items] == ["image-1.glb", "image-2.glb"]
    stored = sorted(p.name for p in files.inputs_dir(nameless.id).iterdir())
    assert stored == ["00-image-1.png", "01-image-2.png"], "a nameless upload was stored without its type"

    cancelled = service.get(summary["cancelled"]["job_id"])
    assert cancelled.state.value == "cancelled" and len(cancelled.items) == 5
