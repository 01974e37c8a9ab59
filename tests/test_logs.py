"""Log lines are logfmt: one event is one line, and every value parses back to what was logged,
whatever quotes, newlines or fake `key=value` pairs it holds (FAL's error texts reach the logs)."""

from __future__ import annotations

import io
import logging
import re
import sys
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from image2model.jobs.model import JobState
from image2model.logs import KeyValueFormatter
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
    handler.setFormatter(KeyValueFormatter())
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
    handler.setFormatter(KeyValueFormatter())
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
    assert event["msg"] == f"item failed: {done.items[0].error.message}"
    assert "\n" in done.items[0].error.message or '"' in done.items[0].error.message, (
        "FAL's text no longer reaches the message; this test then proves nothing")
    for line in lines:
        parse_logfmt(line)  # every line the run logged is one well-formed event
