"""The named Gradio API, driven by the real gradio_client against the real app on uvicorn.

Offline model ("local/relief", the default without a FAL key) and a FAL model through the fake
FAL server; SQLite everywhere, and the main path in Redis mode too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from image2model.examples import EXAMPLES_DIR
from image2model.jobs.fairness import share_of
from tests.engine_helpers import load_glb, make_image, wait_until

SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
BOTH = pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
ENDPOINTS = {"/generate", "/job_status", "/cancel_job", "/models"}


@pytest.fixture
def client_for(tmp_path: Path):  # noqa: ANN201
    """Real gradio_clients against a live server; closed after the test."""
    made: list[Client] = []

    def build(server) -> Client:  # noqa: ANN001
        client = Client(server.url, download_files=str(tmp_path / "downloads"), verbose=False)
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


def examples(*names: str) -> list[str]:
    return [str(EXAMPLES_DIR / f"{name}.png") for name in names]


@BOTH
def test_generate_turns_three_images_into_three_glbs(
        live_server_factory, client_for, tmp_path, backend) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="")
    client = client_for(server)
    job = client.submit([handle_file(p) for p in examples("duck", "mug", "vase")], api_name="/generate")
    outputs = list(job)
    status, files = job.result()
    assert outputs[-1] == (status, files)
    assert len(outputs) >= 2, "no status was streamed before the end"
    assert all(update_files is None for _, update_files in outputs[:-1]), "an intermediate update sent files"
    assert status["state"] == "succeeded" and status["finished"] and status["model"] == "local/relief"
    assert [item["name"] for item in status["items"]] == ["duck.png", "mug.png", "vase.png"]
    # the models only, each one loads; the offline model's cut-out ("what the model saw")
    # stays in the status, with its URL
    assert [Path(f).name for f in files] == [f"{n}.glb" for n in ("duck", "mug", "vase")]
    for path in files:
        assert len(load_glb(Path(path)).geometry) >= 1
    assert [[f["name"] for f in item["files"]] for item in status["items"]] == [
        [f"{n}.glb", f"{n}.preview.png"] for n in ("duck", "mug", "vase")]
    # exactly the job service's status shape, also from /job_status
    service = server.runtime.service
    assert status == service.status(service.get(status["job_id"]))
    assert service.get(status["job_id"]).share == share_of("ip:127.0.0.1")  # the caller's fair share
    assert client.predict(status["job_id"], api_name="/job_status") == status


@SQLITE
def test_generate_with_a_fal_model_passes_the_options(
        live_server_factory, client_for, fake_fal, tmp_path, backend) -> None:  # noqa: ANN001
    server = live_server_factory()  # FAL_KEY is "test-key"
    client = client_for(server)
    status, files = client.predict([handle_file(examples("duck")[0])], "fal-ai/trellis", "per_image",
                                   {"seed": 7, "texture_size": 512}, api_name="/generate")
    assert status["state"] == "succeeded", status["items"][0]["error"]
    assert status["params"]["seed"] == 7 and status["params"]["texture_size"] == 512
    (submit,) = fake_fal.submits
    assert submit["arguments"]["seed"] == 7 and submit["arguments"]["texture_size"] == 512
    assert [Path(f).name for f in files] == ["duck.glb"]
    assert len(load_glb(Path(files[0])).geometry) >= 1
    # options may also come as a JSON string; a multi-view model takes all images as one item
    status, files = client.predict([handle_file(p) for p in examples("duck", "mug", "vase")],
                                   "fal-ai/hunyuan3d/v2/multi-view", "multi_view", '{"seed": 3}',
                                   api_name="/generate")
    assert status["state"] == "succeeded" and len(status["items"]) == 1 and status["params"]["seed"] == 3
    assert [Path(f).name for f in files] == ["duck.glb"]


@SQLITE
def test_the_api_lists_exactly_four_endpoints_and_the_catalog(
        live_server_factory, client_for, tmp_path, backend) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="")
    client = client_for(server)
    api = client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == ENDPOINTS
    assert api["unnamed_endpoints"] == {}
    generate = api["named_endpoints"]["/generate"]
    assert [p["parameter_name"] for p in generate["parameters"]] == ["images", "model", "mode", "options", "fal_key"]
    assert generate["parameters"][-1]["parameter_has_default"], "callers that send no key must keep working"
    models = {m["id"]: m for m in client.predict(api_name="/models")}
    assert models == {m["id"]: m for m in server.runtime.service.models()}
    assert models["local/relief"]["available"] and models["local/relief"]["default"]
    assert not models["fal-ai/trellis"]["available"] and "FAL_KEY" in models["fal-ai/trellis"]["unavailable_reason"]


@SQLITE
def test_cancel_job_really_stops_the_job(
        live_server_factory, client_for, fake_fal, tmp_path, backend) -> None:  # noqa: ANN001
    fake_fal.set_latency(0.0, 30.0)
    server = live_server_factory(fal_concurrency=1)  # the second photo waits for a place at FAL
    client = client_for(server)
    job = client.submit([handle_file(p) for p in examples("duck", "mug")], "fal-ai/trellis",
                        api_name="/generate")
    job_id = wait_until(lambda: job.outputs() and job.outputs()[0][0]["job_id"], timeout=20)
    service = server.runtime.service
    at_fal = lambda: [i.index for i in service.get(job_id).items if i.request_id]  # noqa: E731
    (sent,) = wait_until(at_fal, timeout=20)  # FAL has one image, the other waits for its place
    answer = client.predict(job_id, api_name="/cancel_job")
    assert answer["job_id"] == job_id
    status, files = job.result(timeout=30)
    assert status["state"] == "cancelled" and status["finished"]
    assert [item["state"] for item in status["items"]] == ["cancelled", "cancelled"]
    assert not files
    assert at_fal() == [sent]
    assert service.get(job_id).items[sent].request_id in fake_fal.cancelled
    assert len(fake_fal.submits) == 1, "the waiting image was sent to FAL after the cancel"
    assert client.predict(job_id, api_name="/job_status")["state"] == "cancelled"


@SQLITE
def test_mistakes_get_plain_errors_and_create_nothing(
        live_server_factory, client_for, tmp_path, backend) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="")
    client = client_for(server)
    twenty_six = [handle_file(str(make_image(tmp_path / "many" / f"p{n}.png", seed=n, size=(24, 24))))
                  for n in range(26)]
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list: milk, eggs")
    fake_png = tmp_path / "holiday.png"
    fake_png.write_bytes(b"this is not really a picture")
    duck = handle_file(examples("duck")[0])
    cases = [
        (([],), "/generate", "Please add at least one image."),
        ((twenty_six,), "/generate", "You sent 26 images; the limit is 25 per job."),
        (([handle_file(str(notes))],), "/generate", "'notes.txt' is not an image we can read"),
        (([duck, handle_file(str(fake_png))],), "/generate", "'holiday.png' is not an image we can read"),
        (([duck], "fal-ai/trellis"), "/generate", "needs a FAL.AI key"),
        (([duck], "no/such-model"), "/generate", "Unknown model 'no/such-model'"),
        (([duck], "", "multi_view"), "/generate", "does not take several views"),
        (([duck], "", "", "not json"), "/generate", "Options must be a JSON object"),
        (([duck], "", "", {"colour": "red"}), "/generate", "has no parameter 'colour'"),
        (([duck], "", "", {"resolution": 5}), "/generate", "Parameter 'resolution': 5 is below the minimum 32"),
        # a 401-digit integer, and numbers JSON can carry that no float holds
        (([duck], "", "", {"resolution": 10**400}), "/generate",
         "Parameter 'resolution': the value is above the maximum 512 (allowed: from 32 to 512)"),
        (([duck], "", "", '{"resolution": -' + "9" * 400 + "}"), "/generate",
         "Parameter 'resolution': the value is below the minimum 32"),
        (([duck], "", "", '{"inflation": 1e400}'), "/generate",
         "Parameter 'inflation': expected a finite number (allowed: from 0.05 to 1)"),
        (([duck], "", "", '{"detail": NaN}'), "/generate", "Parameter 'detail': expected a finite number"),
        (("0" * 32,), "/job_status", "No job with that id"),
        (("../etc/passwd",), "/cancel_job", "No job with that id"),
    ]
    for args, endpoint, words in cases:
        with pytest.raises(AppError) as caught:
            client.predict(*args, api_name=endpoint)
        message = str(caught.value)
        assert words.lower() in message.lower(), (endpoint, args[1:], message)
        assert "Traceback" not in message and "Error:" not in message
    assert server.runtime.files.job_ids() == [], "a refused request left a job behind"


@BOTH
def test_generate_counts_each_visitors_jobs_in_the_rest_upload_budget(
        live_server_factory, client_for, backend) -> None:  # noqa: ANN001
    """2 job starts a minute here: a mistake is not counted, two jobs are made, the third
    /generate is refused in words, and the REST upload from the same address shares that
    budget (in Redis mode the count lives in Redis, for every process)."""
    server = live_server_factory(fal_key="", rate_limit_upload="2/minute")
    client = client_for(server)
    with pytest.raises(AppError, match="Unknown model"):
        client.predict([handle_file(examples("duck")[0])], "no/such-model", "", {}, api_name="/generate")
    for _ in range(2):
        status, _files = client.predict([handle_file(examples("duck")[0])], "", "", {}, api_name="/generate")
        assert status["state"] == "succeeded"
    with pytest.raises(AppError, match="as many jobs as this site takes from one visitor"):
        client.predict([handle_file(examples("duck")[0])], "", "", {}, api_name="/generate")
    assert len(server.runtime.store.all_job_ids()) == 2
    rest = httpx.post(server.url + "/api/v1/upload/", files=[("files", ("duck.png", b"x", "image/png"))])
    assert rest.status_code == 429 and rest.json()["error"]["code"] == "rate_limited"


@SQLITE
def test_an_oversized_image_is_refused_in_words(
        live_server_factory, client_for, tmp_path, backend) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="", max_image_mb=0.01)
    client = client_for(server)
    big = tmp_path / "big.png"
    shutil.copyfile(examples("duck")[0], big)  # 18 KB, over a 10 KB limit
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the client refuses, or the server does
        client.predict([handle_file(str(big))], api_name="/generate")
    message = str(caught.value).lower()
    assert "exceeds the maximum file size" in message or "limit" in message, message
    assert server.runtime.files.job_ids() == []


def files_with_digest(root: Path, digest: str) -> list[Path]:
    """Every regular file under root whose bytes hash to digest (copies under any name)."""
    found: list[Path] = []
    if not root.exists():
        return found
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
            found.append(path)
    return found


@SQLITE
def test_results_are_served_in_place_and_a_deleted_job_leaves_no_copy_or_url(
        live_server_factory, tmp_path, monkeypatch, backend) -> None:  # noqa: ANN001
    """Gradio serves result files straight from the data directory: no copy in its temp folder
    that would outlive the job (still downloadable after a delete, and never cleaned up)."""
    gradio_temp = tmp_path / "gradio-temp"  # this test's own, so no other run's copies count
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(gradio_temp))
    server = live_server_factory(fal_key="")
    picture = make_image(tmp_path / "unique.png", seed=int.from_bytes(os.urandom(3), "big"), size=(80, 64))
    client = Client(server.url, download_files=False, verbose=False)  # FileData with the served URL
    try:
        status, files = client.predict([handle_file(str(picture))], api_name="/generate")
    finally:
        client.close()
    assert status["state"] == "succeeded", status["items"][0]["error"]
    assert gradio_temp.is_dir(), "the upload did not land in this test's Gradio temp folder"
    (served,) = files  # the model only
    job_id, url = status["job_id"], served["url"]
    result = server.runtime.files.result_path(job_id, "unique.glb")
    digest = hashlib.sha256(result.read_bytes()).hexdigest()
    assert url.startswith(f"{server.url}/gradio_api/file=")
    served_from = Path(served["path"])  # where Gradio reads the file it serves

    with httpx.Client(timeout=30) as http:
        answer = http.get(url)
        assert answer.status_code == 200 and hashlib.sha256(answer.content).hexdigest() == digest
        deleted = http.delete(f"{server.url}/api/v1/jobs/{job_id}")
        assert deleted.status_code == 200 and deleted.json()["deleted"], deleted.text
        assert not result.exists()
        gone = http.get(url)
    assert gone.status_code in (403, 404), (gone.status_code, "the deleted job's model is still served")
    assert hashlib.sha256(gone.content).hexdigest() != digest
    leftovers = files_with_digest(server.runtime.settings.data_dir, digest) + files_with_digest(gradio_temp, digest)
    assert leftovers == [], f"copies of the deleted job's model remain: {leftovers}"
    assert served_from == result, f"Gradio served a copy ({served_from}), not the job's file"


@SQLITE
def test_gradio_cleans_its_own_cache(live_server_factory, backend) -> None:  # noqa: ANN001
    """What Gradio does cache (uploads, examples) is deleted on a schedule, not kept forever."""
    from gradio.routes import App

    server = live_server_factory(fal_key="")
    (mounted,) = [route.app for route in server.app.routes if isinstance(getattr(route, "app", None), App)]
    frequency, age = mounted.get_blocks().delete_cache
    assert 0 < frequency <= 24 * 3600 and 0 < age <= 24 * 3600


@SQLITE
def test_generate_takes_only_files_uploaded_to_it_never_other_paths_on_the_server(  # noqa: ANN001
        live_server_factory, tmp_path, backend) -> None:
    """Gradio checks the paths a caller names only once the Blocks count as launched, which a
    mounted app does not by itself (app.py check_file_paths): unchecked, any picture on the
    server could become a model whose texture hands it back to the caller."""
    server = live_server_factory(fal_key="")
    private = tmp_path / "private" / "someone-elses.png"
    private.parent.mkdir()
    shutil.copyfile(EXAMPLES_DIR / "duck.png", private)
    inside_data = server.runtime.settings.data_dir / "planted.png"
    shutil.copyfile(EXAMPLES_DIR / "mug.png", inside_data)
    for path in (str(private), str(inside_data), "/etc/passwd", "../../../../etc/hostname"):
        body = {"data": [[{"path": path, "orig_name": "x.png", "meta": {"_type": "gradio.FileData"}}],
                         "local/relief", "", {}, ""]}
        event = httpx.post(f"{server.url}/gradio_api/call/generate", json=body).json()["event_id"]
        answer = httpx.get(f"{server.url}/gradio_api/call/generate/{event}", timeout=30).text
        assert "event: error" in answer and "not uploaded by a user" in answer, (path, answer[:300])
    assert server.runtime.store.all_job_ids() == []
    # what a client uploads is taken, as before
    client = Client(server.url, download_files=str(tmp_path / "downloads"), verbose=False)
    status, _ = client.predict([handle_file(str(EXAMPLES_DIR / "duck.png"))], "local/relief", "", {},
                               api_name="/generate")
    assert status["state"] == "succeeded"
