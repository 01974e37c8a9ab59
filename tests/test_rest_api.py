"""Every REST route against the real app on a live uvicorn server (embedded mode: SQLite
store and queue, huey consumer inside the web process)."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import numpy as np
import pytest
import trimesh

from image2model.jobs.model import JobState
from image2model.jobs.service import Upload, item_status, job_status
from image2model.providers.catalog import catalog
from image2model.web.rest.schemas import ItemStatus, JobStatus
from tests.rest_helpers import (  # noqa: F401 - backend is a fixture
    OPEN_LIMITS, assert_error, assert_nothing_queued, backend, png, post_images, wait_job,
)


@pytest.fixture
def server(live_server_factory):  # noqa: ANN001, ANN201
    return live_server_factory(fal_key="", **OPEN_LIMITS)


@pytest.fixture
def client(server) -> httpx.Client:  # noqa: ANN001
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def finished_job(server, client) -> str:  # noqa: ANN001
    response = post_images(client, [("shoe.png", png(1)), ("hat.png", png(2))])
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert wait_job(server, job_id).state == JobState.SUCCEEDED
    return job_id


def test_upload_answers_202_with_one_id_items_and_links(server, client) -> None:  # noqa: ANN001
    response = post_images(client, [("shoe.png", png(1)), ("hat.png", png(2))], model="local/relief",
                           params='{"inflation": 0.3, "resolution": 64}')
    assert response.status_code == 202, response.text
    body = response.json()
    job_id = body["job_id"]
    assert body["task_id"] == job_id and len(job_id) == 32
    assert body["status"] == "queued" and body["model"] == "local/relief" and body["mode"] == "per_image"
    assert body["total_files"] == 2
    assert [f["filename"] for f in body["uploaded_files"]] == ["shoe.png", "hat.png"]
    assert all(f["file_size"] > 0 for f in body["uploaded_files"])
    assert [i["name"] for i in body["items"]] == ["shoe.png", "hat.png"]
    assert body["links"] == {
        "status": f"/api/v1/status/tasks/{job_id}", "stream": f"/api/v1/status/tasks/{job_id}/stream",
        "downloads": f"/api/v1/download/{job_id}/all", "zip": f"/api/v1/download/{job_id}/all.zip",
        "cancel": f"/api/v1/jobs/{job_id}/cancel", "delete": f"/api/v1/jobs/{job_id}",
    }
    assert response.headers["location"] == body["links"]["status"]
    # the job really exists, with the params given, and the upload temp files are gone
    job = server.runtime.service.get(job_id)
    assert job.params["inflation"] == 0.3
    assert list((server.runtime.settings.data_dir / "incoming").iterdir()) == []
    assert wait_job(server, job_id).state == JobState.SUCCEEDED


def test_upload_without_trailing_slash_works_too(client) -> None:  # noqa: ANN001
    files = [("files", ("a.png", png(), "image/png"))]
    assert client.post("/api/v1/upload", files=files).status_code == 202


def test_status_is_the_job_status_schema_of_the_gradio_api(server, client, finished_job) -> None:  # noqa: ANN001
    response = client.get(f"/api/v1/status/tasks/{finished_job}")
    assert response.status_code == 200
    body = response.json()
    assert body == job_status(server.runtime.service.get(finished_job))
    assert body["state"] == "succeeded" and body["finished"] and body["progress"] == 100.0
    assert [f["name"] for i in body["items"] for f in i["files"] if f["kind"] == "model"] == ["shoe.glb", "hat.glb"]


def test_response_models_cover_job_status_field_for_field(tmp_path) -> None:  # noqa: ANN001
    """The REST schema and the shared status dict cannot drift apart unnoticed."""
    from image2model.jobs.model import Item, Job, Mode

    item = Item(index=0, name="a.png", stem="a", inputs=["00-a.png"])
    job = Job(id="0" * 32, model="local/relief", mode=Mode.PER_IMAGE, params={}, items=[item])
    assert set(JobStatus.model_fields) == set(job_status(job))
    assert set(ItemStatus.model_fields) == set(item_status(job.id, item))
    JobStatus.model_validate(job_status(job))


def test_list_download_range_etag_and_head(server, client, finished_job) -> None:  # noqa: ANN001
    listing = client.get(f"/api/v1/download/{finished_job}/all")
    assert listing.status_code == 200
    body = listing.json()
    assert body["finished"] and body["state"] == "succeeded" and body["total_files"] == len(body["files"])
    assert body["zip_url"] == f"/api/v1/download/{finished_job}/all.zip"
    glb = next(f for f in body["files"] if f["filename"] == "shoe.glb")
    assert glb["item"] == 0 and glb["item_name"] == "shoe.png" and glb["kind"] == "model"
    assert glb["content_type"] == "model/gltf-binary" and glb["url"].endswith("/shoe.glb")

    on_disk = server.runtime.files.result_path(finished_job, "shoe.glb").read_bytes()
    response = client.get(glb["url"])
    assert response.status_code == 200 and response.content == on_disk and glb["size"] == len(on_disk)
    assert response.headers["content-type"] == "model/gltf-binary"
    assert response.headers["content-disposition"] == 'attachment; filename="shoe.glb"'
    assert response.headers["x-content-type-options"] == "nosniff"
    etag = response.headers["etag"]

    part = client.get(glb["url"], headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == on_disk[4:12]
    assert part.headers["content-range"] == f"bytes 4-11/{len(on_disk)}"
    assert client.get(glb["url"], headers={"If-None-Match": etag}).status_code == 304
    modified = response.headers["last-modified"]
    assert client.get(glb["url"], headers={"If-Modified-Since": modified}).status_code == 304
    assert client.get(glb["url"], headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200
    assert client.get(glb["url"], headers={"If-Modified-Since": "yesterday"}).status_code == 200  # unreadable
    assert client.get(glb["url"], headers={"If-Modified-Since": modified,  # If-None-Match decides
                                           "If-None-Match": '"another"'}).status_code == 200
    assert_error(client.get(glb["url"], headers={"Range": f"bytes={len(on_disk) + 10}-"}), 416,
                 "range_not_satisfiable")
    assert client.get(glb["url"], headers={"Range": "bytes=banana"}).content == on_disk  # unreadable: ignored
    head = client.head(glb["url"])
    assert head.status_code == 200 and head.headers["content-length"] == str(len(on_disk)) and head.content == b""
    # the listing and the ZIP answer HEAD as GET would, without a body (found from outside: 404)
    for url, kind in ((f"/api/v1/download/{finished_job}/all", "application/json"),
                      (body["zip_url"], "application/zip")):
        head = client.head(url)
        assert head.status_code == 200 and head.headers["content-type"].startswith(kind), (url, head.status_code)
        assert head.content == b""


def test_links_to_files_with_spaces_are_percent_encoded(server, client) -> None:  # noqa: ANN001
    """Found from outside (fifth round): "cup _1.glb" went out with a raw space, which curl
    refuses as a malformed URL. Every link is percent-encoded and leads to its file."""
    job_id = post_images(client, [("my cup (1).png", png(3))]).json()["job_id"]
    assert wait_job(server, job_id).state == JobState.SUCCEEDED
    listing = client.get(f"/api/v1/download/{job_id}/all").json()
    status = client.get(f"/api/v1/status/tasks/{job_id}").json()
    links = ([f["url"] for f in listing["files"]] + listing["download_urls"]
             + [f["url"] for item in status["items"] for f in item["files"]])
    assert f"/api/v1/download/{job_id}/my%20cup%20%281%29.glb" in links, links
    for link in links:
        assert " " not in link and "(" not in link, link
        assert client.get(link).status_code == 200, link


def test_conversions_on_demand(client, finished_job) -> None:  # noqa: ANN001
    url = f"/api/v1/download/{finished_job}/shoe.glb"
    stl = client.get(url, params={"format": "stl"})
    assert stl.status_code == 200 and stl.headers["content-type"] == "model/stl"
    assert stl.headers["content-disposition"] == 'attachment; filename="shoe.stl"'
    assert len(trimesh.load(io.BytesIO(stl.content), file_type="stl").faces) > 0
    ply = client.get(url, params={"format": "ply"})
    assert ply.status_code == 200
    coloured = trimesh.load(io.BytesIO(ply.content), file_type="ply")
    assert len(coloured.faces) > 0 and coloured.visual.kind == "vertex"  # PLY has no texture: colours
    colour = np.median(coloured.visual.vertex_colors[:, :3], axis=0)  # shoe.png's ellipse is (53, 97, 120)
    assert np.abs(colour - (53, 97, 120)).max() <= 4, f"the texture's colour was lost: {colour}"
    obj = client.get(url, params={"format": "obj"})
    assert obj.status_code == 200 and obj.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(obj.content))
    assert "shoe.obj" in archive.namelist()
    assert {info.external_attr >> 16 for info in archive.infolist()} == {0o100644}, "unzips readable"
    mtl = archive.read("shoe.mtl").decode().splitlines()
    texture = next(line.split()[1] for line in mtl if line.startswith("map_Kd"))
    assert texture in archive.namelist()
    assert "Kd 1.00000000 1.00000000 1.00000000" in mtl, "a viewer multiplies Kd with the texture"
    assert obj.headers["etag"] != stl.headers["etag"]
    assert_error(client.get(url, params={"format": "fbx"}), 422, "invalid_request", "format")
    blank = client.get(url, params={"format": ""})  # a form's blank choice: the model as it is
    assert blank.status_code == 200 and blank.headers["content-type"] == "model/gltf-binary"


def test_zip_of_all_results_is_streamed(server, client, finished_job) -> None:  # noqa: ANN001
    with client.stream("GET", f"/api/v1/download/{finished_job}/all.zip") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/zip"
        assert "content-length" not in response.headers  # streamed, not built in memory first
        assert response.headers["content-disposition"].startswith('attachment; filename="image2model-')
        data = response.read()
    archive = zipfile.ZipFile(io.BytesIO(data))
    listed = client.get(f"/api/v1/download/{finished_job}/all").json()["files"]
    assert sorted(archive.namelist()) == sorted(f["filename"] for f in listed)
    # unzipped, each is a file anyone can read, not 0600 as on the server (found from outside)
    assert {info.external_attr >> 16 for info in archive.infolist()} == {0o100644}
    for name in archive.namelist():
        assert archive.read(name) == server.runtime.files.result_path(finished_job, name).read_bytes()


def test_cancel_then_delete_removes_job_and_files(live_server_factory, fake_fal) -> None:  # noqa: ANN001
    fake_fal.set_latency(30, 30)  # stays queued at FAL until cancelled
    server = live_server_factory(**OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        job_id = post_images(client, [("a.png", png(1)), ("b.png", png(2))], model="fal-ai/trellis").json()["job_id"]
        assert client.get(f"/api/v1/status/tasks/{job_id}").json()["cancel_requested"] is False
        cancelled = client.post(f"/api/v1/jobs/{job_id}/cancel")
        assert cancelled.status_code == 202
        # the answer says the cancel is under way, even while a photo at FAL still runs
        assert cancelled.json()["job_id"] == job_id and cancelled.json()["cancel_requested"] is True
        assert wait_job(server, job_id, timeout=30).state == JobState.CANCELLED
        assert client.get(f"/api/v1/status/tasks/{job_id}").json()["state"] == "cancelled"

        deleted = client.delete(f"/api/v1/jobs/{job_id}")
        assert deleted.status_code == 200 and deleted.json() == {"job_id": job_id, "deleted": True}
        assert not server.runtime.files.job_dir(job_id).exists()
        for path in (f"/api/v1/status/tasks/{job_id}", f"/api/v1/download/{job_id}/all",
                     f"/api/v1/status/tasks/{job_id}/stream"):
            assert_error(client.get(path), 404, "job_not_found")
        assert_error(client.delete(f"/api/v1/jobs/{job_id}"), 404, "job_not_found")
        assert_error(client.post(f"/api/v1/jobs/{job_id}/cancel"), 404, "job_not_found")


def test_spending_guard_is_a_429_with_its_message(live_server_factory) -> None:  # noqa: ANN001
    server = live_server_factory(fal_images_per_hour=2, **OPEN_LIMITS)  # FAL key set: paid models
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = post_images(client, [(f"{n}.png", png(n)) for n in range(3)], model="fal-ai/trellis")
    assert_error(response, 429, "spending_limit", "limit of 2 paid images an hour")
    assert_nothing_queued(server.runtime)


@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=False)
def test_a_full_queue_is_a_503_that_says_what_still_fits(live_server_factory, backend) -> None:  # noqa: ANN001, F811
    """No worker runs here, so what is queued stays queued: 2 of 3 places taken, 2 more photos
    do not fit, 1 does; the refused upload leaves nothing behind."""
    server = live_server_factory(fal_key="", embedded_worker=False, max_waiting_images=3, **OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        # more than the queue may ever hold: said so, not "0 photos are waiting" (found from outside)
        assert_error(post_images(client, [(f"{n}.png", png(n)) for n in range(4)]), 503, "queue_full",
                     "at most 3 photos at a time", "3 or fewer")
        first = post_images(client, [("a.png", png(1)), ("b.png", png(2))])
        assert first.status_code == 202, first.text
        refused = post_images(client, [("c.png", png(3)), ("d.png", png(4))])
        body = assert_error(refused, 503, "queue_full", "2 photos are already waiting", "Up to 1 photo would fit")
        assert body["details"] == {"waiting": 2, "limit": 3}
        assert server.runtime.store.all_job_ids() == [first.json()["job_id"]]
        assert post_images(client, [("e.png", png(5))]).status_code == 202
        assert_error(post_images(client, [("f.png", png(6))]), 503, "queue_full", "3 photos are already waiting")
    assert server.runtime.store.queued_count() == 3


def test_model_catalog_with_json_schema_per_model(client) -> None:  # noqa: ANN001
    response = client.get("/api/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["default"] == "local/relief"  # no FAL key here
    by_id = {m["id"]: m for m in body["models"]}
    assert set(by_id) == set(catalog())
    for model_id, spec in catalog().items():
        schema = by_id[model_id]["params_schema"]
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert set(schema["properties"]) == {p.name for p in spec.params}
    trellis = by_id["fal-ai/trellis"]
    assert not trellis["available"] and "FAL_KEY" in trellis["unavailable_reason"]
    assert trellis["params_schema"]["properties"]["ss_sampling_steps"] | {"description": ""} == {
        "type": "integer", "minimum": 1, "maximum": 50, "default": 12, "description": ""}


def test_health_and_readiness(server, client) -> None:  # noqa: ANN001
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body.pop("disk_free_mb") > 0
    assert body == {"status": "ready", "checks": {"store": True, "queue": True, "files": True, "disk": True,
                                                  "workers": True},
                    "queue": "sqlite", "fal_configured": False, "auth_required": False, "workers": 1}
    server.runtime.files.usable = lambda: False  # the data directory went read-only
    error = assert_error(client.get("/ready"), 503, "not_ready", "data directory is not writable")
    assert error["details"]["checks"]["files"] is False


def test_ready_says_fal_is_configured_but_never_shows_the_key(live_server_factory) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="fal-secret-value-123", **OPEN_LIMITS)
    response = httpx.get(server.url + "/ready")
    assert response.json()["fal_configured"] is True
    assert "fal-secret-value-123" not in response.text


def test_unknown_routes_and_wrong_methods_use_the_envelope(client, finished_job) -> None:  # noqa: ANN001
    assert_error(client.get("/api/v1/nothing/here"), 404, "not_found")
    response = client.put(f"/api/v1/status/tasks/{finished_job}")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET"
    assert_error(client.get("/api/v1/status/tasks/not-a-job"), 404, "job_not_found")
    assert_error(client.get(f"/api/v1/download/{finished_job}/nothing.glb"), 404, "file_not_found")
    # the page is Gradio's and keeps its own shapes
    assert client.get("/").status_code == 200


def test_form_fields_are_validated_with_clear_messages(server, client) -> None:  # noqa: ANN001
    image = [("a.png", png())]
    assert_error(post_images(client, image, params="{not json"), 422, "invalid_parameter", "JSON object")
    assert_error(post_images(client, image, params="[1, 2]"), 422, "invalid_parameter", "JSON object")
    assert_error(post_images(client, image, params="[" * 50_000), 422, "invalid_parameter")
    assert_error(post_images(client, image, params='{"inflation": 99}'), 422, "invalid_parameter", "'inflation'")
    assert_error(post_images(client, image, params='{"colour": 1}'), 422, "unknown_parameter", "'colour'")
    assert_error(post_images(client, image, model="no/such-model"), 422, "unknown_model", "no/such-model")
    assert_error(post_images(client, image, model="fal-ai/trellis"), 422, "model_unavailable", "FAL_KEY")
    assert_error(post_images(client, image, mode="sideways"), 422, "invalid_mode", "sideways")
    assert_error(post_images(client, image, params="x" * 70_000), 413, "field_too_large", "params")
    assert_nothing_queued(server.runtime)


@pytest.mark.parametrize("model, face_limit, sent, note", [
    ("tripo3d/tripo/v2.5/image-to-3d", "5000", {"face_limit": 5000}, "face_limit 5000 was sent as face_limit=5000."),
    ("fal-ai/hunyuan3d-v3/image-to-3d", "5000", {"face_count": 40000}, "sent as face_count=40000, the nearest"),
    ("fal-ai/trellis-2", "1" + "0" * 400, {"decimation_target": 2000000}, "the value was sent as decimation_target"),
    ("fal-ai/trellis", "5000", {}, "face_limit was ignored: TRELLIS has no face-count parameter"),
    ("local/relief", "5000", {}, "face_limit was ignored"),
])
def test_legacy_face_limit_field_goes_to_the_models_own_face_parameter(  # noqa: ANN001
        live_server_factory, fake_fal, model: str, face_limit: str, sent: dict, note: str) -> None:
    """The original frontend sends face_limit whatever the model: mapped, or ignored with a note."""
    server = live_server_factory(**OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = post_images(client, [("a.png", png())], model=model, face_limit=face_limit)
    assert response.status_code == 202, response.text
    body = response.json()
    assert len(body["notes"]) == 1 and note in body["notes"][0], body["notes"]
    params = server.runtime.service.get(body["job_id"]).params
    assert {k: params[k] for k in sent} == sent
    assert "face_limit" not in params or model.startswith("tripo3d")


def test_openapi_documents_every_route_with_response_models(client) -> None:  # noqa: ANN001
    spec = client.get("/openapi.json").json()
    expected = {
        ("post", "/api/v1/upload/"), ("get", "/api/v1/status/tasks/{task_id}"),
        ("get", "/api/v1/status/tasks/{task_id}/stream"), ("post", "/api/v1/jobs/{job_id}/cancel"),
        ("delete", "/api/v1/jobs/{job_id}"), ("get", "/api/v1/download/{job_id}/all"),
        ("get", "/api/v1/download/{job_id}/all.zip"), ("get", "/api/v1/download/{job_id}/{filename}"),
        ("get", "/api/v1/models"), ("get", "/health"), ("get", "/ready"), ("get", "/api/v1/health/"),
    }
    found = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert found == expected
    for method, path in expected:
        responses = spec["paths"][path][method]["responses"]
        success = next(v for k, v in responses.items() if k.startswith("2"))
        assert success.get("content"), (method, path)
        for status, response in responses.items():
            if status.startswith("4") or status.startswith("5"):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (method, path, status)
    for path in ("/health", "/ready", "/api/v1/health/", "/api/v1/health"):  # HEAD as load balancers probe
        assert client.head(path).status_code == 200, path
    # every route that reads the job store says it may answer 503 store_unavailable (found from outside)
    for method, path in expected - {("get", "/health"), ("get", "/api/v1/health/"), ("get", "/api/v1/models")}:
        assert "503" in spec["paths"][path][method]["responses"], (method, path)
    assert client.get("/docs").status_code == 200


def test_service_jobs_from_the_page_show_up_in_rest(server, client, tmp_path) -> None:  # noqa: ANN001
    """One JobService: a job made the way the page makes it is visible over REST."""
    source = tmp_path / "page.png"
    source.write_bytes(png(5))
    job = server.runtime.service.create_job([Upload("page.png", source)])
    assert client.get(f"/api/v1/status/tasks/{job.id}").json()["items"][0]["name"] == "page.png"


@pytest.mark.parametrize("disposition, expected", [
    ("filename*=UTF-8''%E2%82%AC%20shoe.png", "\u20ac shoe.png"),
    ("filename*=no-such-charset''shoe%2Epng", "shoe.png"),
    ('filename="plain.png"; filename*=UTF-8\'\'star.png', "star.png"),
])
def test_rfc5987_file_names(server, disposition, expected) -> None:  # noqa: ANN001
    from tests.rest_helpers import raw_request

    boundary = "zz"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; {disposition}\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + png() + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /api/v1/upload/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    status, answer = raw_request(server.port, head.encode(), body)
    assert status == 202, answer
    assert json.loads(answer)["uploaded_files"][0]["filename"] == expected


def test_the_upload_answers_before_its_items_are_queued_and_a_lost_queueing_loses_nothing(
        live_server_factory) -> None:  # noqa: ANN001
    """The items are queued once the 202 is sent (their start must not delay the answer). So
    a queue that fails at that moment cannot turn the answer into an error: the job is kept,
    and the reaper queues its items when they have waited ORPHAN_GRACE_SECONDS with no task."""
    server = live_server_factory(fal_key="", **OPEN_LIMITS)
    service = server.runtime.service
    real, failed = service.enqueue_many, []

    def enqueue_fails_once(entries: list[tuple[str, int, int | None]]) -> None:
        if not failed:
            failed.append(entries[0][0])
            raise ConnectionError("the queue went away")
        real(entries)

    service.enqueue_many = enqueue_fails_once
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = post_images(client, [("late.png", png(3)), ("later.png", png(4))])
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    done = wait_job(server, job_id, timeout=60)
    assert failed == [job_id], "the enqueue was not tried"
    assert done.state == JobState.SUCCEEDED, [i.error for i in done.items]
