"""Conversions and gallery thumbnails are made in a child process, once, and say why they
failed (media/mesh_jobs.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trimesh
from PIL import Image

from image2model.errors import AppError
from image2model.media.mesh_jobs import converted_model, exports_dir, thumbnail
from image2model.storage import FileStore
from tests.fakefal import fal_sized_glb, sample_glb

ROOT = Path(__file__).resolve().parent.parent
JOB = "a" * 32


def stored_model(tmp_path: Path, data: bytes) -> tuple[FileStore, Path]:
    files = FileStore(tmp_path / "data")
    source = files.job_dir(JOB) / "results" / "ball.glb"
    source.parent.mkdir(parents=True)
    source.write_bytes(data)
    return files, source


def test_the_work_is_done_in_another_process(tmp_path: Path) -> None:
    """In a fresh process that converts to every format and draws a thumbnail, trimesh (which
    the work needs, 58 MB before any model) is never loaded: the work ran elsewhere."""
    files, source = stored_model(tmp_path, sample_glb())
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from image2model.media.mesh_jobs import converted_model, thumbnail
        from image2model.storage import FileStore
        files, source = FileStore(Path({str(tmp_path / "data")!r})), Path({str(source)!r})
        made = {{fmt: str(converted_model(files, {JOB!r}, source, fmt)[0]) for fmt in ("obj", "stl", "ply")}}
        made["thumbnail"] = str(thumbnail(files, {JOB!r}, source, 64))
        print(json.dumps({{"made": made, "trimesh": "trimesh" in sys.modules}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["trimesh"] is False, "the conversion ran in the asking process"
    made = {kind: Path(path) for kind, path in answer["made"].items()}
    assert len(trimesh.load(made["stl"], file_type="stl").faces) == 2304
    assert len(trimesh.load(made["ply"], file_type="ply").faces) == 2304
    assert made["obj"].name == "ball.obj.zip" and made["obj"].read_bytes()[:2] == b"PK"
    assert Image.open(made["thumbnail"]).size == (64, 64)


def test_a_file_is_made_once_and_again_only_for_a_newer_model(tmp_path: Path) -> None:
    files, source = stored_model(tmp_path, sample_glb())
    first, name, kind = converted_model(files, JOB, source, "STL")
    assert (name, kind) == ("ball.stl", "model/stl")
    made_at = first.stat().st_mtime_ns
    time.sleep(0.05)
    assert converted_model(files, JOB, source, "stl")[0].stat().st_mtime_ns == made_at, "made twice"
    os.utime(source, (time.time() + 5, time.time() + 5))  # the model was replaced
    assert converted_model(files, JOB, source, "stl")[0].stat().st_mtime_ns != made_at


def test_a_model_that_cannot_be_converted_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    files, source = stored_model(tmp_path, b"glTF" + b"\0" * 64)
    with pytest.raises(AppError) as caught:
        converted_model(files, JOB, source, "obj")
    assert caught.value.code == "invalid_model"
    assert "could not be read" in caught.value.message
    with pytest.raises(ValueError, match="GLB"):
        thumbnail(files, JOB, source, 64)
    assert not exports_dir(files, JOB).exists() or not list(exports_dir(files, JOB).iterdir())


def test_an_unknown_format_is_refused_before_any_work(tmp_path: Path) -> None:
    files, source = stored_model(tmp_path, sample_glb())
    with pytest.raises(AppError) as caught:
        converted_model(files, JOB, source, "fbx")
    assert caught.value.code == "unsupported_format"
    assert not exports_dir(files, JOB).exists()


def test_what_the_child_makes_is_what_the_converter_makes(tmp_path: Path) -> None:
    from image2model.media.meshes import convert

    files, source = stored_model(tmp_path, sample_glb())
    made = converted_model(files, JOB, source, "ply")[0]
    direct = trimesh.load(io.BytesIO(convert(source, "ply")[0]), file_type="ply")
    via_child = trimesh.load(made, file_type="ply")
    assert (len(via_child.vertices), len(via_child.faces)) == (len(direct.vertices), len(direct.faces))


def test_a_conversion_that_takes_too_long_is_stopped_and_leaves_nothing(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The child is killed at TIMEOUT_SECONDS (here a model of 327,680 faces against 0.3 s:
    its OBJ takes about 10 s), and the request is told so, with no half file kept."""
    from image2model.media import mesh_jobs

    files, source = stored_model(tmp_path, fal_sized_glb(7, 64))
    monkeypatch.setattr(mesh_jobs, "TIMEOUT_SECONDS", 0.3)
    with pytest.raises(AppError) as caught:
        converted_model(files, JOB, source, "obj")
    assert caught.value.code == "conversion_failed" and "was stopped" in caught.value.message
    assert not exports_dir(files, JOB).exists() or not list(exports_dir(files, JOB).iterdir())
