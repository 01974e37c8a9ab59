"""Every benchmark runs with --quick, so none of them rots. They print figures and never fail
on a missed target; this only checks that each ran and printed its one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("bench_*.py"))


def test_all_benchmarks_are_found() -> None:
    assert {"bench_orchestration", "bench_progress_push", "bench_watchers", "bench_upload", "bench_relief",
            "bench_status", "bench_footprint"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_quick(script: str) -> None:
    done = subprocess.run([sys.executable, "-m", f"bench.{script}", "--quick"], cwd=ROOT, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 1, done.stdout[-2000:]
    record = records[0]
    assert record["quick"] is True and record["results"], record
    assert "benchmark" in record
    if script == "bench_watchers":  # a figure of nothing is no figure: the update reached every stream
        assert all(row["reached"] == row["streams"] for row in record["results"]), record
