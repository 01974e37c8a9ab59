"""The load test (locustfile.py through bench/load.py) runs 20 s against the real app with the
fake FAL: no request or journey may fail, and every job made during the run must end
`succeeded`. No timings are asserted (they depend on the machine).

locust monkeypatches with gevent, so it only ever runs in a subprocess, never imported here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JOURNEYS = {"page visitor: photos -> GLB", "script user: REST upload -> ZIP"}
SEED_JOBS = 3  # locustfile's I2M_LOAD_SEED_JOBS default: jobs the watchers poll from the start


@pytest.mark.timeout(420)
def test_load_test_has_no_failures_and_every_job_succeeds(tmp_path: Path) -> None:
    assert importlib.util.find_spec("locust"), "locust is missing: pip install -r requirements-dev.txt"
    done = subprocess.run([sys.executable, "-m", "bench.load", "--users", "6", "--spawn-rate", "3", "--time", "20",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=400,
                          check=False)
    output = done.stdout[-4000:] + done.stderr[-4000:]

    # locust's own figures, from its --json-file
    entries = {(e["method"], e["name"]): e for e in json.loads((tmp_path / "locust.json").read_text())}
    failed = {name: e["num_failures"] for name, e in entries.items() if e["num_failures"]}
    assert not failed, f"failed requests: {failed}\n{output}"
    journeys = {name: e["num_requests"] for (method, name), e in entries.items() if method == "JOURNEY"}
    assert set(journeys) == JOURNEYS and all(journeys.values()), (journeys, output)
    expected = {("POST", "/gradio_api/upload"), ("POST", "/gradio_api/queue/join"),
                ("GET", "/gradio_api/queue/data (stream)"), ("GET", "/gradio_api/file=[result].glb"),
                ("POST", "/api/v1/upload/"), ("GET", "/api/v1/status/tasks/[id]/stream"),
                ("GET", "/api/v1/download/[id]/all.zip"), ("GET", "/api/v1/status/tasks/[id]")}
    assert expected <= set(entries), (sorted(entries), output)
    assert len(entries) == len(expected) + len(JOURNEYS) + 2, sorted(entries)  # + the page and /config: no stray names
    assert entries["GET", "/api/v1/status/tasks/[id]"]["num_requests"] >= 20, output

    # the app's side: every job in its store ended, and succeeded
    record = next(json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"benchmark": "load"'))
    assert record["jobs"] == {"succeeded": SEED_JOBS + sum(journeys.values())}, (record["jobs"], journeys)
    assert record["totals"]["failures"] == 0 and record["totals"]["journey_failures"] == 0, record["totals"]
    assert done.returncode == 0 and record["locust_exit_code"] == 0, output
