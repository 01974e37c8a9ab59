"""Upload checks in bounded memory for every format (issue 15): a big photo is not decoded
to be checked (a 12 MP WebP held 187 MiB, a HEIC 99 MiB), its container is walked instead
(media/containers.py), so a cut-off file is still refused at once; damage the walk cannot see
fails that photo in words when the worker decodes it, and the job's other photos go on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image2model.errors import AppError
from image2model.jobs.model import ItemState, JobState
from image2model.jobs.service import Upload
from image2model.media.images import FULL_DECODE_BYTES
from tests.conftest import ROOT
from tests.engine_helpers import make_image, wait_done
from tests.imagefactory import png_with_bad_pixel_data

pytest.importorskip("pillow_heif")

SIZE = (2400, 1600)  # 11 MiB as RGB: past FULL_DECODE_BYTES, so checked by its container
GIF_SIZE = (4000, 2300)  # a GIF holds a byte per pixel
FORMATS = {  # file name: (Pillow format, save options)
    "lossy.webp": ("WEBP", {"quality": 80}),
    "lossless.webp": ("WEBP", {"lossless": True}),
    "photo.heic": ("HEIF", {"quality": 70}),
    "photo.avif": ("AVIF", {"quality": 60}),
    "lzw.tiff": ("TIFF", {"compression": "tiff_lzw"}),
    "plain.tiff": ("TIFF", {}),
    "plain.bmp": ("BMP", {}),
    "palette.gif": ("GIF", {}),
}
MAX_GROWTH_MIB = 10.0

MEASURE = """
import resource, sys
from pathlib import Path
from image2model.media.images import inspect_image
path = Path(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
inspect_image(path, path.name, 100_000_000)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def photo(size: tuple[int, int] = SIZE) -> Image.Image:
    """A photo-like picture: a gradient with noise (it compresses like a photo, not like a flat fill)."""
    w, h = size
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 200, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
    return Image.fromarray((ramp + rng.integers(0, 50, (h, w, 3))).astype(np.uint8))


@pytest.fixture(scope="module")
def big_files(tmp_path_factory) -> dict[str, Path]:  # noqa: ANN001
    import pillow_heif

    pillow_heif.register_heif_opener()
    folder = tmp_path_factory.mktemp("big")
    picture = photo()
    made = {}
    for name, (fmt, options) in FORMATS.items():
        image = photo(GIF_SIZE).convert("P") if fmt == "GIF" else picture
        image.save(folder / name, fmt, **options)
        made[name] = folder / name
    return made


@pytest.mark.parametrize("name", list(FORMATS))
def test_a_big_photo_is_checked_without_decoding_it(big_files, name: str) -> None:  # noqa: ANN001
    """Peak memory of the check, in a fresh process, stays under 10 MiB (decoding this
    picture alone needs 11 MiB, and the decoders' own buffers as much again)."""
    path = big_files[name]
    with Image.open(path) as img:
        assert img.width * img.height * len(img.getbands()) > FULL_DECODE_BYTES
    done = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    growth = float(done.stdout.split()[-1])
    assert growth <= MAX_GROWTH_MIB, f"{name}: checking it grew the process by {growth:.1f} MiB"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the check is the job service's, before any store write
@pytest.mark.parametrize("name", list(FORMATS))
def test_a_big_photo_cut_short_is_refused_and_nothing_is_kept(runtime_factory, big_files, tmp_path, name: str,  # noqa: ANN001
                                                                backend) -> None:  # noqa: ANN001
    data = big_files[name].read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) * 3 // 4])
    runtime = runtime_factory(start_consumer=False, fal_key="")
    with pytest.raises(AppError) as refused:
        runtime.service.create_job([Upload(name, cut)], model="local/relief")
    # the container walk says "damaged"; a TIFF or AVIF whose index was at the cut end no
    # longer opens at all, and is not an image we can read
    assert refused.value.code in ("corrupt_image", "unsupported_file_type"), refused.value.code
    assert f"'{name}'" in refused.value.message
    assert runtime.store.all_job_ids() == [] and runtime.files.job_ids() == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_damage_inside_a_big_photo_fails_that_photo_in_words(runtime_factory, big_files, tmp_path,  # noqa: ANN001
                                                             backend) -> None:  # noqa: ANN001
    """Bytes flipped inside a big LZW TIFF's data: its container is whole, so the upload is
    taken; the build process's decoder finds the damage, and the photo fails as damaged,
    not as a crash, while the job's other photo is made."""
    data = bytearray(big_files["lzw.tiff"].read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    damaged = tmp_path / "damaged.tiff"
    damaged.write_bytes(bytes(data))
    good = make_image(tmp_path / "good.png", seed=3)
    runtime = runtime_factory(fal_key="", workers=2)
    job = runtime.service.create_job([Upload("damaged.tiff", damaged), Upload("good.png", good)],
                                     model="local/relief")
    done = wait_done(runtime.service, job.id, timeout=120)
    assert done.state == JobState.PARTIAL, [(i.state, i.error) for i in done.items]
    bad, fine = done.items
    assert bad.state == ItemState.FAILED and bad.error is not None and bad.error.code == "corrupt_image", bad.error
    assert "damaged" in bad.error.message and "'damaged.tiff'" in bad.error.message, bad.error.message
    assert "00-" not in bad.error.message, "the person never saw the stored file's name"
    assert fine.state == ItemState.SUCCEEDED


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("model", ["fal-ai/trellis", "local/relief"])
def test_a_photo_damaged_after_its_upload_fails_in_words_named_as_uploaded(  # noqa: ANN001
        runtime_factory, fake_fal, tmp_path, backend, model: str) -> None:
    """A PNG damaged where the upload check cannot see it (on disk, after the check): a
    hosted model's preparation and the offline model both fail it as damaged, in words with
    the name the person gave it, and send nothing to FAL."""
    photo = make_image(tmp_path / "cat.png", seed=4, size=(300, 200))
    runtime = runtime_factory(start_consumer=False)
    job = runtime.service.create_job([Upload("cat.png", photo)], model=model)
    (stored,) = runtime.files.inputs_dir(job.id).iterdir()
    stored.write_bytes(png_with_bad_pixel_data(stored.read_bytes()))
    runtime.start_consumer()
    done = wait_done(runtime.service, job.id, timeout=60)
    (item,) = done.items
    assert item.state == ItemState.FAILED and item.error is not None, item
    assert item.error.code == "corrupt_image", item.error
    assert "'cat.png'" in item.error.message and stored.name not in item.error.message, item.error.message
    assert fake_fal.submits == []


@pytest.mark.parametrize("fmt, options, mode", [
    ("WEBP", {"quality": 80}, "RGB"), ("WEBP", {"quality": 80}, "RGBA"), ("WEBP", {"lossless": True}, "RGBA"),
    ("HEIF", {"quality": 60}, "RGB"), ("AVIF", {"quality": 60}, "RGB"),
])
def test_the_size_read_from_a_header_is_the_one_pillow_decodes(tmp_path, fmt: str, options: dict, mode: str) -> None:  # noqa: ANN001
    """Big WebP, HEIC and AVIF files are judged by their headers alone (their decoders read
    the whole file to open it): odd sizes, alpha or none, lossy or lossless."""
    from image2model.media.images import inspect_image

    image = photo((1901, 1533)).convert(mode)
    path = tmp_path / f"odd.{fmt.lower()}"
    image.save(path, fmt, **options)
    info = inspect_image(path, path.name, 100_000_000)
    with Image.open(path) as img:
        assert info.format == img.format
        if fmt == "WEBP":
            assert (info.width, info.height, info.mode) == (*img.size, img.mode)
        else:  # HEIF and AVIF declare the coded size, rounded up to even; the picture is cropped from it
            assert (info.width - img.width, info.height - img.height) in {(0, 0), (1, 1)}, (info, img.size)
    with pytest.raises(AppError) as refused:  # the pixel limit, from the header too
        inspect_image(path, path.name, 1901 * 1533 - 1)
    assert refused.value.code == "image_too_large" and f"{info.width}x{info.height}" in refused.value.message
