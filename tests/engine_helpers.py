"""Small helpers for tests that run jobs through the real engine."""

from __future__ import annotations

import io
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image, ImageDraw

from image2model.jobs.model import Job
from image2model.jobs.service import JobService, Upload


def make_image(path: Path, seed: int = 0, size: tuple[int, int] = (96, 72), fmt: str | None = None) -> Path:
    """A distinct, colourful object on a white background; `seed` makes each one different."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    colour = tuple(int(c) for c in rng.integers(0, 200, 3))
    w, h = size
    draw.ellipse((w * 0.2, h * 0.15, w * 0.8, h * 0.85), fill=colour)
    draw.rectangle((w * 0.4, h * 0.4, w * 0.4 + 4 + seed % 7, h * 0.6), fill=(255, 255 - seed % 200, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


def uploads_for(tmp: Path, names: list[str]) -> list[Upload]:
    return [Upload(name, make_image(tmp / f"src{n}" / name, seed=n)) for n, name in enumerate(names)]


def wait_done(service: JobService, job_id: str, timeout: float = 60.0) -> Job:
    """Wait on the store's change events (no sleeping loop) until the job is finished."""
    deadline = time.monotonic() + timeout
    job = service.get(job_id)
    while not job.state.terminal:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"job {job_id} still {job.state}: {[i.message for i in job.items]}")
        service.wait_for_change(job_id, job.version, min(left, 1.0))
        job = service.get(job_id)
    return job


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


def load_glb(path: Path) -> trimesh.Scene:
    return trimesh.load(io.BytesIO(path.read_bytes()), file_type="glb", force="scene")


def welded(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The surface with its UV seams joined.

    glTF stores a vertex on a texture seam once per UV (the offline model's front and
    back sample different parts of its texture), so closedness is a property of the
    positions: this is what a slicer or an STL export sees.
    """
    out = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False)
    out.merge_vertices(merge_tex=True, merge_norm=True)
    return out


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL: no warning, no cleanup, as a crash or the OOM killer would."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
