"""Scripts that send photos to FAL with no app around them: what the app's FAL rows compare with.

- `fal-client`: what a person would write with fal-client, one thread a photo, each
  uploading, subscribing (fal-client polls) and downloading.
- `raw`: the least any Python client can do on this machine: the five HTTP requests a photo
  costs (upload, submit, status stream, result, download) in one asyncio process, with the
  photos spread over small httpx clients (one pool for all of them looks at every connection
  on each request and release, encode/httpx#3215: 250 photos spent 14.5 CPU s in one client,
  4 s in clients of 4).

Each runs in a process of its own (as the app does), so it does not share a GIL with the fake
FAL in the bench process:

    python -m bench.plain_clients {fal-client,raw} FAKE_URL IMAGE_DIR COUNT

prints one JSON line: wall seconds for COUNT photos at once (after a 2-photo warm-up) and
the process's CPU seconds for them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.common import patch_fal_client

MODEL = "fal-ai/trellis"
KEY = "bench-key"
PHOTOS_PER_CLIENT = 4


def with_fal_client(images: list[Path]) -> None:
    import fal_client

    client = fal_client.SyncClient(key=KEY)

    def one(path: Path) -> None:
        url = client.upload_file(path)
        result = client.subscribe(MODEL, arguments={"image_url": url})
        httpx.get(result["model_mesh"]["url"], timeout=60).raise_for_status()

    with ThreadPoolExecutor(len(images)) as pool:
        list(pool.map(one, images))


async def raw_requests(base: str, images: list[Path]) -> None:
    auth = {"Authorization": f"Key {KEY}"}
    ssl = httpx.create_ssl_context()
    clients = [httpx.AsyncClient(timeout=60, verify=ssl, limits=httpx.Limits(max_connections=None))
               for _ in range(max(1, len(images) // PHOTOS_PER_CLIENT))]
    token = (await clients[0].post(base + "/rest/storage/auth/token", headers=auth, json={})).json()
    cdn = {"Authorization": f"{token['token_type']} {token['token']}"}

    async def one(n: int, path: Path) -> None:
        http = clients[n % len(clients)]
        upload = await http.post(token["base_url"] + "/files/upload", content=path.read_bytes(),
                                 headers={**cdn, "Content-Type": "image/png", "X-Fal-File-Name": path.name})
        upload.raise_for_status()
        submitted = await http.post(f"{base}/queue/{MODEL}", headers=auth,
                                    json={"image_url": upload.json()["access_url"]})
        request = submitted.raise_for_status().json()
        async with http.stream("GET", request["status_url"] + "/stream", params={"logs": "1"},
                               headers=auth) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data:") and '"COMPLETED"' in line:
                    break
        result = (await http.get(request["response_url"], headers=auth)).raise_for_status().json()
        (await http.get(result["model_mesh"]["url"])).raise_for_status()

    try:
        await asyncio.gather(*(one(n, path) for n, path in enumerate(images)))
    finally:
        for http in clients:
            await http.aclose()


def main() -> None:
    kind, base, directory, count = sys.argv[1], sys.argv[2].rstrip("/"), Path(sys.argv[3]), int(sys.argv[4])
    patch_fal_client(base)
    images = sorted(directory.glob("*.png"))[:count]
    run = (lambda photos: with_fal_client(photos)) if kind == "fal-client" \
        else (lambda photos: asyncio.run(raw_requests(base, photos)))
    run(images[:2])  # warm-up: imports and first connections
    started, cpu = time.perf_counter(), time.process_time()
    run(images)
    print(json.dumps({"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu}))


if __name__ == "__main__":
    main()
