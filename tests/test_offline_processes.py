"""Offline builds run in processes of their own, one per core (issue 15): the build of a photo
happens there (killing that process mid-build is what the item notices), a cancel stops the
build by ending its process, and OFFLINE_PROCESSES=0 builds in the worker thread."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from image2model.jobs.model import ItemState, JobState
from image2model.providers.base import WAITING_FOR_CPU
from image2model.children import CPU_COUNT
from tests.engine_helpers import uploads_for, wait_done, wait_until
from image2model.jobs.service import Upload
from tests.imagefactory import product_photo

ROOT = Path(__file__).resolve().parent.parent
BIG = (1600, 1200)
SLOW = {"resolution": 512}  # a build of a second or two: long enough to be caught in the act


def big_photo(tmp_path) -> list[Upload]:  # noqa: ANN001
    return [Upload("big.jpg", product_photo(BIG).save(tmp_path))]


def building(runtime, job_id: str) -> bool:  # noqa: ANN001
    """The item has its core and its build process (which is starting or building)."""
    item = runtime.service.get(job_id).items[0]
    return (item.state == ItemState.RUNNING and item.message != WAITING_FOR_CPU
            and bool(runtime.runner.providers["local"].pool.busy_pids()))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_offline_builds_run_in_processes_of_their_own(runtime_factory, tmp_path, caplog) -> None:  # noqa: ANN001
    """Killed mid-build, the build process takes the build with it: the item says so, is tried
    again in a fresh process, and succeeds. A build in this process could not be killed apart."""
    runtime = runtime_factory(fal_key="", workers=2)
    pool = runtime.runner.providers["local"].pool
    job = runtime.service.create_job(big_photo(tmp_path), model="local/relief", params=SLOW)
    wait_until(lambda: building(runtime, job.id), timeout=60, interval=0.02)
    (first,) = pool.busy_pids()
    assert first != os.getpid()
    with caplog.at_level(logging.WARNING):
        os.kill(first, signal.SIGKILL)
        done = wait_done(runtime.service, job.id)
    assert done.state == JobState.SUCCEEDED, done.items[0].error
    assert any("offline_build_lost" in r.getMessage() for r in caplog.records), "the item did not notice"
    assert first not in pool.pids() and len(pool.pids()) <= CPU_COUNT
    assert done.items[0].stats["faces"] > 0


def test_several_photos_share_one_process_per_core(runtime_factory, tmp_path) -> None:  # noqa: ANN001
    runtime = runtime_factory(fal_key="", workers=8)
    job = runtime.service.create_job(uploads_for(tmp_path, [f"p{n}.png" for n in range(6)]), model="local/relief")
    done = wait_done(runtime.service, job.id)
    assert done.state == JobState.SUCCEEDED, [i.error for i in done.items]
    pids = runtime.runner.providers["local"].pool.pids()
    assert 1 <= len(pids) <= CPU_COUNT and os.getpid() not in pids


def test_a_cancel_ends_the_build_process(runtime_factory, tmp_path) -> None:  # noqa: ANN001
    runtime = runtime_factory(fal_key="", workers=2)
    pool = runtime.runner.providers["local"].pool
    job = runtime.service.create_job(big_photo(tmp_path), model="local/relief", params=SLOW)
    wait_until(lambda: building(runtime, job.id), timeout=60, interval=0.02)
    (pid,) = pool.busy_pids()
    runtime.service.cancel(job.id)
    done = wait_done(runtime.service, job.id, timeout=10)
    assert done.items[0].state == ItemState.CANCELLED
    wait_until(lambda: not pid_alive(pid), timeout=5)
    assert pid not in pool.pids()


def test_no_build_processes_when_set_to_zero(runtime_factory, tmp_path) -> None:  # noqa: ANN001
    runtime = runtime_factory(fal_key="", workers=2, offline_processes=0)
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="local/relief")
    done = wait_done(runtime.service, job.id)
    assert done.state == JobState.SUCCEEDED, done.items[0].error
    assert runtime.runner.providers["local"].pool is None


def test_deleting_a_job_during_its_build_leaves_nothing(runtime_factory, tmp_path, caplog) -> None:  # noqa: ANN001
    runtime = runtime_factory(fal_key="", workers=2)
    job = runtime.service.create_job(big_photo(tmp_path), model="local/relief", params=SLOW)
    wait_until(lambda: building(runtime, job.id), timeout=60, interval=0.02)
    with caplog.at_level(logging.INFO):
        runtime.service.delete(job.id)
        wait_until(lambda: runtime.runner.heartbeats.count() == 0, timeout=15)
    assert not runtime.files.job_dir(job.id).exists()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_a_pooled_build_leaves_the_generator_out_of_the_asking_process(tmp_path) -> None:  # noqa: ANN001
    """The result crosses the pipe as plain data: the web process that asked never loads the
    generator, OpenCV or SciPy (unpickling the generator's own result type imported all three)."""
    photo = product_photo((320, 240)).save(tmp_path)
    script = f"""
import sys
from image2model.providers.build_pool import BuildPool
pool = BuildPool(1)
built = pool.build({str(photo)!r}, {{}}, lambda fraction, stage: None, lambda: None)
pool.close()
assert built.glb[:4] == b"glTF" and built.cutout[:4] == b"\\x89PNG" and built.separated, built.mask_source
heavy = sorted(m for m in ("cv2", "scipy", "image2model.providers.relief.pipeline") if m in sys.modules)
print("loaded:", heavy)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded: []" in done.stdout, done.stdout
