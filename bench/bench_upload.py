"""P4 upload: 25 PNGs of about 10 MB each in one REST upload. Measures the server's peak RSS
growth during the request (VmHWM, reset just before) and the wall time. Target: growth <= 10 MiB,
i.e. uploads are streamed to disk, never held in memory.
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


def stream_files(paths: list[Path]):  # noqa: ANN201
    return [("files", (p.name, p.open("rb"), "image/png")) for p in paths]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    count, side = (3, 300) if args.quick else (25, 1830)
    runs = args.runs or (1 if args.quick else 3)
    with temp_dir("i2m-bench-p4-") as tmp:
        images = [noise_png(tmp / f"noise{n:02d}.png", side, n) for n in range(count)]
        total_mb = sum(p.stat().st_size for p in images) / 1048576
        app = AppProcess(tmp / "data", MAX_IMAGE_MB="20", EMBEDDED_WORKER="false")
        growths, walls = [], []
        try:
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
        finally:
            app.stop()
    growth = median(growths)
    rows = [{"files": count, "total_mb": round(total_mb, 1), "wall_s": round(median(walls), 3),
             "peak_growth_mib": round(growth, 1), "target_mib": 10, "met": growth <= 10,
             "mb_per_s": round(total_mb / median(walls), 1)}]
    report("P4-upload", "P4 upload: one REST request with every file (median)",
           ["files", "total_mb", "wall_s", "mb_per_s", "peak_growth_mib", "met"], rows, args.quick,
           growths_mib=[round(g, 1) for g in growths])


if __name__ == "__main__":
    main()
