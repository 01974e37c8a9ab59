"""A bounded schemathesis run against /openapi.json of a live server: no 5xx, and every
response (status, headers, content type, body, SSE events) matches the documented schema.

Run twice: with the API open, and with API_KEYS set (then schemathesis also checks that
leaving the key out is refused). `positive_data_acceptance` is left out: random bytes are not
images and random ids name no job, so "valid by the schema" is rightly refused with 4xx.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.rest_helpers import start_server

KEY = "schemathesis-key-0123456789abcdef"


@pytest.mark.parametrize("api_keys", ["", KEY], ids=["open", "keyed"])
def test_schemathesis_finds_no_server_error_and_no_schema_break(tmp_path, api_keys) -> None:  # noqa: ANN001
    server = start_server(tmp_path / "data", api_keys=api_keys)
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--include-path-regex", "^/(api/v1/|health$|ready$)",
        "--max-examples", "25", "--seed", "7", "--no-shrink", "--workers", "2",
        "--request-timeout", "20", "--suppress-health-check", "all",
    ]
    if api_keys:
        command += ["-H", f"Authorization: Bearer {api_keys}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=150, cwd=tmp_path)
    finally:
        server.stop()
        server.runtime.close()
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    generated = re.search(r"(\d+) generated", result.stdout)
    assert generated and int(generated.group(1)) >= 200, result.stdout[-3000:]
    assert "Selected: 12/12" in result.stdout, result.stdout[-3000:]
