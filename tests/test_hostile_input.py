"""Hostile and awkward input through the REST API of a live server.

Every refusal checks the status, the message (which names the file) and that nothing was
queued or stored. Every awkward-but-valid image checks what FAL actually received: upright,
8-bit RGB(A), no larger than FAL_MAX_SIDE. Download paths are sent as raw bytes, so no client
normalises them on the way.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import zipfile
import zlib

import httpx
import pytest
from PIL import Image

from image2model.jobs.model import JobState
from tests.imagefactory import exif_rotated_jpeg, png16, png_with_bad_pixel_data
from tests.rest_helpers import (  # noqa: F401 - backend is a fixture
    OPEN_LIMITS, assert_error, assert_nothing_queued, backend, encode, picture, png, post_images, raw_get,
    raw_request, read_response, start_server, wait_job,
)

MAX_MB = 1


@pytest.fixture(scope="module")
def refusing(tmp_path_factory):  # noqa: ANN001, ANN201
    """One server for all refusals: none of them may leave anything behind."""
    server = start_server(tmp_path_factory.mktemp("refusals"), max_image_mb=MAX_MB)
    yield server
    server.stop()
    server.runtime.close()


@pytest.fixture
def client(refusing):  # noqa: ANN001, ANN201
    with httpx.Client(base_url=refusing.url, timeout=30) as c:
        yield c
    assert_nothing_queued(refusing.runtime)


# --- files that are not (only) images ---------------------------------------------------
def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload.txt", "not an image")
    return buffer.getvalue()


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A 1-bit PNG of 400 megapixels that is about 50 KB on disk."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    body = zlib.compress(row * height, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def noisy(size: tuple[int, int] = (256, 256)) -> Image.Image:
    return Image.effect_noise(size, 60).convert("RGB")


def flipped(data: bytes, start: int, count: int) -> bytes:
    """Corrupt `count` bytes in place (libavif then fails with a RuntimeError, not an OSError)."""
    b = bytearray(data)
    for i in range(start, start + count):
        b[i] ^= 0xFF
    return bytes(b)


SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
       b'<script>alert(1)</script><rect width="64" height="64"/></svg>')
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"

REFUSALS = [
    # (file name, bytes, status, code, words in the message)
    ("photo.png", SVG, 415, "unsupported_file_type", ["'photo.png'", "not an image"]),  # name lies
    ("drawing.svg", SVG, 415, "unsupported_file_type", ["'drawing.svg'"]),
    ("scan.pdf", PDF, 415, "unsupported_file_type", ["'scan.pdf'"]),
    ("notes.jpg", b"just some text\n" * 20, 415, "unsupported_file_type", ["'notes.jpg'"]),
    ("page.jpg", b"<html><body><script>alert(1)</script></body></html>", 415, "unsupported_file_type",
     ["'page.jpg'"]),
    ("archive.zip", zip_bytes(), 415, "unsupported_file_type", ["'archive.zip'"]),
    ("polyglot.png", png() + zip_bytes(), 415, "unsupported_file_type", ["'polyglot.png'", "another kind"]),
    ("gifar.gif", encode(picture(), "GIF") + zip_bytes(), 415, "unsupported_file_type", ["'gifar.gif'"]),
    ("comment.jpg", encode(picture(), "JPEG", comment=b"<script>alert(1)</script>"), 415,
     "unsupported_file_type", ["'comment.jpg'", "another kind"]),
    ("pdf-inside.jpg", encode(picture(), "JPEG", comment=PDF), 415, "unsupported_file_type",
     ["'pdf-inside.jpg'"]),
    ("cut.jpg", encode(noisy(), "JPEG")[:6000], 400, "corrupt_image", ["'cut.jpg'", "damaged"]),
    ("cut.png", encode(noisy(), "PNG")[:9000], 400, "corrupt_image", ["'cut.png'"]),
    # damaged inside its pixel data: found by the chunk checksums, without decoding the pixels
    ("damaged.png", flipped(encode(noisy(), "PNG"), 5000, 4), 400, "corrupt_image", ["'damaged.png'"]),
    # damaged before it was written: the checksums pass, the pixel data does not inflate
    ("inflates-wrong.png", png_with_bad_pixel_data(encode(noisy(), "PNG")), 400, "corrupt_image",
     ["'inflates-wrong.png'", "damaged"]),
    ("empty.png", b"", 400, "empty_file", ["'empty.png'", "0 bytes"]),
    ("broken.avif", flipped(encode(picture(), "AVIF"), -21, 8), 400, "corrupt_image", ["'broken.avif'"]),
    ("bomb.png", bomb_png(), 413, "image_too_large", ["'bomb.png' (400 megapixels) has more than"]),
]


@pytest.mark.parametrize("name, data, status, code, words", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_by_content_with_a_message_naming_the_file(  # noqa: ANN001
        client, name, data, status, code, words) -> None:
    response = post_images(client, [(name, data)])
    assert_error(response, status, code, *words)


def test_decompression_bomb_is_refused_before_decoding(client) -> None:  # noqa: ANN001
    import time

    started = time.monotonic()
    assert_error(post_images(client, [("bomb.png", bomb_png(40_000, 40_000))]), 413, "image_too_large")
    assert time.monotonic() - started < 3, "the pixels must not be decoded"


def test_one_bad_file_refuses_the_whole_job(client) -> None:  # noqa: ANN001
    response = post_images(client, [("good.png", png(1)), ("fine.png", png(2)), ("evil.png", SVG)])
    assert_error(response, 415, "unsupported_file_type", "'evil.png'")


def test_every_bad_file_is_named_in_one_answer(client) -> None:  # noqa: ANN001
    """A person fixing a 25-photo upload learns every problem at once, not one per try."""
    response = post_images(client, [("good.png", png(1)), ("evil.png", SVG), ("empty.png", b""),
                                    ("fine.png", png(2))])
    body = assert_error(response, 415, "unsupported_file_type", "2 of the 4 photos", "'evil.png'", "'empty.png'")
    listed = body["details"]["files"]
    assert [(f["file"], f["code"]) for f in listed] == [("evil.png", "unsupported_file_type"),
                                                         ("empty.png", "empty_file")]


def test_a_field_sent_twice_is_refused_not_guessed(client) -> None:  # noqa: ANN001
    files = [("files", ("a.png", png(1), "image/png"))]
    fields = {"params": ['{"resolution": 64}', '{"resolution": 512}']}
    response = client.post("/api/v1/upload/", files=files, data=fields)
    assert_error(response, 400, "invalid_field", "'params' was sent more than once")


def test_26_files_are_refused_early(client) -> None:  # noqa: ANN001
    response = post_images(client, [(f"{n}.png", png(n)) for n in range(26)])
    assert_error(response, 400, "too_many_images", "25")


def test_no_files_at_all(client) -> None:  # noqa: ANN001
    assert_error(client.post("/api/v1/upload/", data={"model": "local/relief"},
                             files=[("other", ("", b"", "text/plain"))]), 400, "no_images")


def test_file_over_the_cap_is_413_naming_it(client) -> None:  # noqa: ANN001
    big = b"\x89PNG\r\n\x1a\n" + os.urandom(MAX_MB * 1024 * 1024 + 10_000)
    assert_error(post_images(client, [("small.png", png()), ("big.png", big)]), 413, "file_too_large",
                 "'big.png'", f"{MAX_MB} MB")


def test_a_fractional_size_limit_is_said_in_plain_units() -> None:
    from image2model.web.rest.uploads import UploadLimits

    assert UploadLimits(25, int(0.3 * 1048576)).describe_file_limit() == "307 KB"  # not "0.299999 MB"
    assert UploadLimits(25, 20 * 1048576).describe_file_limit() == "20 MB"


def multipart_head(port: int, boundary: str, extra: str) -> bytes:
    return (f"POST /api/v1/upload/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n{extra}\r\n").encode()


def test_size_cap_is_enforced_while_streaming(refusing, client) -> None:  # noqa: ANN001
    """The 413 arrives while the client is still sending: the body never ends here, so a
    server that read the whole upload first would never answer."""
    port, boundary = refusing.port, "b0undary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"huge.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(multipart_head(port, boundary, "Transfer-Encoding: chunked\r\n"))
        payload = part + b"\x00" * (MAX_MB * 1024 * 1024 + 200_000)
        for start in range(0, len(payload), 65536):
            block = payload[start:start + 65536]
            try:
                sock.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n")
            except OSError:
                break  # the server stopped reading: fine, its answer is waiting
        status, body = read_response(sock)
    assert status == 413 and b"file_too_large" in body and b"huge.png" in body


def test_declared_length_over_the_limit_is_refused_unread(refusing, client) -> None:  # noqa: ANN001
    port = refusing.port
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(multipart_head(port, "x", "Content-Length: 10000000000\r\n"))  # and no body
        status, body = read_response(sock)
    assert status == 413 and b"request_too_large" in body


def test_not_multipart_is_415(client) -> None:  # noqa: ANN001
    assert_error(client.post("/api/v1/upload/", json={"files": ["a.png"]}), 415, "unsupported_media_type",
                 "multipart/form-data")


def test_malformed_multipart_is_400(refusing, client) -> None:  # noqa: ANN001
    body = b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\nabc"  # no end
    status, answer = raw_request(refusing.port, multipart_head(refusing.port, "x", f"Content-Length: {len(body)}\r\n"),
                                 body)
    assert status == 400 and b"malformed_request" in answer
    garbage = b"\x00\xff" * 100
    status, answer = raw_request(refusing.port, multipart_head(refusing.port, "x",
                                                               f"Content-Length: {len(garbage)}\r\n"), garbage)
    assert status == 400


def test_file_in_another_field_is_400(client) -> None:  # noqa: ANN001
    response = client.post("/api/v1/upload/", files=[("image", ("a.png", png(), "image/png"))])
    assert_error(response, 400, "unexpected_field", "'files'")


# --- parameters that do not fit in a float ------------------------------------------------
HUGE = "1" + "0" * 400  # 10**400: Python parses it exactly; float() of it raises OverflowError
OUT_OF_RANGE_PARAMS = [
    # (the params field as sent, the parameter, its range as the message says it)
    (f'{{"resolution": {HUGE}}}', "resolution", "from 32 to 512"),
    (f'{{"resolution": -{HUGE}}}', "resolution", "from 32 to 512"),
    (f'{{"resolution": "{HUGE}"}}', "resolution", "from 32 to 512"),
    (f'{{"inflation": {HUGE}}}', "inflation", "from 0.05 to 1"),
    ('{"inflation": 1e400}', "inflation", "from 0.05 to 1"),  # JSON's 1e400 is inf in Python
    ('{"inflation": -1e400}', "inflation", "from 0.05 to 1"),
    ('{"inflation": Infinity}', "inflation", "from 0.05 to 1"),
    ('{"detail": NaN}', "detail", "from 0 to 1"),
    ('{"resolution": 1e400}', "resolution", "from 32 to 512"),
    ('{"resolution": "1e400"}', "resolution", "from 32 to 512"),
]


@pytest.mark.parametrize("params, name, allowed", OUT_OF_RANGE_PARAMS,
                         ids=[f"{n}-{i}" for i, (_, n, _) in enumerate(OUT_OF_RANGE_PARAMS)])
def test_numbers_beyond_a_float_are_a_422_naming_the_parameter_and_its_range(  # noqa: ANN001
        client, params, name, allowed) -> None:
    response = post_images(client, [("a.png", png())], model="local/relief", params=params)
    error = assert_error(response, 422, "invalid_parameter", f"Parameter '{name}'", allowed)
    assert HUGE not in error["message"] and len(error["message"]) < 200, error["message"]
    assert error["details"]["parameter"] == name


@pytest.mark.parametrize("value", ["lots", "5e3", "1" * 5000, "½"])
def test_a_face_limit_field_that_is_no_whole_number_is_a_422(live_server_factory, value: str) -> None:  # noqa: ANN001
    """The original API's face_limit form field: a plain message, nothing queued."""
    server = live_server_factory(**OPEN_LIMITS)  # FAL_KEY is set: Tripo is offered
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = post_images(client, [("a.png", png())], model="tripo3d/tripo/v2.5/image-to-3d",
                               face_limit=value)
        error = assert_error(response, 422, "invalid_parameter", "face_limit must be a whole number")
        assert len(error["message"]) < 120, error["message"]
        assert_nothing_queued(server.runtime)


# --- awkward images that must be accepted and normalised ---------------------------------
def first_frame_red_gif() -> bytes:
    red, blue = Image.new("RGB", (80, 60), (220, 20, 20)), Image.new("RGB", (80, 60), (20, 20, 220))
    return encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)


def accepted_images() -> list[tuple[str, bytes]]:
    base = picture((120, 90), 3)
    rgba = base.convert("RGBA")
    return [
        ("photo.jpg", encode(base, "JPEG")),
        ("notes.txt", encode(base, "PNG")),  # a real PNG with a misleading name and type
        ("web.webp", encode(base, "WEBP")),
        ("anim.gif", first_frame_red_gif()),
        ("bitmap.bmp", encode(base, "BMP")),
        ("scan.tiff", encode(base, "TIFF")),
        ("iphone.heic", encode(base, "HEIF")),
        ("modern.avif", encode(base, "AVIF")),
        ("print.jpg", encode(base.convert("CMYK"), "JPEG")),
        ("deep.png", png16((120, 90)).data),
        ("palette.png", encode(base.convert("P"), "PNG")),
        ("grey-alpha.png", encode(rgba.convert("LA"), "PNG")),
        ("rotated.jpg", exif_rotated_jpeg(6, (300, 400)).data),
        ("huge.png", encode(picture((1800, 1200), 4), "PNG")),
    ]


def test_the_page_gets_a_thumbnail_a_browser_can_show_for_every_accepted_format(tmp_path) -> None:  # noqa: ANN001
    from image2model.media.images import BROWSER_FORMATS, PREVIEW_SIDE, browser_preview

    for name, data in accepted_images():
        path = tmp_path / name
        path.write_bytes(data)
        shown = browser_preview(path)
        with Image.open(path) as original, Image.open(shown) as preview:
            if original.format in BROWSER_FORMATS:
                assert shown == path, name
            else:  # HEIC, TIFF: a small upright JPEG beside the upload
                assert shown.parent == path.parent and preview.format == "JPEG", name
                assert max(preview.size) <= PREVIEW_SIDE and preview.mode == "RGB", name
            assert preview.format in BROWSER_FORMATS, name
    assert sorted(p.name for p in tmp_path.glob("*.preview.jpg")) == ["iphone.heic.preview.jpg",
                                                                      "scan.tiff.preview.jpg"]


def test_every_accepted_format_and_odd_mode_reaches_fal_normalised(  # noqa: ANN001
        fake_fal, live_server_factory) -> None:
    server = live_server_factory(fal_max_side=256, **OPEN_LIMITS)
    images = accepted_images()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = post_images(client, images, content_type="text/plain", model="fal-ai/trellis")
        assert response.status_code == 202, response.text
        job = wait_job(server, response.json()["job_id"], timeout=90)
    assert job.state == JobState.SUCCEEDED, [(i.name, i.error) for i in job.items]
    sent = {s["request_id"]: s["arguments"]["image_url"] for s in fake_fal.submits}
    received: dict[str, Image.Image] = {}
    for item in job.items:
        data = fake_fal.file_bytes(sent[item.request_id])
        img = Image.open(io.BytesIO(data))
        img.load()
        received[item.name] = img
        assert img.format in ("JPEG", "PNG") and img.mode in ("RGB", "RGBA"), (item.name, img.format, img.mode)
        assert max(img.size) <= 256, (item.name, img.size)
    assert [i.name for i in job.items] == [name for name, _ in images]
    rotated = received["rotated.jpg"]
    assert rotated.height > rotated.width, "EXIF orientation was not applied"
    assert received["huge.png"].size == (256, 171), "a large image is downscaled before upload"
    red, _, blue = received["anim.gif"].convert("RGB").getpixel((40, 30))
    assert red > 150 and blue < 100, "a GIF's first frame is used"
    assert received["grey-alpha.png"].mode == "RGBA"


# --- download paths ------------------------------------------------------------------------
@pytest.fixture
def finished(live_server_factory):  # noqa: ANN001, ANN201
    server = live_server_factory(fal_key="", **OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        job_id = post_images(client, [("a.png", png())]).json()["job_id"]
    assert wait_job(server, job_id).state == JobState.SUCCEEDED
    secret = server.runtime.settings.data_dir / "secret.txt"
    secret.write_text("TOP-SECRET")
    return server, job_id, secret


def test_traversal_and_odd_names_are_all_404(finished) -> None:  # noqa: ANN001
    server, job_id, _ = finished
    base = f"/api/v1/download/{job_id}"
    targets = [
        f"{base}/../../secret.txt", f"{base}/..%2F..%2Fsecret.txt", f"{base}/%2e%2e%2f%2e%2e%2fsecret.txt",
        f"{base}/%2e%2e", f"{base}/..", f"{base}/%2Fetc%2Fpasswd", f"{base}//etc/passwd",
        f"{base}/..%5C..%5Csecret.txt", f"{base}/..\\..\\secret.txt", f"{base}/a.glb%00.png",
        f"{base}/a.glb%00", f"/api/v1/download/..%2F{job_id}/a.glb", f"/api/v1/download/../files/{job_id}/all",
        f"{base}/00-a.png",  # an input, not a result
        f"{base}/A.GLB", f"{base}/a.glb/", f"{base}/%252e%252e%252fsecret.txt", f"{base}/.%2e/secret.txt",
    ]
    for target in targets:
        status, body = raw_get(server.port, target)
        assert status == 404, (target, status, body[:200])
        assert json.loads(body)["error"]["code"] in ("not_found", "file_not_found", "job_not_found"), target
        assert b"TOP-SECRET" not in body and b"glTF" not in body, target
    assert raw_get(server.port, f"{base}/a.glb")[0] == 200  # the real file still is served


ODD_RANGES = ["bytes=²-³", "bytes=0-²", "bytes=¹²³-", "bytes=0-1-2", "bytes=0-1,4-9", "bytes=10-5",
              "bytes=0-99999999999999999999", "bytes=99999999-", "bytes=-5", "bytes=", "items=0-1", "bytes=a-b"]


def test_odd_range_headers_are_never_a_500(finished) -> None:  # noqa: ANN001
    """On the API's downloads and on Gradio's file route (which serves the page's models): a
    Range that cannot be used is ignored or refused, never a crash. Gradio 6.31 itself gave
    a 500 for "²" (str.isnumeric() before int()), two ranges and a second dash."""
    server, job_id, _ = finished
    result = server.runtime.files.result_path(job_id, "a.glb")
    whole = result.read_bytes()
    for target in (f"/api/v1/download/{job_id}/a.glb", f"/gradio_api/file={result}"):
        assert raw_get(server.port, target, {"Range": "bytes=0-3"}) == (206, whole[:4]), target
        for value in ODD_RANGES:
            status, body = raw_get(server.port, target, {"Range": value})  # sent as latin-1 bytes
            assert status in (200, 206, 416), (target, value, status, body[:200])
            if status == 200:
                assert body == whole, (target, value)


def test_links_are_never_followed(finished, tmp_path) -> None:  # noqa: ANN001
    server, job_id, secret = finished
    files = server.runtime.files
    url = f"{server.url}/api/v1/download/{job_id}/a.glb"
    real = files.result_path(job_id, "a.glb")
    keep = tmp_path / "a.glb"
    shutil.copy2(real, keep)

    real.unlink()
    real.symlink_to(secret)  # the file itself is a symlink
    assert_error(httpx.get(url), 404, "file_not_found")
    real.unlink()
    os.link(secret, real)  # a hard link to a file elsewhere
    assert_error(httpx.get(url), 404, "file_not_found")
    real.unlink()

    results = files.results_dir(job_id)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(results), elsewhere)
    shutil.copy2(keep, elsewhere / "a.glb")
    results.symlink_to(elsewhere, target_is_directory=True)  # a directory above it is a symlink
    assert_error(httpx.get(url), 404, "file_not_found")
    assert_error(httpx.get(f"{server.url}/api/v1/download/{job_id}/all.zip"), 404, "no_results",
                 "ended without any result files")

    results.unlink()
    shutil.move(str(elsewhere), results)
    assert httpx.get(url).status_code == 200


def test_hostile_upload_names_are_kept_as_labels_but_never_reach_the_disk(live_server_factory) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="", **OPEN_LIMITS)
    names = ["../../evil.png", "..\\..\\evil2.png", "/etc/passwd.png", ".htaccess", "ünï 写真.png",
             "x" * 300 + ".png", "a%2F..%2Fb.png", ""]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = post_images(client, [(name, png(n)) for n, name in enumerate(names)])
        assert response.status_code == 202, response.text
        job = wait_job(server, response.json()["job_id"])
    assert job.state == JobState.SUCCEEDED, [i.error for i in job.items]
    root = server.runtime.settings.data_dir
    job_dir = server.runtime.files.job_dir(job.id)
    for path in root.rglob("*"):
        if "evil" in path.name or "passwd" in path.name:
            assert path.parent in (job_dir / "inputs", job_dir / "results"), path
    for path in job_dir.rglob("*"):
        assert path.resolve().is_relative_to(job_dir), path
        assert "/" not in path.name and "\\" not in path.name and not path.name.startswith(".")
    results = [f.name for i in job.items for f in i.files if f.kind == "model"]
    assert all(len(n) <= 130 and n.endswith(".glb") for n in results), results
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name in results:
            assert client.get(f"/api/v1/download/{job.id}/{name}").status_code == 200, name
