"""Log lines are logfmt: one event is one line, and every value parses back to what was logged,
whatever quotes, newlines or fake `key=value` pairs it holds (FAL's error texts reach the logs)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from image2model.jobs.model import JobState
from image2model.logs import log_context, make_formatter
from image2model.runtime import Runtime
from image2model.web.access_log import AccessLog
from tests.conftest import ROOT, free_port, make_settings, start_consumer_process, wait_for_port
from tests.engine_helpers import uploads_for, wait_done, wait_until

FORGED = 'it said "no"\nlevel=error job_id=x msg="forged line"\r\n\ttab \\ backslash = sign'
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d")
HEAD = ["time", "level", "logger", "proc", "msg"]


def parse_logfmt(line: str) -> list[tuple[str, str]]:
    """A strict logfmt reader: key=bare or key="escaped", one space apart, nothing else."""
    pairs: list[tuple[str, str]] = []
    escapes = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}
    at = 0
    while at < len(line):
        key = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=").match(line, at)
        assert key, f"no key at {at}: {line[at:at + 40]!r}"
        at = key.end()
        if line.startswith('"', at):
            at += 1
            value = []
            while line[at] != '"':
                char = line[at]
                if char == "\\":
                    kind = line[at + 1]
                    if kind in escapes:
                        value.append(escapes[kind])
                        at += 2
                    else:
                        width = {"u": 4, "U": 8}[kind]
                        value.append(chr(int(line[at + 2:at + 2 + width], 16)))
                        at += 2 + width
                else:
                    assert char.isprintable(), f"raw {char!r} inside a quoted value"
                    value.append(char)
                    at += 1
            at += 1
            pairs.append((key.group()[:-1], "".join(value)))
        else:
            bare = re.compile(r'[^\s="\\]+').match(line, at)
            assert bare, f"empty bare value at {at}: {line!r}"
            assert bare.group().isprintable()
            pairs.append((key.group()[:-1], bare.group()))
            at = bare.end()
        if at < len(line):
            assert line[at] == " ", f"fields must be one space apart: {line[at:at + 40]!r}"
            at += 1
    return pairs


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through the real formatter into a buffer (as the app's handler does)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(make_formatter("logfmt"))
    logger = logging.getLogger("image2model.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def lines_of(out: io.StringIO) -> list[str]:
    text = out.getvalue()
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    assert text.splitlines() == lines, "a line separator other than \\n reached the output"
    return lines


def test_quotes_newlines_and_forged_fields_stay_inside_one_field(captured) -> None:  # noqa: ANN001
    logger, out = captured
    before = time.time()
    logger.warning("item failed: %s", FORGED, extra={"job_id": "0" * 32, "item": 2, "code": "fal error",
                                                      "request_id": 'r"1\n', "model": "fal-ai/trellis"})
    logger.info("plain")
    logger.error("controls \x00\x1b[31m red \u2028 \u2029 \x85 \u202e \U000e0001 end")
    lines = lines_of(out)
    assert len(lines) == 3

    first = parse_logfmt(lines[0])
    keys = [k for k, _ in first]
    assert keys == HEAD + ["job_id", "item", "request_id", "model", "code"]
    fields = dict(first)
    assert fields["msg"] == f"item failed: {FORGED}"
    assert fields["level"] == "warning" and fields["logger"] == "image2model.test_logs"
    assert fields["job_id"] == "0" * 32 and fields["item"] == "2" and fields["code"] == "fal error"
    assert fields["request_id"] == 'r"1\n' and fields["model"] == "fal-ai/trellis"
    assert keys.count("level") == 1 and keys.count("job_id") == 1, "a field was forged"
    # grep-friendly: the real fields are bare, the message always quoted
    assert " level=warning " in lines[0] and f" job_id={'0' * 32} " in lines[0]
    assert 'msg="item failed: it said \\"no\\"\\nlevel=error' in lines[0]

    assert TIME.fullmatch(fields["time"]), fields["time"]
    stamp = datetime.fromisoformat(fields["time"])
    assert stamp.tzinfo is not None and before - 1 <= stamp.timestamp() <= time.time() + 1

    assert dict(parse_logfmt(lines[1]))["msg"] == "plain"
    assert dict(parse_logfmt(lines[2]))["msg"] == ("controls \x00\x1b[31m red \u2028 \u2029 \x85 \u202e "
                                                   "\U000e0001 end")
    assert "\x1b" not in out.getvalue() and "\u202e" not in out.getvalue()


def test_a_traceback_is_one_escaped_field(captured) -> None:  # noqa: ANN001
    logger, out = captured
    try:
        raise ValueError(f"FAL answered: {FORGED}")
    except ValueError:
        logger.exception("item crashed", extra={"job_id": "a" * 32, "item": 0})
        exc_text = logging.Formatter().formatException(sys.exc_info())
    logger.warning("with a stack", stack_info=True)
    lines = lines_of(out)
    assert len(lines) == 2, lines

    fields = parse_logfmt(lines[0])
    assert [k for k, _ in fields] == HEAD + ["job_id", "item", "exc"]
    values = dict(fields)
    assert values["msg"] == "item crashed" and values["level"] == "error"
    assert values["exc"] == exc_text
    assert values["exc"].startswith("Traceback (most recent call last):")
    assert values["exc"].endswith(f"ValueError: FAL answered: {FORGED}")

    stacked = dict(parse_logfmt(lines[1]))
    assert stacked["stack"].startswith("Stack (most recent call last):")
    assert "test_a_traceback_is_one_escaped_field" in stacked["stack"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the format does not depend on it
def test_a_fal_error_text_logged_by_a_real_worker_stays_on_its_line(  # noqa: ANN001
        runtime_factory, fake_fal, tmp_path, backend) -> None:
    """End to end: FAL refuses the image with a message holding quotes and a newline; the real
    worker logs it (item failed: ...) through the real formatter, on the root logger."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(make_formatter("logfmt"))
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    if not old_level or old_level > logging.WARNING:
        root.setLevel(logging.WARNING)
    try:
        fake_fal.fail(422, on="submit", detail=FORGED)
        runtime = runtime_factory()
        job = runtime.service.create_job(uploads_for(tmp_path, ["bowl.png"]), model="fal-ai/trellis")
        done = wait_done(runtime.service, job.id, timeout=60)
        wait_until(lambda: "item failed" in out.getvalue(), timeout=10)  # logged just after the state
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert done.state == JobState.FAILED
    lines = lines_of(out)
    failed = [dict(parse_logfmt(line)) for line in lines if "item failed" in line]
    assert len(failed) == 1, lines
    (event,) = failed
    assert event["job_id"] == job.id and event["item"] == "0" and event["level"] == "warning"
    assert event["worker"] == done.items[0].worker and event["worker"].count("/") == 1, "which worker ran it"
    assert event["msg"] == f"item failed: {done.items[0].error.message}"
    assert "\n" in done.items[0].error.message or '"' in done.items[0].error.message, (
        "FAL's text no longer reaches the message; this test then proves nothing")
    for line in lines:
        parse_logfmt(line)  # every line the run logged is one well-formed event


# --- both formats, every line parsed ------------------------------------------------------------

HOSTILE = ['said "no" = yes', "two\nlines\r\n", "sep \u2028 para \u2029 nel \x85 end", 'k=v a="b"', "\\ \t \x1b[31m"]


def parse(fmt: str, line: str) -> list[tuple[str, object]]:
    """One line in either format, as (key, value) pairs in their order."""
    if fmt == "json":
        return list(json.loads(line).items())
    return list(parse_logfmt(line))


def events_in(fmt: str, text: str) -> list[dict[str, object]]:
    """Every line of `text` parsed; a line that is not one whole event fails the test."""
    if not text:
        return []
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    assert text.splitlines() == lines, "a line separator other than \\n reached the output"
    return [dict(parse(fmt, line)) for line in lines]


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_both_formats_keep_every_event_on_one_parseable_line(fmt: str) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(make_formatter(fmt))
    logger = logging.getLogger(f"image2model.test_logs.{fmt}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        for text in HOSTILE:
            logger.info("msg: %s", text, extra={"job_id": "j" * 32, "item": 1, "request_id": text})
        with log_context(worker="host:1:abc/def"):
            try:
                raise RuntimeError(HOSTILE[0] + HOSTILE[1])
            except RuntimeError:
                logger.exception("crashed %s", HOSTILE[2], extra={"job_id": "k" * 32, "item": 0})
                exc_text = logging.Formatter().formatException(sys.exc_info())
        logger.warning("outside the context")
    finally:
        logger.removeHandler(handler)
    events = events_in(fmt, out.getvalue())
    assert len(events) == len(HOSTILE) + 2
    for text, event in zip(HOSTILE, events):
        assert list(event) == HEAD + ["job_id", "item", "request_id"]
        assert event["msg"] == f"msg: {text}" and event["request_id"] == text
        assert str(event["item"]) == "1" and TIME.fullmatch(str(event["time"]))
    crashed = events[len(HOSTILE)]
    assert list(crashed) == HEAD + ["job_id", "item", "worker", "exc"]
    assert crashed["level"] == "error" and crashed["worker"] == "host:1:abc/def"
    assert crashed["exc"] == exc_text and crashed["msg"] == f"crashed {HOSTILE[2]}"
    assert list(events[-1]) == HEAD, "the context ends with its block"
    if fmt == "json":
        assert out.getvalue().isascii(), "U+2028 and friends stay escaped"


# --- ACCESS_LOG on a real uvicorn server ------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the access log does not depend on it
@pytest.mark.parametrize("mode", ["errors", "all", "off"])
def test_access_log_modes_on_a_real_server(live_server_factory, backend, mode: str) -> None:  # noqa: ANN001
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(make_formatter("logfmt"))
    access = logging.getLogger("image2model.access")
    old_level = access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    missing = f"/api/v1/status/tasks/{'0' * 32}"
    handle = f"/api/v1/download/{'0' * 32}.secret-handle-token/a.glb"  # a task handle in the path
    try:
        server = live_server_factory(access_log=mode)
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert httpx.get(f"{server.url}{missing}?token=secret-token").status_code == 404
        assert httpx.get(f"{server.url}{handle}").status_code in (401, 404)
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    events = events_in("logfmt", out.getvalue())
    logged = {e["path"] for e in events}
    hidden = f"/api/v1/download/{'0' * 32}.(token)/a.glb"
    expected = {"errors": {missing, hidden}, "all": {"/health", missing, hidden}, "off": set()}
    assert logged == expected[mode], events
    for event in events:
        assert event["level"] == "info" and event["method"] == "GET" and float(str(event["duration_ms"])) >= 0
        assert str(event["client"]).startswith("127.0.0.1:") and event["logger"] == "image2model.access"
    assert "secret-token" not in out.getvalue(), "a job token in the query string must not be logged"
    assert "secret-handle-token" not in out.getvalue(), "a task handle's token must not be logged (found from outside)"


def test_a_server_error_is_a_warning_and_a_success_makes_no_record() -> None:
    """The middleware around a small ASGI app: 5xx (answered, or raised before any answer) at
    warning level; in `errors` mode a success creates no log record at all."""

    async def app(scope, receive, send) -> None:  # noqa: ANN001
        if scope["path"] == "/raise":
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": int(scope["path"][1:]), "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(_: dict) -> None:
        return None

    def call(path: str) -> None:
        scope = {"type": "http", "method": "GET", "path": path, "client": ("127.0.0.1", 1)}
        asyncio.run(AccessLog(app)(scope, receive, send))

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    access = logging.getLogger("image2model.access")
    old_level = access.level
    access.addHandler(handler)
    access.setLevel(logging.DEBUG)
    try:
        call("/200")
        call("/302")
        assert records == []
        call("/404")
        call("/503")
        with pytest.raises(RuntimeError):
            call("/raise")
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    assert [(r.levelname, r.status) for r in records] == [  # type: ignore[attr-defined]
        ("INFO", 404), ("WARNING", 503), ("WARNING", 500)]


# --- real processes: every line they print is one event in the chosen format -----------------

def test_the_web_process_logs_every_line_as_json(tmp_path: Path) -> None:
    """`python app.py` with LOG_FORMAT=json: uvicorn's, huey's and our own lines all parse."""
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "PORT": str(port), "FAL_KEY": "", "REDIS_URL": "",
           "LOG_FORMAT": "json", "ACCESS_LOG": "errors", "PYTHONPATH": str(ROOT), "NO_PROXY": "127.0.0.1,localhost"}
    env.pop("GRADIO_SERVER_PORT", None)
    log_file = tmp_path / "app.log"
    with log_file.open("w") as sink:
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "app_process.py")], env=env, cwd=str(ROOT),
                                stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, timeout=60)
            assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
            assert httpx.get(f"http://127.0.0.1:{port}/api/v1/no-such-route", timeout=10).status_code == 404
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    events = events_in("json", log_file.read_text())
    loggers = {e["logger"] for e in events}
    assert {"uvicorn.error", "image2model.app", "image2model.access"} <= loggers, loggers
    access = [(e["path"], e["status"]) for e in events if e["logger"] == "image2model.access"]
    assert access == [("/api/v1/no-such-route", 404)], "only the error is logged"
    for event in events:
        assert list(event)[:5] == HEAD and TIME.fullmatch(str(event["time"])), event


def test_a_huey_consumer_process_logs_each_event_once_with_its_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`huey_consumer` gives the `huey` logger a handler of its own; still every line is one
    logfmt event, printed once, and an item's lines name the worker that ran it."""
    settings = make_settings(tmp_path / "data", fal_key="")
    monkeypatch.setenv("LOG_FORMAT", "logfmt")
    log_file = tmp_path / "consumer.log"
    observer = Runtime(settings)  # the same SQLite store and queue; runs nothing itself
    with log_file.open("w") as sink:
        popen = subprocess.Popen
        monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: popen(*a, stdout=sink, stderr=subprocess.STDOUT, **k))
        proc = start_consumer_process(settings, None, workers=2)
        monkeypatch.setattr(subprocess, "Popen", popen)
        try:
            job = observer.service.create_job(uploads_for(tmp_path, ["bowl.png"]), model="local/relief")
            done = wait_done(observer.service, job.id, timeout=60)
            assert done.state == JobState.SUCCEEDED, done.items[0].error
            wait_until(lambda: "item succeeded" in log_file.read_text(), timeout=10)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
            observer.close()
    events = events_in("logfmt", log_file.read_text())
    started = [e for e in events if str(e["msg"]).startswith("Huey consumer started")]
    assert len(started) == 1, "huey's own handler printed the line a second time"
    mine = [e for e in events if e.get("job_id") == job.id and e["logger"] == "image2model.worker.runner"]
    assert {"item started", "item succeeded"} <= {e["msg"] for e in mine}
    assert all(e["worker"] == done.items[0].worker for e in mine), mine


def test_warnings_and_uncaught_exceptions_are_one_line_events_too() -> None:
    """What Python would print over many lines itself (a warning, a thread's or the main
    program's uncaught exception) is one JSON event each, once setup_logging ran."""
    program = ("import threading, warnings\n"
               "from image2model.logs import setup_logging\n"
               "setup_logging('INFO', 'json')\n"
               "warnings.warn('old\\nthing')\n"
               "t = threading.Thread(target=lambda: 1 / 0, name='doomed'); t.start(); t.join()\n"
               "raise ValueError('top\\nlevel')\n")
    done = subprocess.run([sys.executable, "-c", program], cwd=str(ROOT), capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1
    events = events_in("json", done.stderr)
    assert [(e["logger"], e["level"]) for e in events] == [
        ("py.warnings", "warning"), ("image2model.crash", "error"), ("image2model.crash", "critical")]
    assert "doomed" in str(events[1]["msg"]) and str(events[1]["exc"]).endswith("ZeroDivisionError: division by zero")
    assert str(events[2]["exc"]).endswith("ValueError: top\nlevel")
