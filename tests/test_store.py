"""The job store contract, run against both backends (SQLite and a real Redis server)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from image2model.jobs.model import Item, ItemError, ItemState, Job, JobState, Mode, ResultFile
from image2model.runtime import make_store


def new_job(n: int = 3, created_at: float | None = None) -> Job:
    items = [Item(index=i, name=f"img{i}.png", stem=f"img{i}", inputs=[f"{i:02d}-img{i}.png"]) for i in range(n)]
    job = Job(id=uuid.uuid4().hex, model="local/relief", mode=Mode.PER_IMAGE, params={"resolution": 64},
              items=items, owner="alice")
    if created_at is not None:
        job.created_at = created_at
    return job


@pytest.fixture
def store(settings_factory):  # noqa: ANN001, ANN201
    s = make_store(settings_factory())
    yield s
    s.close()


def test_create_and_read_back_the_same_record(store) -> None:  # noqa: ANN001
    job = new_job()
    store.create(job)
    loaded = store.get(job.id)
    assert loaded is not None
    assert loaded.id == job.id and loaded.owner == "alice" and loaded.params == {"resolution": 64}
    assert [i.name for i in loaded.items] == ["img0.png", "img1.png", "img2.png"]
    assert loaded.state == JobState.QUEUED and loaded.progress == 0
    assert store.get(uuid.uuid4().hex) is None


def test_update_item_is_compare_and_set(store) -> None:  # noqa: ANN001
    job = new_job()
    store.create(job)
    claimed = store.update_item(job.id, 0, {"state": ItemState.RUNNING, "worker": "w1"},
                                expect_state=[ItemState.QUEUED])
    assert claimed is not None and claimed.state == ItemState.RUNNING
    # a second claim of the same item fails: it is no longer queued
    assert store.update_item(job.id, 0, {"state": ItemState.RUNNING, "worker": "w2"},
                             expect_state=[ItemState.QUEUED]) is None
    # another worker cannot write to it
    assert store.update_item(job.id, 0, {"progress": 50}, expect_worker="w2") is None
    done = store.update_item(
        job.id, 0,
        {"state": ItemState.SUCCEEDED, "files": [ResultFile("img0.glb", "model", 10, "model/gltf-binary")],
         "stats": {"faces": 12}},
        expect_worker="w1",
    )
    assert done is not None and done.files[0].name == "img0.glb"
    failed = store.update_item(job.id, 1, {"state": ItemState.FAILED, "error": ItemError("x", "boom")})
    assert failed is not None and failed.error == ItemError("x", "boom")
    loaded = store.get(job.id)
    assert loaded.items[0].stats == {"faces": 12}
    assert loaded.state == JobState.RUNNING  # item 2 still queued
    store.update_item(job.id, 2, {"state": ItemState.SUCCEEDED})
    assert store.get(job.id).state == JobState.PARTIAL


def test_versions_move_on_changes_but_not_heartbeats(store) -> None:  # noqa: ANN001
    job = new_job()
    store.create(job)
    v0 = store.version(job.id)
    store.update_item(job.id, 0, {"state": ItemState.RUNNING, "worker": "w"})
    v1 = store.version(job.id)
    assert v1 > v0
    assert store.touch(job.id, 0, "w", time.time()) is True
    assert store.version(job.id) == v1
    assert store.touch(job.id, 0, "someone-else", time.time()) is False
    assert store.get(job.id).items[0].heartbeat_at is not None


def test_wait_for_change_wakes_on_a_write_without_polling(store) -> None:  # noqa: ANN001
    job = new_job()
    store.create(job)
    since = store.version(job.id)

    def write_later() -> None:
        time.sleep(0.3)
        store.update_item(job.id, 1, {"progress": 40.0})

    threading.Thread(target=write_later).start()
    started = time.monotonic()
    version = store.wait_for_change(job.id, since, timeout=5)
    waited = time.monotonic() - started
    assert version is not None and version > since
    assert 0.2 < waited < 2.0
    # nothing changes: the wait times out
    assert store.wait_for_change(job.id, version, timeout=0.3) is None


def test_async_wait_sees_a_write_from_another_connection(store, settings_factory) -> None:  # noqa: ANN001
    """A second store object stands in for another process (its own connections)."""
    other = make_store(store_settings := settings_factory())  # noqa: F841
    job = new_job()
    store.create(job)
    since = store.version(job.id)

    async def scenario() -> int | None:
        waiter = asyncio.create_task(store.wait_for_change_async(job.id, since, timeout=5))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(other.update_item, job.id, 2, {"message": "hello"})
        return await waiter

    try:
        version = asyncio.run(scenario())
    finally:
        other.close()
    assert version is not None and version > since
    assert store.get(job.id).items[2].message == "hello"


def test_cancel_flag_and_running_index(store) -> None:  # noqa: ANN001
    job = new_job()
    store.create(job)
    store.update_item(job.id, 1, {"state": ItemState.RUNNING, "worker": "w"})
    running = store.running_items()
    assert [(j, i.index) for j, i in running] == [(job.id, 1)]
    assert store.request_cancel(job.id) is True
    assert store.get(job.id).cancel_requested is True
    store.update_item(job.id, 1, {"state": ItemState.CANCELLED})
    assert store.running_items() == []
    assert store.request_cancel(uuid.uuid4().hex) is False


def test_expired_and_deleted_jobs(store) -> None:  # noqa: ANN001
    old = new_job(created_at=time.time() - 10 * 3600)
    fresh = new_job()
    store.create(old)
    store.create(fresh)
    before = store.job_ids_created_before(time.time() - 3600)
    assert old.id in before and fresh.id not in before
    store.delete(old.id)
    assert store.get(old.id) is None
    assert old.id not in store.all_job_ids()
    assert store.get(fresh.id) is not None


def test_records_expire_after_retention(settings_factory) -> None:  # noqa: ANN001
    s = make_store(settings_factory(retention_hours=1 / 3600))  # one second
    try:
        job = new_job()
        s.create(job)
        assert s.get(job.id) is not None
        time.sleep(2.2)
        assert s.get(job.id) is None
    finally:
        s.close()


def test_learned_durations_and_spending_reservations(store) -> None:  # noqa: ANN001
    assert store.typical_duration("m") is None
    store.record_duration("m", 10.0)
    store.record_duration("m", 20.0)
    assert 10.0 < store.typical_duration("m") < 20.0
    now = time.time()
    assert store.reserve_images(20, 25, 3600, now) is True
    assert store.reserve_images(6, 25, 3600, now) is False  # would pass the limit: nothing counted
    assert store.reserve_images(5, 25, 3600, now) is True
    assert store.reserve_images(1, 25, 3600, now + 3700) is True  # the window moved on


def test_reserved_images_can_be_given_back_by_their_holder(store) -> None:  # noqa: ANN001
    now = time.time()
    assert store.reserve_images(3, 5, 3600, now, holder="job-a") is True
    assert store.reserve_images(2, 5, 3600, now, holder="job-b") is True
    assert store.reserve_images(1, 5, 3600, now) is False
    store.release_images("job-a", 2)
    assert store.images_reserved(3600, now) == 3
    store.release_images("job-a", 5)  # never below nothing
    store.release_images("no-such-job", 4)
    assert store.images_reserved(3600, now) == 2
    assert store.reserve_images(3, 5, 3600, now, holder="job-c") is True
    assert store.reserve_images(1, 5, 3600, now) is False


def test_deleting_a_job_wakes_its_waiters(store) -> None:  # noqa: ANN001
    job = new_job()
    store.create(job)
    since = store.version(job.id)
    threading.Timer(0.2, store.delete, args=(job.id,)).start()
    started = time.monotonic()
    woke = store.wait_for_change(job.id, since, timeout=5)
    assert woke is not None and time.monotonic() - started < 2
    assert store.get(job.id) is None


def test_cancel_requested_is_cheap_and_knows_gone_jobs(store) -> None:  # noqa: ANN001
    job = new_job()
    store.create(job)
    assert store.cancel_requested(job.id) is False
    store.request_cancel(job.id)
    assert store.cancel_requested(job.id) is True
    store.delete(job.id)
    assert store.cancel_requested(job.id) is None


def test_a_job_read_again_sees_every_change_and_nobody_elses_edits(store, settings_factory) -> None:  # noqa: ANN001
    """Reads decode only the items whose stored text changed (DecodedItems): a change made
    through another store object is seen, unchanged items are not decoded again, and an
    Item one reader changes in its copy is not what the next reader gets."""
    other = make_store(settings_factory())  # first: a Redis test's settings start from an empty server
    job = new_job(25)
    store.create(job)
    store.get(job.id)
    try:
        other.update_item(job.id, 7, {"progress": 42.0, "message": "halfway"})
        decoded = []
        real = Item.from_dict
        Item.from_dict = classmethod(lambda cls, data: decoded.append(data["index"]) or real(data))  # type: ignore[method-assign]
        try:
            read = store.get(job.id)
        finally:
            Item.from_dict = real  # type: ignore[method-assign]
        assert decoded == [7], decoded  # one of 25 decoded again
        assert read.items[7].progress == 42.0 and read.items[7].message == "halfway"
        read.items[3].message = "changed by one reader"
        read.items[3].progress = 99.0
        again = store.get(job.id)
        assert again.items[3].message == "Waiting for a worker" and again.items[3].progress == 0.0
        assert again.items[7].progress == 42.0
    finally:
        other.close()
