"""The job engine end to end: real huey consumer, real fal-client against the fake FAL server,
in both the embedded (SQLite) and Redis modes."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from image2model.errors import AppError
from image2model.jobs.model import ItemState, JobState
from image2model.jobs.service import Upload
from tests.engine_helpers import load_glb, make_image, uploads_for, wait_done, wait_until, welded


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_25_image_job_completes_with_25_named_glbs(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    fake_fal.set_latency(0.2, 0.5)
    runtime = runtime_factory(workers=25)
    names = [f"photo{n}.jpg" for n in range(23)] + ["shoe.jpg", "shoe.jpg"]
    uploads = uploads_for(tmp_path, names)
    job = runtime.service.create_job(uploads, model="fal-ai/trellis")
    started = time.monotonic()
    done = wait_done(runtime.service, job.id, timeout=90)
    took = time.monotonic() - started
    assert done.state == JobState.SUCCEEDED, [i.error for i in done.items]
    glbs = [i.model_file.name for i in done.items]
    assert glbs[:23] == [f"photo{n}.glb" for n in range(23)]
    assert glbs[23:] == ["shoe.glb", "shoe-2.glb"]
    for item in done.items:
        path = runtime.files.result_path(job.id, item.model_file.name)
        assert path.stat().st_size == item.model_file.size
        assert len(load_glb(path).geometry) >= 1
        assert item.stats["faces"] > 0 and item.stats["vertices"] > 0
        assert item.request_id and item.attempts == 1
        assert item.started_at and item.finished_at and item.finished_at >= item.started_at
    # exactly one submit per input, and the 25 ran side by side, not one after another
    assert len(fake_fal.submits) == 25
    assert sorted(fake_fal.submit_counts_by_sha256.values()) == [1] * 25
    assert took < 0.7 * 25 / 2, f"items did not run in parallel ({took:.1f} s)"


def test_multi_view_job_makes_one_model_from_all_views(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    runtime = runtime_factory()
    uploads = uploads_for(tmp_path, ["front.png", "back.png", "left.png"])
    job = runtime.service.create_job(uploads, model="fal-ai/hunyuan3d/v2/multi-view", mode="multi_view")
    assert len(job.items) == 1 and job.items[0].name == "front.png + back.png + left.png"
    done = wait_done(runtime.service, job.id)
    assert done.state == JobState.SUCCEEDED, done.items[0].error
    assert done.items[0].model_file.name == "front.glb"
    (submit,) = fake_fal.submits
    args = submit["arguments"]
    for field in ("front_image_url", "back_image_url", "left_image_url"):
        assert fake_fal.file_bytes(args[field]) is not None
    # the views arrive in the order given
    uploaded = [fake_fal.file_bytes(args[f]) for f in ("front_image_url", "back_image_url", "left_image_url")]
    assert len({hashlib.sha256(b).hexdigest() for b in uploaded}) == 3
    assert sum(fake_fal.submit_counts_by_sha256.values()) == 3


def test_progress_comes_from_fal_logs_and_queue(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    fake_fal.set_latency(0.5, 2.0)
    runtime = runtime_factory()
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
    seen: list[tuple[float, str]] = []
    current = runtime.service.get(job.id)
    while not current.state.terminal:
        item = current.items[0]
        seen.append((item.progress, item.message))
        runtime.service.wait_for_change(job.id, current.version, 2.0)
        current = runtime.service.get(job.id)
    progresses = [p for p, _ in seen]
    assert progresses == sorted(progresses), "progress went backwards"
    assert any("queue" in m.lower() for _, m in seen)
    assert any(5 < p < 90 for p in progresses), seen
    assert current.items[0].progress == 100


def test_completion_comes_from_the_status_stream_without_polling(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    fake_fal.set_latency(0.3, 1.0)
    runtime = runtime_factory()
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png", "b.png"]), model="fal-ai/trellis")
    done = wait_done(runtime.service, job.id)
    assert done.state == JobState.SUCCEEDED, [i.error for i in done.items]
    assert fake_fal.status_streams >= 2
    assert fake_fal.status_polls == 0, "the stream said COMPLETED: nobody needed to poll"
    # the learned duration comes from the moment the stream said COMPLETED
    assert 1.2 <= runtime.store.typical_duration("fal-ai/trellis") <= 1.3 + 0.5


@pytest.mark.parametrize("trouble", ["missing", "drops", "fails", "silent"])
def test_polling_takes_over_when_the_status_stream_cannot_be_used(runtime_factory, fake_fal, tmp_path,
                                                                  trouble) -> None:  # noqa: ANN001
    fake_fal.set_latency(0.2, 0.6)
    if trouble == "missing":
        fake_fal.status_stream = False  # 404, as from a FAL without the endpoint
    elif trouble == "drops":
        fake_fal.stream_breaks_after = 1  # the connection drops after the first event
    elif trouble == "silent":
        fake_fal.set_latency(0.2, 4.0)  # long enough for three quiet seconds
        fake_fal.stream_silent = True  # as behind a proxy that buffers events
    else:
        fake_fal.fail(502, on="stream")
    runtime = runtime_factory()
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
    done = wait_done(runtime.service, job.id)
    assert done.state == JobState.SUCCEEDED, done.items[0].error
    assert fake_fal.status_streams >= 1 and fake_fal.status_polls > 0
    assert len(fake_fal.submits) == 1 and done.items[0].attempts == 1


@pytest.mark.parametrize(
    ("status", "code", "words"),
    [
        (401, "fal_key_rejected", "rejected the API key"),
        (403, "fal_access_denied", "balance is exhausted"),
        (422, "fal_invalid_input", "Image could not be processed"),
    ],
)
def test_fal_client_errors_fail_the_item_without_retry(runtime_factory, fake_fal, tmp_path, status, code,
                                                        words) -> None:  # noqa: ANN001
    fake_fal.fail(status, on="submit")
    runtime = runtime_factory()
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
    done = wait_done(runtime.service, job.id)
    item = done.items[0]
    assert done.state == JobState.FAILED
    assert item.error.code == code and words in item.error.message
    submit_attempts = [r for r in fake_fal.requests_log if r[0] == "POST" and r[1].startswith("/queue/")]
    assert len(submit_attempts) == 1, "a permanent error must not be retried"


def test_busy_fal_is_retried_then_succeeds(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    fake_fal.fail(429, on="submit", times=3)  # refused (not paid): our retries, one POST each
    runtime = runtime_factory(fal_retries=3)
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
    done = wait_done(runtime.service, job.id)
    assert done.state == JobState.SUCCEEDED, done.items[0].error
    assert len(fake_fal.submits) == 1
    submit_posts = [r for r in fake_fal.requests_log if r[0] == "POST" and r[1].startswith("/queue/")]
    assert len(submit_posts) == 4, "each try must be exactly one POST: no hidden retries of a paid call"
    assert len([u for u in fake_fal.uploads]) == 1, "the input is uploaded once and its URL reused"


def test_server_errors_after_submit_resume_the_same_request(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    fake_fal.set_latency(0.0, 0.3)
    fake_fal.fail(500, on="stream", times=1)  # polling takes over...
    fake_fal.fail(500, on="status", times=2)  # ...and fails too, so the item is retried
    fake_fal.fail(503, on="result", times=1)
    runtime = runtime_factory()
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
    done = wait_done(runtime.service, job.id)
    assert done.state == JobState.SUCCEEDED, done.items[0].error
    assert len(fake_fal.submits) == 1, "a retry submitted the paid request again"


def test_a_model_download_refused_by_a_server_error_is_retried_without_paying_again(
        runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    fake_fal.fail(500, on="download", times=2)  # FAL's file server hiccups on the finished model
    runtime = runtime_factory(fal_retries=3)
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
    done = wait_done(runtime.service, job.id)
    assert done.state == JobState.SUCCEEDED, done.items[0].error
    assert len(fake_fal.submits) == 1, "a retried download submitted the paid request again"
    assert len(load_glb(runtime.files.result_path(job.id, done.items[0].model_file.name)).geometry) >= 1


def test_a_model_file_gone_from_the_file_server_fails_in_plain_words(runtime_factory, fake_fal,
                                                                      tmp_path) -> None:  # noqa: ANN001
    fake_fal.fail(404, on="download")
    runtime = runtime_factory(fal_retries=3)
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
    item = wait_done(runtime.service, job.id).items[0]
    assert item.state == ItemState.FAILED
    assert item.error.code == "fal_result_missing", item.error
    assert "no longer has the model file (HTTP 404)" in item.error.message
    assert len(fake_fal.submits) == 1


def test_persistent_server_errors_fail_after_bounded_retries(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    fake_fal.fail(500, on="stream")
    fake_fal.fail(500, on="status")
    runtime = runtime_factory(fal_retries=2)
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
    done = wait_done(runtime.service, job.id)
    item = done.items[0]
    assert item.state == ItemState.FAILED and item.error.code == "fal_unavailable"
    assert "gave up after 2 retries" in item.error.message
    assert len(fake_fal.submits) == 1


def test_timeouts_and_connection_errors_are_retried(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    runtime = runtime_factory(fal_retries=2)
    fake_fal.stop()  # FAL unreachable: connection refused
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
    done = wait_done(runtime.service, job.id, timeout=60)
    item = done.items[0]
    assert item.error.code == "fal_unavailable" and "retries" in item.error.message


def test_item_deadline_stops_the_item_and_cancels_on_fal(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    fake_fal.set_latency(0.0, 30.0)
    runtime = runtime_factory(item_deadline_seconds=1.0)
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
    done = wait_done(runtime.service, job.id)
    item = done.items[0]
    assert item.error.code == "deadline_exceeded"
    assert item.error.message == "The model took longer than the limit of 1 second."
    assert item.request_id in fake_fal.cancelled


def test_a_result_that_is_not_a_model_fails_clearly(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    fake_fal.result_bytes = b"this is not a glb file at all"
    runtime = runtime_factory()
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
    item = wait_done(runtime.service, job.id).items[0]
    assert item.error.code == "invalid_model"


def test_a_result_over_the_size_cap_is_refused(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    fake_fal.result_bytes = b"x" * 300_000
    runtime = runtime_factory(max_result_mb=0.1)
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
    item = wait_done(runtime.service, job.id).items[0]
    assert item.error.code == "result_too_large"
    assert item.error.message == "The model file is 293 KB, over the limit of 102 KB.", item.error.message
    assert list(runtime.files.results_dir(job.id).glob("*.glb")) == []


def test_preview_image_is_kept_when_the_model_returns_one(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    runtime = runtime_factory()
    job = runtime.service.create_job(uploads_for(tmp_path, ["mug.png"]), model="tripo3d/tripo/v2.5/image-to-3d")
    item = wait_done(runtime.service, job.id).items[0]
    assert item.state == ItemState.SUCCEEDED, item.error
    assert item.preview_file is not None and item.preview_file.name == "mug.preview.png"
    assert runtime.files.result_path(job.id, "mug.preview.png").read_bytes()[:4] == b"\x89PNG"


def test_cancel_stops_running_items_and_queued_ones_never_start(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    fake_fal.set_latency(0.0, 30.0)
    runtime = runtime_factory(workers=1, fal_concurrency=1)  # b and c wait for a place at FAL
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png", "b.png", "c.png"]), model="fal-ai/trellis")
    wait_until(lambda: runtime.service.get(job.id).items[0].request_id)
    runtime.service.cancel(job.id)
    done = wait_done(runtime.service, job.id, timeout=20)
    assert done.state == JobState.CANCELLED
    assert [i.state for i in done.items] == [ItemState.CANCELLED] * 3
    assert done.items[0].request_id in fake_fal.cancelled
    assert done.items[1].attempts == 0 and done.items[2].attempts == 0
    time.sleep(0.5)
    assert len(fake_fal.submits) == 1


def test_cancel_keeps_finished_results(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    runtime = runtime_factory(workers=1)
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
    wait_done(runtime.service, job.id)
    cancelled = runtime.service.cancel(job.id)
    assert cancelled.items[0].state == ItemState.SUCCEEDED
    assert runtime.files.result_path(job.id, "a.glb").is_file()


def test_a_cancel_after_the_end_leaves_the_job_as_it_ended(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    """A finished partial job stays partial (found from outside: it was relabelled cancelled)."""
    fake_fal.fail(422, on="result", times=1)
    runtime = runtime_factory(workers=1)
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png", "b.png"]), model="fal-ai/trellis")
    assert wait_done(runtime.service, job.id).state == JobState.PARTIAL
    assert runtime.service.cancel(job.id).state == JobState.PARTIAL
    runtime.store.request_cancel(job.id)  # a cancel racing the last item's end
    assert runtime.service.get(job.id).state == JobState.PARTIAL


def test_cleanup_removes_old_jobs_and_their_files(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    runtime = runtime_factory()
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
    wait_done(runtime.service, job.id)
    keep = runtime.service.create_job(uploads_for(tmp_path / "k", ["b.png"]), model="fal-ai/trellis")
    wait_done(runtime.service, keep.id)
    assert runtime.files.job_dir(job.id).is_dir()
    removed = runtime.runner.cleanup(now=time.time() + 25 * 3600)
    assert job.id in removed and keep.id in removed
    assert not runtime.files.job_dir(job.id).exists()
    with pytest.raises(AppError):
        runtime.service.get(job.id)
    # a fresh job survives a cleanup at the present time
    fresh = runtime.service.create_job(uploads_for(tmp_path / "f", ["c.png"]), model="fal-ai/trellis")
    wait_done(runtime.service, fresh.id)
    assert fresh.id not in runtime.runner.cleanup()
    assert runtime.files.job_dir(fresh.id).is_dir()


def test_an_expired_job_goes_within_a_minute_not_at_the_next_full_sweep(runtime_factory, tmp_path) -> None:  # noqa: ANN001
    """Found from outside (sixth round): expired jobs' files stayed, and were served by Gradio,
    up to 15 minutes past RETENTION_HOURS. Expiry now runs every minute of housekeeping."""
    from image2model.worker.housekeeping import CLEANUP_SECONDS, EXPIRE_SECONDS, Housekeeper

    runtime = runtime_factory(fal_key="", retention_hours=0.01)  # 36 s
    keeper = Housekeeper(runtime.runner, runtime.store, runtime.settings, 1)
    now = time.time()
    keeper.tick(now)  # a full sweep now
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="local/relief")
    wait_done(runtime.service, job.id)
    later = now + 36 + EXPIRE_SECONDS + 1
    assert later - now < CLEANUP_SECONDS
    keeper.tick(later)
    assert not runtime.files.job_dir(job.id).exists(), "the expired job waited for the full sweep"
    assert job.id not in runtime.store.all_job_ids()


def test_offline_model_runs_without_a_fal_key(runtime_factory, tmp_path) -> None:  # noqa: ANN001
    runtime = runtime_factory(fal_key="")
    models = {m["id"]: m for m in runtime.service.models()}
    assert models["local/relief"]["available"] and models["local/relief"]["default"]
    assert not models["fal-ai/trellis"]["available"]
    assert "FAL_KEY" in models["fal-ai/trellis"]["unavailable_reason"]
    with pytest.raises(AppError) as refused:
        runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
    assert refused.value.code == "model_unavailable"
    job = runtime.service.create_job(uploads_for(tmp_path, ["cup.png", "pot.png", "cup.png"]))
    assert job.model == "local/relief"
    done = wait_done(runtime.service, job.id)
    assert done.state == JobState.SUCCEEDED, [i.error for i in done.items]
    assert [i.model_file.name for i in done.items] == ["cup.glb", "pot.glb", "cup-2.glb"]
    for item in done.items:
        scene = load_glb(runtime.files.result_path(job.id, item.model_file.name))
        assert item.stats["faces"] == sum(len(g.faces) for g in scene.geometry.values())


class TestRefusedBeforeAnythingIsQueued:
    """Bad submissions get a clear message, and leave no job, file or task behind."""

    def refused(self, runtime, uploads, **kwargs) -> AppError:  # noqa: ANN001
        with pytest.raises(AppError) as caught:
            runtime.service.create_job(uploads, **kwargs)
        assert runtime.store.all_job_ids() == []
        assert runtime.files.job_ids() == []
        assert runtime.huey.pending_count() == 0
        return caught.value

    def test_no_images(self, runtime_factory) -> None:  # noqa: ANN001
        error = self.refused(runtime_factory(start_consumer=False), [])
        assert error.code == "no_images" and "at least one image" in error.message

    def test_26_images(self, runtime_factory, tmp_path) -> None:  # noqa: ANN001
        image = make_image(tmp_path / "a.png")
        error = self.refused(runtime_factory(start_consumer=False), [Upload(f"{n}.png", image) for n in range(26)])
        assert error.code == "too_many_images" and "26" in error.message and "25" in error.message

    def test_unknown_model(self, runtime_factory, tmp_path) -> None:  # noqa: ANN001
        error = self.refused(runtime_factory(start_consumer=False), uploads_for(tmp_path, ["a.png"]),
                             model="fal-ai/nope")
        assert error.code == "unknown_model" and "fal-ai/nope" in error.message

    def test_unknown_parameter(self, runtime_factory, tmp_path) -> None:  # noqa: ANN001
        error = self.refused(runtime_factory(start_consumer=False), uploads_for(tmp_path, ["a.png"]),
                             model="fal-ai/trellis", params={"colour": "red"})
        assert error.code == "unknown_parameter" and "colour" in error.message

    @pytest.mark.parametrize(("params", "words"), [
        ({"ss_sampling_steps": 99}, "above the maximum 50"),
        ({"ss_sampling_steps": "many"}, "expected a number"),
        ({"texture_size": 300}, "one of 512, 1024, 2048"),
        ({"mesh_simplify": 0.5}, "below the minimum"),
    ])
    def test_bad_parameter_values(self, runtime_factory, tmp_path, params, words) -> None:  # noqa: ANN001
        error = self.refused(runtime_factory(start_consumer=False), uploads_for(tmp_path, ["a.png"]),
                             model="fal-ai/trellis", params=params)
        assert error.code == "invalid_parameter"
        assert next(iter(params)) in error.message and words in error.message

    def test_wrong_mode_and_view_count(self, runtime_factory, tmp_path) -> None:  # noqa: ANN001
        runtime = runtime_factory(start_consumer=False)
        error = self.refused(runtime, uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis", mode="multi_view")
        assert error.code == "invalid_mode"
        error = self.refused(runtime, uploads_for(tmp_path, ["a.png", "b.png"]),
                             model="fal-ai/hunyuan3d/v2/multi-view", mode="multi_view")
        assert error.code == "wrong_view_count" and "front, back, left" in error.message

    def test_a_file_that_is_not_an_image(self, runtime_factory, tmp_path) -> None:  # noqa: ANN001
        text = tmp_path / "notes.png"
        text.write_text("just some text pretending to be a picture")
        good = uploads_for(tmp_path, ["a.png"])
        error = self.refused(runtime_factory(start_consumer=False), good + [Upload("notes.png", text)])
        assert error.code == "unsupported_file_type" and "notes.png" in error.message

    def test_spending_guard(self, runtime_factory, tmp_path) -> None:  # noqa: ANN001
        runtime = runtime_factory(start_consumer=False, fal_images_per_hour=3)
        runtime.service.create_job(uploads_for(tmp_path, ["a.png", "b.png"]), model="fal-ai/trellis")
        with pytest.raises(AppError) as caught:
            runtime.service.create_job(uploads_for(tmp_path / "x", ["c.png", "d.png"]), model="fal-ai/trellis")
        assert caught.value.code == "spending_limit" and caught.value.status == 429
        assert len(runtime.store.all_job_ids()) == 1

    def test_cancelled_photos_that_never_reached_fal_give_back_their_spending(self, runtime_factory,
                                                                             tmp_path) -> None:  # noqa: ANN001
        """Else anyone could lock a server out of FAL for an hour at no cost: upload, cancel."""
        runtime = runtime_factory(start_consumer=False, fal_images_per_hour=3)
        job = runtime.service.create_job(uploads_for(tmp_path, ["a.png", "b.png", "c.png"]), model="fal-ai/trellis")
        runtime.service.cancel(job.id)  # all three still waiting: nothing was sent, nothing paid
        assert runtime.store.images_reserved(3600, time.time()) == 0
        again = runtime.service.create_job(uploads_for(tmp_path / "x", ["d.png", "e.png"]), model="fal-ai/trellis")
        assert again.state == JobState.QUEUED
        with pytest.raises(AppError) as caught:
            runtime.service.create_job(uploads_for(tmp_path / "y", ["f.png", "g.png"]), model="fal-ai/trellis")
        assert caught.value.code == "spending_limit"

    def test_a_photo_cancelled_while_uploading_gives_back_its_spending(self, runtime_factory, fake_fal,
                                                                       tmp_path) -> None:  # noqa: ANN001
        """Running, but stopped before its submit: FAL never saw it, so it is not counted."""
        fake_fal.hang("upload", seconds=2.0, times=1)
        runtime = runtime_factory(fal_images_per_hour=5)
        job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
        wait_until(lambda: runtime.service.get(job.id).items[0].state == ItemState.RUNNING)
        assert runtime.store.images_reserved(3600, time.time()) == 1
        runtime.service.cancel(job.id)
        done = wait_done(runtime.service, job.id, timeout=20)
        assert done.items[0].state == ItemState.CANCELLED and not fake_fal.submits
        wait_until(lambda: runtime.store.images_reserved(3600, time.time()) == 0, timeout=5)  # given back after the end is written

    def test_photos_that_fail_before_their_submit_give_back_their_spending(self, runtime_factory, fake_fal,
                                                                           tmp_path) -> None:  # noqa: ANN001
        fake_fal.fail(403, on="upload")  # every upload refused: nothing reaches FAL's queue
        fake_fal.fail(403, on="token")
        runtime = runtime_factory(fal_images_per_hour=5)
        job = runtime.service.create_job(uploads_for(tmp_path, ["a.png", "b.png"]), model="fal-ai/trellis")
        done = wait_done(runtime.service, job.id, timeout=30)
        assert [i.state for i in done.items] == [ItemState.FAILED] * 2 and not fake_fal.submits
        wait_until(lambda: runtime.store.images_reserved(3600, time.time()) == 0, timeout=5)

    def test_photos_fal_took_stay_counted(self, runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
        fake_fal.fail(422, on="result")  # FAL ran them and the model failed: it may bill them
        fake_fal.set_latency(0.0, 0.2)
        runtime = runtime_factory(fal_images_per_hour=5)
        job = runtime.service.create_job(uploads_for(tmp_path, ["a.png", "b.png"]), model="fal-ai/trellis")
        done = wait_done(runtime.service, job.id, timeout=30)
        assert [i.state for i in done.items] == [ItemState.FAILED] * 2 and len(fake_fal.submits) == 2
        time.sleep(0.5)  # past the ends' follow-up writes
        assert runtime.store.images_reserved(3600, time.time()) == 2


def test_a_worker_without_a_fal_key_fails_the_item_at_once(settings_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    """Split configuration: the web side has a key, this worker has none."""
    from image2model.runtime import Runtime

    web = Runtime(settings_factory())
    worker = Runtime(settings_factory(fal_key=""))
    try:
        job = web.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
        worker.start_consumer()
        item = wait_done(web.service, job.id, timeout=20).items[0]
        assert item.error.code == "fal_key_missing" and "FAL_KEY" in item.error.message
        assert fake_fal.submits == []
    finally:
        worker.close()
        web.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_offline_model_through_the_engine_on_every_awkward_input(runtime_factory, tmp_path) -> None:  # noqa: ANN001
    """Issue 3's input list, end to end: the service accepts each, the worker makes a model."""
    from tests import imagefactory as f

    inputs = [f.rgba_star(), f.product_photo(), f.full_frame_photo(), f.greyscale(), f.palette_png(),
              f.png16(), f.exif_rotated_jpeg(), f.tiny(), f.huge_jpeg()]
    runtime = runtime_factory(fal_key="")
    uploads = [Upload(s.name + s.suffix, s.save(tmp_path)) for s in inputs]
    job = runtime.service.create_job(uploads, model="local/relief")
    done = wait_done(runtime.service, job.id, timeout=120)
    assert done.state == JobState.SUCCEEDED, [(i.name, i.error) for i in done.items]
    sources = {i.name: i.stats["mask_source"] for i in done.items}
    assert sources[f.full_frame_photo().name + ".jpg"] == "full_frame"
    assert sources[f.rgba_star().name + ".png"] == "alpha"
    assert sources[f.product_photo().name + ".jpg"] == "background"
    shapes = {i.name: i.stats["shape"] for i in done.items}
    assert shapes[f.product_photo().name + ".jpg"] == "revolve"  # a bottle is turned round
    assert shapes[f.full_frame_photo().name + ".jpg"] == "relief"
    for item in done.items:
        scene = load_glb(runtime.files.result_path(job.id, item.model_file.name))
        mesh = next(iter(scene.geometry.values()))
        assert welded(mesh).is_watertight, item.name
    rotated = next(i for i in done.items if i.name.startswith("exif"))
    extents = rotated.stats["extents"]
    assert extents[1] > extents[0], "the EXIF-rotated photo must give an upright (taller) model"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_plain_upright_image_reaches_fal_unchanged(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    """No second JPEG generation for images that need no fixing; a rotated one is fixed."""
    from tests import imagefactory as f

    runtime = runtime_factory()
    plain = uploads_for(tmp_path, ["plain.png"])
    rotated = f.exif_rotated_jpeg()
    job = runtime.service.create_job(plain + [Upload("rot.jpg", rotated.save(tmp_path))], model="fal-ai/trellis")
    wait_done(runtime.service, job.id)
    sent = {s["arguments"]["image_url"].rsplit("/", 1)[-1]: fake_fal.file_bytes(s["arguments"]["image_url"])
            for s in fake_fal.submits}
    assert sent["00-plain.png"] == plain[0].path.read_bytes()
    fixed = next(data for name, data in sent.items() if name.startswith("01-rot"))
    assert fixed != rotated.data
    from PIL import Image
    import io
    with Image.open(io.BytesIO(fixed)) as img:
        assert img.height > img.width and img.getexif().get(0x0112, 1) == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("moment", ["before_inputs_are_read", "before_the_model_is_written"])
def test_deleting_a_running_job_leaves_no_files_and_no_crash(runtime_factory, tmp_path, caplog, monkeypatch,
                                                             moment) -> None:  # noqa: ANN001
    """A DELETE can land while a worker is inside the item; the worker must stop quietly and
    leave nothing on disk. The race is made deterministic by deleting from inside the run, so
    the build runs in the worker thread (a build process is another program: see
    test_offline_processes.py for a delete during one)."""
    import logging

    runtime = runtime_factory(fal_key="", start_consumer=False, offline_processes=0)
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]))
    runner = runtime.runner
    # the offline provider imports these on each run (not at the top), so patching them here reaches it
    if moment == "before_inputs_are_read":
        import image2model.providers.relief.loading as loading

        original = loading.load_image

        def racing(path):  # noqa: ANN001, ANN202
            runtime.service.delete(job.id)
            return original(path)

        monkeypatch.setattr(loading, "load_image", racing)
    else:
        import image2model.providers.relief.pipeline as pipeline

        original_generate = pipeline.generate_relief

        def generate_then_delete(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            result = original_generate(*args, **kwargs)
            runtime.service.delete(job.id)  # the model file is written after this
            return result

        monkeypatch.setattr(pipeline, "generate_relief", generate_then_delete)
    with caplog.at_level(logging.INFO):
        runner.run(job.id, 0)
    assert not runtime.files.job_dir(job.id).exists()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    thrown_away = [r for r in caplog.records if "finished model is thrown away" in r.getMessage()]
    assert len(thrown_away) == (1 if moment == "before_the_model_is_written" else 0)  # said, when there was one


def test_a_submitted_photo_says_it_is_at_fal_before_fals_first_word(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    """The request id and "Sent to FAL" land in one write, so the upload's words do not stay
    on screen while FAL says nothing (here: a status stream that stays silent)."""
    from image2model.worker.runner import AT_FAL

    fake_fal.set_latency(2.0, 1.0)
    fake_fal.stream_silent = True
    runtime = runtime_factory()
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
    seen = wait_until(lambda: (item := runtime.store.get(job.id).items[0]).request_id and item, timeout=30)
    assert seen.message == AT_FAL, seen.message
    done = wait_done(runtime.service, job.id)
    assert done.state == JobState.SUCCEEDED
