"""Access control on a live server: API keys and job ownership, rate limits (in memory and
shared through Redis by two app processes), trusted proxies, CORS and response headers."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from image2model.config import Settings
from image2model.jobs.model import JobState
from image2model.jobs.service import Upload
from image2model.web import security
from image2model.web.security import ApiKeys, RateLimiter, owner_id
from tests.conftest import ROOT, _flush, free_port, wait_for_port
from tests.rest_helpers import (  # noqa: F401 - backend is a fixture
    OPEN_LIMITS, assert_error, assert_nothing_queued, backend, png, post_images, start_server, wait_job,
)

ALICE = "alice-key-5f0c1d9e8b7a6f5e"
BOB = "bob-key-0a1b2c3d4e5f6a7b8c"
KEYS = f"{ALICE}, {BOB}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def job_routes(job_id: str, file_name: str) -> dict[str, tuple[str, str]]:
    return {
        "status": ("GET", f"/api/v1/status/tasks/{job_id}"),
        "stream": ("GET", f"/api/v1/status/tasks/{job_id}/stream"),
        "list": ("GET", f"/api/v1/download/{job_id}/all"),
        "file": ("GET", f"/api/v1/download/{job_id}/{file_name}"),
        "zip": ("GET", f"/api/v1/download/{job_id}/all.zip"),
        "cancel": ("POST", f"/api/v1/jobs/{job_id}/cancel"),
        "delete": ("DELETE", f"/api/v1/jobs/{job_id}"),
    }


@pytest.fixture
def keyed(live_server_factory):  # noqa: ANN001, ANN201
    return live_server_factory(fal_key="", api_keys=KEYS, **OPEN_LIMITS)


def test_auth_matrix_no_key_wrong_key_other_key_owner(keyed, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.DEBUG)
    with httpx.Client(base_url=keyed.url, timeout=30) as client:
        assert_error(post_images(client, [("a.png", png())]), 401, "missing_api_key", "Authorization: Bearer")
        assert_nothing_queued(keyed.runtime)
        created = post_images(client, [("a.png", png())], headers=bearer(ALICE))
        assert created.status_code == 202
        job_id = created.json()["job_id"]
        assert wait_job(keyed, job_id).state == JobState.SUCCEEDED
        job = keyed.runtime.service.get(job_id)
        assert job.owner == owner_id(ALICE) and ALICE not in job.owner

        routes = job_routes(job_id, "a.glb")
        for method, path in routes.values():
            response = client.request(method, path)
            assert_error(response, 401, "missing_api_key")
            assert response.headers["www-authenticate"] == "Bearer"
            assert_error(client.request(method, path, headers=bearer("not-a-key-at-all-123456")), 401,
                         "invalid_api_key")
            assert_error(client.request(method, path, headers=bearer(BOB)), 404, "job_not_found")
        for name in ("status", "stream", "list", "file", "zip", "cancel"):
            method, path = routes[name]
            assert client.request(method, path, headers=bearer(ALICE)).status_code in (200, 202), name
        assert client.delete(routes["delete"][1], headers=bearer(ALICE)).status_code == 200

        assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
        assert client.get("/ready").json()["auth_required"] is True
        assert_error(client.get("/api/v1/models"), 401, "missing_api_key")
        assert client.get("/api/v1/models", headers=bearer(BOB)).status_code == 200
    logged = "\n".join(f"{r.getMessage()} {r.args}" for r in caplog.records)
    assert ALICE not in logged and BOB not in logged, "an API key reached the logs"


def test_page_jobs_are_downloadable_by_their_id_without_a_key(keyed, tmp_path) -> None:  # noqa: ANN001
    """The page (and the Gradio API) have no key: their jobs (owner "") are reachable on the
    download routes by their unguessable id; everything else about them stays keyed."""
    source = tmp_path / "page.png"
    source.write_bytes(png(3))
    job = keyed.runtime.service.create_job([Upload("page.png", source)])
    assert wait_job(keyed, job.id).state == JobState.SUCCEEDED
    routes = job_routes(job.id, "page.glb")
    with httpx.Client(base_url=keyed.url, timeout=30) as client:
        for name in ("list", "file", "zip"):
            assert client.get(routes[name][1]).status_code == 200, name
            assert client.get(routes[name][1], headers=bearer(ALICE)).status_code == 200, name
            assert_error(client.get(routes[name][1], headers=bearer("wrong-key-000000000000")), 401,
                         "invalid_api_key")
        assert_error(client.get(routes["status"][1]), 401, "missing_api_key")
        assert_error(client.get(routes["status"][1], headers=bearer(ALICE)), 404, "job_not_found")


def test_every_link_in_a_keys_file_list_works_without_the_key(keyed) -> None:  # noqa: ANN001
    """GET /download/{job}/all gives links with fresh tokens: each of them (files[].url,
    download_urls[], zip_url) opens in a browser, which sends no key."""
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        job_id = post_images(http, [("a.png", png()), ("b.png", png(2))], headers=bearer(ALICE)).json()["job_id"]
        assert wait_job(keyed, job_id).state == JobState.SUCCEEDED
        listing = http.get(f"/api/v1/download/{job_id}/all", headers=bearer(ALICE)).json()
        links = [f["url"] for f in listing["files"]] + listing["download_urls"] + [listing["zip_url"]]
        assert len(links) == 2 * len(listing["files"]) + 1 >= 5
        for link in links:
            assert "token=" in link, link
            assert http.get(link).status_code == 200, link  # no header: the token alone
        assert_error(http.get(listing["zip_url"].split("?")[0]), 401, "missing_api_key")


def test_the_gradio_api_and_the_page_do_not_reach_a_keys_jobs(keyed, tmp_path) -> None:  # noqa: ANN001
    """With API_KEYS set, a key's REST job is not found through the Gradio API (which has no
    key): a person given one of its download links cannot read or cancel it there. Page jobs
    still answer."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        created = post_images(http, [("a.png", png())], headers=bearer(ALICE))
    alice_job = created.json()["job_id"]
    source = tmp_path / "page.png"
    source.write_bytes(png(3))
    page_job = keyed.runtime.service.create_job([Upload("page.png", source)]).id
    assert wait_job(keyed, alice_job).state == JobState.SUCCEEDED
    assert wait_job(keyed, page_job).state == JobState.SUCCEEDED
    client = Client(keyed.url, download_files=False, verbose=False)
    try:
        for endpoint in ("/job_status", "/cancel_job"):
            with pytest.raises(AppError, match="No job with that id"):
                client.predict(alice_job, api_name=endpoint)
        assert client.predict(page_job, api_name="/job_status")["state"] == "succeeded"
    finally:
        client.close()
    job = keyed.runtime.service.get(alice_job)
    assert not job.cancel_requested and job.state == JobState.SUCCEEDED


def test_gradios_file_route_does_not_serve_a_keys_job(keyed, tmp_path) -> None:  # noqa: ANN001
    """Gradio serves files under the data directory by path; a key's job (its photos and
    models) is not among them, however the path is spelled. A page job's files still are."""
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        alice_job = post_images(http, [("a.png", png())], headers=bearer(ALICE)).json()["job_id"]
        source = tmp_path / "page.png"
        source.write_bytes(png(3))
        page_job = keyed.runtime.service.create_job([Upload("page.png", source)]).id
        assert wait_job(keyed, alice_job).state == JobState.SUCCEEDED
        assert wait_job(keyed, page_job).state == JobState.SUCCEEDED
        files = keyed.runtime.files
        page_model = files.result_path(page_job, "page.glb")
        assert http.get(f"/gradio_api/file={page_model}").status_code == 200
        alice_model = files.result_path(alice_job, "a.glb")
        alice_photo = next(files.inputs_dir(alice_job).iterdir())
        around = f"{files.job_dir(page_job)}/../{alice_job}/results/a.glb"
        for path in (alice_model, alice_photo, around):
            assert_error(http.get(f"/gradio_api/file={path}"), 404, "file_not_found")
        assert http.get(f"/api/v1/download/{alice_job}/a.glb", headers=bearer(ALICE)).status_code == 200


def test_open_api_logs_a_warning_at_start(live_server_factory, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.WARNING, logger="image2model.web.security")
    live_server_factory(fal_key="", api_keys=KEYS)
    assert not any("API_KEYS is not set" in r.getMessage() for r in caplog.records)
    live_server_factory(fal_key="")
    assert any("API_KEYS is not set" in r.getMessage() for r in caplog.records)


def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch) -> None:  # noqa: ANN001
    calls: list[tuple[bytes, bytes]] = []
    real = security.hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", recording)
    keys = ApiKeys([ALICE, BOB, "carol-key-99999999999999"])
    assert keys.owner_for(ALICE) == owner_id(ALICE)
    assert len(calls) == 3, "a match must not end the comparison early"
    calls.clear()
    assert keys.owner_for(ALICE[:-1] + "x") is None and len(calls) == 3
    assert all(len(a) == len(b) == 32 for a, b in calls), "digests, so the key's length leaks nothing"
    assert keys.owner_for("") is None and keys.owner_for(None) is None
    assert len(owner_id(ALICE)) == 16 and owner_id(ALICE) != owner_id(BOB)


def test_rate_limit_per_key_with_headers_and_retry_after(live_server_factory) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="", api_keys=KEYS, rate_limit_api="4/minute")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        remaining = []
        for _ in range(4):
            response = client.get("/api/v1/models", headers=bearer(ALICE))
            assert response.status_code == 200
            assert response.headers["x-ratelimit-limit"] == "4"
            remaining.append(int(response.headers["x-ratelimit-remaining"]))
        assert remaining == [3, 2, 1, 0]
        refused = client.get("/api/v1/models", headers=bearer(ALICE))
        error = assert_error(refused, 429, "rate_limited", "Too many requests")
        assert 1 <= int(refused.headers["retry-after"]) <= 60 and error["details"]["limit"] == 4
        assert refused.headers["x-ratelimit-remaining"] == "0"
        assert int(refused.headers["x-ratelimit-reset"]) > time.time()
        assert client.get("/api/v1/models", headers=bearer(BOB)).status_code == 200  # per key
        # guessing keys is counted per address, so it is rate-limited too
        statuses = [client.get("/api/v1/models", headers=bearer(f"guess-{n}-0000000000")).status_code
                    for n in range(5)]
        assert statuses == [401, 401, 401, 401, 429]
        assert client.get("/health").status_code == 200  # health stays open


def test_job_creation_has_its_own_lower_limit(live_server_factory) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="", rate_limit_api="1000/minute", rate_limit_upload="2/minute")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        ids = [post_images(client, [("a.png", png())]).json()["job_id"] for _ in range(2)]
        third = post_images(client, [("a.png", png())])
        assert_error(third, 429, "rate_limited")
        assert third.headers["x-ratelimit-limit"] == "2" and "retry-after" in third.headers
        assert sorted(server.runtime.store.all_job_ids()) == sorted(ids)
        assert client.get(f"/api/v1/status/tasks/{ids[0]}").status_code == 200
        for job_id in ids:
            wait_job(server, job_id)


def client_from(address: str, server) -> httpx.Client:  # noqa: ANN001
    """A client whose connections come from another loopback address: uvicorn itself trusts
    X-Forwarded-For from 127.0.0.1 (its proxy_headers default), so these tests use 127.0.0.2+."""
    return httpx.Client(base_url=server.url, timeout=30, transport=httpx.HTTPTransport(local_address=address))


def test_forwarded_for_is_believed_only_from_trusted_proxies(live_server_factory) -> None:  # noqa: ANN001
    proxied = live_server_factory(fal_key="", rate_limit_api="3/minute", trusted_proxies="127.0.0.2/32")
    with client_from("127.0.0.2", proxied) as proxy:
        def get(forwarded: str) -> int:
            return proxy.get("/api/v1/models", headers={"X-Forwarded-For": forwarded}).status_code

        assert [get("9.9.9.9") for _ in range(3)] == [200, 200, 200]
        assert get("9.9.9.9") == 429
        assert get("1.2.3.4, 9.9.9.9") == 429  # a forged first hop does not buy a new bucket
        assert get("8.8.8.8") == 200  # another client behind the same proxy
    with client_from("127.0.0.3", proxied) as untrusted:  # not a configured proxy
        codes = [untrusted.get("/api/v1/models", headers={"X-Forwarded-For": f"7.7.7.{n}"}).status_code
                 for n in range(4)]
        assert codes == [200, 200, 200, 429], "X-Forwarded-For from an untrusted peer must be ignored"

    direct = live_server_factory(fal_key="", rate_limit_api="3/minute")  # no TRUSTED_PROXIES
    with client_from("127.0.0.2", direct) as client:
        codes = [client.get("/api/v1/models", headers={"X-Forwarded-For": f"10.0.0.{n}"}).status_code
                 for n in range(4)]
        assert codes == [200, 200, 200, 429], "without a trusted proxy X-Forwarded-For must be ignored"


def test_client_address_walks_the_chain_from_the_right() -> None:
    from starlette.requests import Request

    def address(peer: str, forwarded: str | None, trusted: list[str]) -> str:
        headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
        request = Request({"type": "http", "client": (peer, 1234), "headers": headers})
        return security.ClientAddress(trusted)(request)

    assert address("10.0.0.5", "203.0.113.9", ["10.0.0.0/8"]) == "203.0.113.9"
    assert address("10.0.0.5", "6.6.6.6, 203.0.113.9, 10.0.0.7", ["10.0.0.0/8"]) == "203.0.113.9"
    assert address("10.0.0.5", None, ["10.0.0.0/8"]) == "10.0.0.5"
    assert address("198.51.100.1", "203.0.113.9", ["10.0.0.0/8"]) == "198.51.100.1"
    assert address("::1", "2001:db8::1", ["::1"]) == "2001:db8::1"


def start_app_process(data_dir: Path, redis_url: str, port: int, **env: str) -> subprocess.Popen:
    """The real app in its own process (`uvicorn` on create_app), configured by environment."""
    environment = dict(os.environ, DATA_DIR=str(data_dir), REDIS_URL=redis_url, FAL_KEY="",
                       EMBEDDED_WORKER="false", PYTHONPATH=str(ROOT), **env)
    code = ("import uvicorn; from app import create_app; "
            f"uvicorn.run(create_app(), host='127.0.0.1', port={port}, log_level='warning')")
    return subprocess.Popen([sys.executable, "-c", code], env=environment, cwd=str(ROOT),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_rate_limit_is_shared_by_two_app_processes_through_redis(redis_server, tmp_path) -> None:  # noqa: ANN001
    _flush(redis_server)
    port = free_port()
    other = start_app_process(tmp_path / "data", redis_server, port, RATE_LIMIT_API="6/minute")
    here = start_server(tmp_path / "data", redis_url=redis_server, embedded_worker=False, rate_limit_api="6/minute")
    try:
        wait_for_port(port, timeout=60)
        there = f"http://127.0.0.1:{port}"
        codes, remaining = [], []
        for url in (here.url, there) * 3:
            response = httpx.get(url + "/api/v1/models", timeout=30)
            codes.append(response.status_code)
            remaining.append(int(response.headers["x-ratelimit-remaining"]))
        assert codes == [200] * 6 and remaining == [5, 4, 3, 2, 1, 0], "the two processes count together"
        assert_error(httpx.get(there + "/api/v1/models", timeout=30), 429, "rate_limited")
        assert_error(httpx.get(here.url + "/api/v1/models", timeout=30), 429, "rate_limited")
    finally:
        other.terminate()
        other.wait(15)
        here.stop()
        here.runtime.close()


def test_limiter_falls_back_to_memory_when_redis_is_down(tmp_path, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.WARNING, logger="image2model.web.security")
    settings = Settings(data_dir=tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_api="2/minute")
    limiter = RateLimiter(settings)

    async def hits() -> list[bool]:
        return [(await limiter.hit("api", "ip:1.2.3.4")).allowed for _ in range(3)]

    assert asyncio.run(hits()) == [True, True, False]
    assert any("rate-limit storage unreachable" in r.getMessage() for r in caplog.records)


def test_cors_only_for_configured_origins(live_server_factory) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="", cors_origins="https://app.example.com", **OPEN_LIMITS)
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        good = client.options("/api/v1/upload/", headers={"Origin": "https://app.example.com", **preflight})
        assert good.status_code == 200
        assert good.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "authorization" in good.headers["access-control-allow-headers"].lower()
        bad = client.options("/api/v1/upload/", headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in bad.headers
        simple = client.get("/api/v1/models", headers={"Origin": "https://app.example.com"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "retry-after" in simple.headers["access-control-expose-headers"].lower()

    closed = live_server_factory(fal_key="", **OPEN_LIMITS)  # none by default
    response = httpx.get(closed.url + "/api/v1/models", headers={"Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in response.headers


def test_api_and_downloads_are_locked_down_but_the_page_stays_embeddable(live_server_factory) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="", api_keys=KEYS, **OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        job_id = post_images(client, [("a.png", png())], headers=bearer(ALICE)).json()["job_id"]
        wait_job(server, job_id)
        for response in (client.get("/api/v1/models", headers=bearer(ALICE)),
                         client.get(f"/api/v1/download/{job_id}/a.glb", headers=bearer(ALICE)),
                         client.get("/api/v1/nothing"), client.get("/health")):
            assert response.headers["x-content-type-options"] == "nosniff"
            csp = response.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        page = client.get("/")
        assert page.status_code == 200
        assert "x-frame-options" not in page.headers
        assert "frame-ancestors" not in page.headers.get("content-security-policy", "")
        # keys are never sent to a browser: not in the page, its config, the docs or readiness
        for text in (page.text, client.get("/config").text, client.get("/openapi.json").text,
                     client.get("/ready").text):
            assert ALICE not in text and BOB not in text
