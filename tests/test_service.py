"""JobService details that every interface relies on."""

from __future__ import annotations

import json
import time

import pytest

from image2model.errors import AppError
from image2model.jobs.service import job_status
from tests.engine_helpers import uploads_for, wait_done


def test_status_json_follows_every_change_and_guards_the_owner(runtime_factory, tmp_path) -> None:  # noqa: ANN001
    runtime = runtime_factory(start_consumer=False, fal_key="")
    runtime.store.mark_alive("worker-host:1:abc", time.time(), 600, {})  # a worker somewhere
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png", "b.png"]), owner="alice")
    first = runtime.service.status_json(job.id, "alice")
    assert json.loads(first) == job_status(runtime.service.get(job.id))
    assert runtime.service.status_json(job.id, "alice") is first  # unchanged job: cached bytes
    runtime.store.update_item(job.id, 1, {"message": "half way", "progress": 50.0})
    changed = json.loads(runtime.service.status_json(job.id, "alice"))
    assert changed["items"][1]["message"] == "half way" and changed["version"] > json.loads(first)["version"]
    with pytest.raises(AppError) as other:
        runtime.service.status_json(job.id, "mallory")  # cached, but not theirs
    assert other.value.status == 404
    assert json.loads(runtime.service.status_json(job.id)) == changed  # open access: no owner check
    runtime.service.delete(job.id)
    with pytest.raises(AppError):
        runtime.service.status_json(job.id)


def test_memory_helpers_work_on_this_libc() -> None:
    import platform

    from image2model.memory import limit_malloc_arenas, release_free_memory

    if platform.libc_ver()[0] != "glibc":
        print("SKIP: not glibc; the memory helpers are no-ops here")
        pytest.skip("not glibc")
    assert limit_malloc_arenas(8) is True
    release_free_memory()  # must not raise


def test_the_page_hears_the_same_problems_create_job_would_refuse(runtime_factory, tmp_path) -> None:  # noqa: ANN001
    from image2model.jobs.service import Upload

    runtime = runtime_factory(start_consumer=False, fal_key="", max_images=2)
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    good = uploads_for(tmp_path, ["a.png"])
    assert runtime.service.upload_problems(good) == []
    assert runtime.service.upload_problems([]) == []  # nothing added yet is not a problem
    bad = good + [Upload("notes.png", text)]
    problems = runtime.service.upload_problems(bad)
    with pytest.raises(AppError) as refused:
        runtime.service.create_job(bad)
    assert problems == [refused.value.message]
    assert runtime.service.sort_uploads(bad) == (good, problems, False)  # the page shows thumbnails of these only
    assert runtime.service.sort_uploads(good * 3)[0] == good * 2  # the first max_images
    # bad files first, then as many good ones as a job takes: the good ones are all kept, and a
    # bad one past the limit is named too (found from outside: they were cut before the check)
    two = uploads_for(tmp_path / "two", ["b.png", "c.png"])
    usable, said, over = runtime.service.sort_uploads([Upload("notes.png", text), *two, Upload("notes.png", text)])
    assert usable == two and not over and len(said) == 2
    usable, said, over = runtime.service.sort_uploads([Upload("notes.png", text), *two, *good])
    assert usable == two and over and "limit is 2" in said[0] and len(said) == 2
    too_many = runtime.service.upload_problems(good * 3)
    with pytest.raises(AppError) as counted:
        runtime.service.create_job(good * 3)
    assert too_many == [counted.value.message]
    assert runtime.store.all_job_ids() == []


def test_an_upload_that_vanished_before_the_job_is_refused_in_words(runtime_factory, tmp_path) -> None:  # noqa: ANN001
    """Gradio's upload cache is shared by every Gradio process on a host, and one that stops
    deletes what it made, another's copy of the same photo included."""
    from image2model.jobs.service import Upload

    runtime = runtime_factory()
    with pytest.raises(AppError) as refused:
        runtime.service.create_job([Upload("duck.png", tmp_path / "gone" / "duck.png")])
    assert refused.value.code == "upload_gone" and "'duck.png' is no longer on the server" in refused.value.message
    assert runtime.store.all_job_ids() == [] and runtime.files.job_ids() == []


def test_photos_named_in_any_script_give_models_named_after_them(runtime_factory, tmp_path) -> None:  # noqa: ANN001
    """A job of photos named in Cyrillic, Chinese or emoji tells its models apart by name
    (they used to be png.glb, png-2.glb, ...: the extension was all that was left)."""
    runtime = runtime_factory(fal_key="")
    names = ["кружка.png", "猫.png", "🐱.png", "_.png", "猫.png", "Ñandú 2.jpg"]
    job = runtime.service.create_job(uploads_for(tmp_path, names))
    assert [item.stem for item in job.items] == ["kruzhka", "Mao", "cat", "image", "Mao-2", "Nandu 2"]
    done = wait_done(runtime.service, job.id)
    assert [item.model_file.name for item in done.items] == [
        "kruzhka.glb", "Mao.glb", "cat.glb", "image.glb", "Mao-2.glb", "Nandu 2.glb"]
    assert [item.name for item in done.items] == names  # the photo keeps its own name in the status
