"""Benchmark the offline relief generator on one CPU core.

    python bench/bench_relief.py [--quick] [--repeats N] [--no-photos]

Synthesises product photos (tests/imagefactory.py) at 0.25, 1 and 4 megapixels (with
--quick: 0.01 and 0.02), runs generate_relief at its default parameters several times
each, and prints a table of medians followed by one JSON line with all the figures.

Then the ordinary photos bundled with scikit-image (coffee, chelsea, astronaut, rocket,
camera) at their own size and upscaled to 12 megapixels (4000x3000, saved as JPEG), timed
as the offline provider runs them: load_image from the file, then generate_relief. The
budget (issue 13) is under 1 s and a GLB of at most 3 MB for any photo up to 12 MP.
"""

from __future__ import annotations

import os

# One thread everywhere, set before numpy is imported, so the figures are per core.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tempfile  # noqa: E402

from PIL import Image  # noqa: E402

from bench.common import yardstick  # noqa: E402
from image2model.providers.relief import generate_relief, load_image  # noqa: E402
from tests.imagefactory import product_photo  # noqa: E402

FULL_SIZES_MP = (0.25, 1.0, 4.0)
QUICK_SIZES_MP = (0.01, 0.02)
PHOTOS = ("coffee", "chelsea", "astronaut", "rocket", "camera")
BIG_SIZE = (4000, 3000)  # 12 MP
BUDGET_SECONDS, BUDGET_MB = 1.0, 3.0


def pin_to_one_core() -> bool:
    """Measure on a single core where the OS lets us choose."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        return True
    return False


def size_for(megapixels: float) -> tuple[int, int]:
    """A 4:3 frame of about the given size."""
    width = round(math.sqrt(megapixels * 1e6 * 4 / 3))
    return width, round(width * 3 / 4)


def bench_one(megapixels: float, repeats: int) -> dict:
    image = product_photo(size=size_for(megapixels)).open()
    generate_relief(image)  # warm-up: imports, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = generate_relief(image)
        times.append(time.perf_counter() - start)
    return {
        "megapixels": round(image.width * image.height / 1e6, 3),
        "size": list(image.size),
        "seconds_median": round(statistics.median(times), 4),
        "seconds_min": round(min(times), 4),
        "output_mb": round(len(result.glb) / 1e6, 3),
        "vertices": result.vertices,
        "faces": result.faces,
        "mask_source": result.mask_source,
    }


def bench_photo(name: str, big: bool, repeats: int, folder: Path) -> dict:
    """One scikit-image photo, from a file on disk, the way the provider runs it."""
    from skimage import data

    image = Image.fromarray(getattr(data, name)()).convert("RGB")
    if big:  # a 12 MP photo: the same picture, upscaled and cropped to 4:3
        scale = max(BIG_SIZE[0] / image.width, BIG_SIZE[1] / image.height)
        image = image.resize((math.ceil(image.width * scale), math.ceil(image.height * scale)),
                             Image.Resampling.BICUBIC)
        left, top = (image.width - BIG_SIZE[0]) // 2, (image.height - BIG_SIZE[1]) // 2
        image = image.crop((left, top, left + BIG_SIZE[0], top + BIG_SIZE[1]))
    path = folder / f"{name}{'-12mp' if big else ''}.jpg"
    image.save(path, quality=92)
    generate_relief(load_image(path))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = generate_relief(load_image(path))
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "photo": name + (" 12MP" if big else ""),
        "size": list(image.size),
        "seconds_median": round(seconds, 4),
        "output_mb": round(len(result.glb) / 1e6, 3),
        "cutout_kb": round(len(result.cutout) / 1e3, 1),
        "faces": result.faces,
        "mask_source": result.mask_source,
        "shape": result.shape,
        "within_budget": seconds < BUDGET_SECONDS and len(result.glb) / 1e6 <= BUDGET_MB,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny images, for a smoke test")
    parser.add_argument("--repeats", type=int, default=None, help="runs per size (default 5, quick 2)")
    parser.add_argument("--no-photos", action="store_true", help="skip the scikit-image photos")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    pinned = pin_to_one_core()

    rows = [bench_one(mp, repeats) for mp in (QUICK_SIZES_MP if args.quick else FULL_SIZES_MP)]

    speed = yardstick()
    print(f"generate_relief, default parameters, median of {repeats} runs, "
          f"{'one core' if pinned else 'unpinned'}, Python {platform.python_version()}, "
          f"yardstick {speed:.3f} s (bench/common.py; lower is a faster core)")
    print(f"{'MP':>6} {'size':>11} {'seconds':>8} {'MB out':>7} {'vertices':>9} {'faces':>8}  mask")
    for r in rows:
        size = f"{r['size'][0]}x{r['size'][1]}"
        print(f"{r['megapixels']:>6.2f} {size:>11} {r['seconds_median']:>8.3f} {r['output_mb']:>7.2f} "
              f"{r['vertices']:>9} {r['faces']:>8}  {r['mask_source']}")
    photos: list[dict] = []
    if not args.no_photos:
        with tempfile.TemporaryDirectory() as folder:
            photos = [bench_photo(name, big, repeats, Path(folder))
                      for name in PHOTOS for big in ((False,) if args.quick else (False, True))]
        print(f"\nscikit-image photos: load_image + generate_relief from a JPEG, median of {repeats} runs "
              f"(budget: < {BUDGET_SECONDS:.0f} s, <= {BUDGET_MB:.0f} MB)")
        print(f"{'photo':>15} {'size':>11} {'seconds':>8} {'MB out':>7} {'cutout KB':>9} {'faces':>8}  mask / shape")
        for r in photos:
            size = f"{r['size'][0]}x{r['size'][1]}"
            flag = "" if r["within_budget"] else "  OVER BUDGET"
            print(f"{r['photo']:>15} {size:>11} {r['seconds_median']:>8.3f} {r['output_mb']:>7.2f} "
                  f"{r['cutout_kb']:>9.1f} {r['faces']:>8}  {r['mask_source']} / {r['shape']}{flag}")
    print(json.dumps({"benchmark": "relief", "quick": args.quick, "repeats": repeats, "one_core": pinned,
                      "yardstick_s": speed, "results": rows, "photos": photos}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
