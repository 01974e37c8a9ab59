"""P4 upload: 25 PNGs of about 10 MB each in one REST upload, then 5 copies of a 12 MP photo
in each other format (WebP, HEIC, AVIF, TIFF, GIF, BMP). Measures the server's peak RSS growth
during the request (VmHWM, reset just before) and the wall time. Target: growth <= 10 MiB,
i.e. uploads are streamed to disk and checked without being decoded whole.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.common import AppProcess, median, parse_args, proc_status_kb, report, reset_peak_rss, temp_dir


def noise_png(path: Path, side: int, seed: int) -> Path:
    """Random pixels do not compress: side 1830 gives a PNG of about 10 MB."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path, compress_level=1)
    return path


PHOTO_FORMATS = {  # extension: (Pillow format, options)
    "webp": ("WEBP", {"quality": 85}), "lossless.webp": ("WEBP", {"lossless": True}),
    "heic": ("HEIF", {"quality": 80}), "avif": ("AVIF", {"quality": 70}),
    "tiff": ("TIFF", {"compression": "tiff_lzw"}), "gif": ("GIF", {}), "bmp": ("BMP", {}),
}

# --quick (the suite's run) measures these two besides PNG: each row is an app of its own, and
# tests/test_upload_memory.py checks every format's memory already
QUICK_FORMATS = ("webp", "heic")


def photo_like(path: Path, size: tuple[int, int], fmt: str, options: dict) -> Path:  # noqa: ANN001
    """A gradient with noise: it compresses like a photo in every format."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    w, h = size
    rng = np.random.default_rng(2)
    ramp = np.linspace(0, 200, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
    image = Image.fromarray((ramp + rng.integers(0, 50, (h, w, 3))).astype(np.uint8))
    (image.convert("P") if fmt == "GIF" else image).save(path, fmt, **options)
    return path


def stream_files(paths: list[Path]):  # noqa: ANN201
    return [("files", (f"{n}-{p.name}", p.open("rb"), "application/octet-stream")) for n, p in enumerate(paths)]


def measure(app: AppProcess, images: list[Path], runs: int) -> dict:
    """Median wall and peak RSS growth of one upload of `images` (a list may repeat a file)."""
    growths, walls = [], []
    for _ in range(runs):
        before = proc_status_kb(app.pid, "VmRSS")
        peak_reset = reset_peak_rss(app.pid)
        files = stream_files(images)
        started = time.perf_counter()
        response = httpx.post(app.url + "/api/v1/upload/", files=files, timeout=300)
        walls.append(time.perf_counter() - started)
        for _, (_, handle, _) in files:
            handle.close()
        if response.status_code != 202:
            raise RuntimeError(f"upload refused: {response.status_code} {response.text[:200]}")
        peak = proc_status_kb(app.pid, "VmHWM")
        growths.append((peak - before) / 1024 if peak_reset else float("nan"))
    total_mb = sum(p.stat().st_size for p in images) / 1048576
    growth = max(growths)  # the first upload of a format shows it; later ones reuse the freed heap
    return {"files": len(images), "total_mb": round(total_mb, 1), "wall_s": round(median(walls), 3),
            "peak_growth_mib": round(growth, 1), "target_mib": 10, "met": growth <= 10,
            "mb_per_s": round(total_mb / median(walls), 1), "growths_mib": [round(g, 1) for g in growths]}


def measure_fresh(data_dir: Path, images: list[Path], runs: int) -> dict:
    """`measure` in an app of its own, warmed up by one small upload of the same format, so
    one row's freed memory cannot hide the next row's growth."""
    app = AppProcess(data_dir, MAX_IMAGE_MB="40", EMBEDDED_WORKER="false", RATE_LIMIT_API="off",
                     RATE_LIMIT_UPLOAD="off", MAX_WAITING_IMAGES="0")
    try:
        with Image.open(images[0]) as img:
            fmt = img.format
        small = data_dir.parent / f"warm-{data_dir.name}.{fmt.lower()}"
        photo_like(small, (64, 48), fmt, {})
        measure(app, [small], 1)
        return measure(app, images, runs)
    finally:
        app.stop()


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    count, side, photo_size = (3, 300, (600, 400)) if args.quick else (25, 1830, (4000, 3000))
    runs = args.runs or (1 if args.quick else 3)
    with temp_dir("i2m-bench-p4-") as tmp:
        rows = []
        images = [noise_png(tmp / f"noise{n:02d}.png", side, n) for n in range(count)]
        photos = {ext: photo_like(tmp / f"photo.{ext}", photo_size, fmt, options)
                  for ext, (fmt, options) in PHOTO_FORMATS.items() if ext in QUICK_FORMATS or not args.quick}
        rows.append({"format": "PNG (noise, 10 MB each)", **measure_fresh(tmp / "png", images, runs)})
        for ext, path in photos.items():
            rows.append({"format": f"{ext} ({photo_size[0] * photo_size[1] / 1e6:.0f} MP photo)",
                         **measure_fresh(tmp / ext, [path] * min(count, 5), runs)})
    report("P4-upload", "P4 upload: one REST request with every file (wall: median; growth: the largest)",
           ["format", "files", "total_mb", "wall_s", "mb_per_s", "peak_growth_mib", "met"], rows, args.quick)


if __name__ == "__main__":
    main()
