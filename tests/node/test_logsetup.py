"""Logging: JSON lines or console text, and no value under a non-allow-listed key, ever."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from exchange.errors import ConfigError, InputError
from node.logsetup import REDACTED, configure_logging

SECRET = "Kandahar-safehouse-7731"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    yield out
    configure_logging("json", "warning", stream=io.StringIO())


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_mode_writes_one_object_per_line_with_allowed_keys(captured: io.StringIO) -> None:
    log = structlog.get_logger("accord.test")
    log.info("envelope.received", peer="cn-mps", seq=42, envelope_id="e-1", duration_ms=1.5)
    log.warning("sync.retry", peer="cn-mps", attempt=3)

    first, second = lines(captured)
    assert first["event"] == "envelope.received"
    assert first["level"] == "info"
    assert first["peer"] == "cn-mps"
    assert first["seq"] == 42
    assert first["envelope_id"] == "e-1"
    assert first["duration_ms"] == 1.5
    assert "timestamp" in first
    assert second["attempt"] == 3


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("title", SECRET),
        ("value", SECRET),
        ("passphrase", SECRET),
        ("private_key", SECRET.encode()),
        ("location", {"lat": 34.1, "lon": SECRET}),
        ("indicators", [SECRET]),
        ("report", {"sop": "threat-alert@1", "fields": {"site": SECRET}}),
    ],
)
def test_a_secret_under_a_non_allow_listed_key_never_appears(
    captured: io.StringIO, key: str, value: object
) -> None:
    structlog.get_logger().info("report.sealed", report_id="r-1", **{key: value})

    assert SECRET not in captured.getvalue()
    (line,) = lines(captured)
    assert line[key] == REDACTED
    assert line["report_id"] == "r-1"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("fields", {"site": SECRET, "title": SECRET}),  # a mapping: names kept, values dropped
        ("fields", [SECRET + " with spaces"]),  # not a field name
        ("node", {"id": SECRET}),  # an allowed key, but not a scalar
        ("peer", SECRET.encode()),  # bytes are never logged
        ("code", "x" * 300 + SECRET),  # longer than any code or id
        ("path", "-----BEGIN PRIVATE KEY-----" + SECRET),  # key material
    ],
)
def test_allowed_keys_pass_only_names_and_plain_scalars(
    captured: io.StringIO, key: str, value: object
) -> None:
    structlog.get_logger().info("release.decided", **{key: value})

    assert SECRET not in captured.getvalue()


def test_fields_keep_names_only(captured: io.StringIO) -> None:
    log = structlog.get_logger()
    log.info("release.decided", fields=["title", "severity"], withheld={"site": SECRET})

    (line,) = lines(captured)
    assert line["fields"] == ["title", "severity"]
    assert line["withheld"] == ["site"]
    assert SECRET not in captured.getvalue()


def test_free_text_event_and_positional_arguments_are_redacted(captured: io.StringIO) -> None:
    log = structlog.get_logger()
    log.info(f"stored {SECRET}")
    log.info("report.sealed %s", SECRET)

    assert SECRET not in captured.getvalue()
    first, second = lines(captured)
    assert first["event"] == REDACTED
    assert second["event"] == REDACTED


def test_exception_keeps_type_code_and_stack_but_never_the_message(
    captured: io.StringIO,
) -> None:
    log = structlog.get_logger()
    try:
        raise InputError(f"field site has bad value {SECRET}")
    except InputError:
        log.exception("report.rejected", code="input.invalid")
    try:
        raise ValueError(SECRET)
    except ValueError as e:
        log.error("store.failed", exc_info=e)

    assert SECRET not in captured.getvalue()
    first, second = lines(captured)
    assert first["error"] == "InputError"
    assert first["error_code"] == "input.invalid"
    assert "test_logsetup.py" in first["stack"]
    assert second["error"] == "ValueError"
    assert "error_code" not in second


def test_standard_logging_records_go_through_the_same_redaction(captured: io.StringIO) -> None:
    logging.getLogger("grpc._server").warning("peer sent %s", SECRET)
    logging.getLogger("grpc._server").error("rpc.failed", extra={"detail": SECRET})

    assert SECRET not in captured.getvalue()
    first, second = lines(captured)
    assert first["logger"] == "grpc._server"
    assert first["event"] == REDACTED
    assert second["event"] == "rpc.failed"


def test_level_filters(captured: io.StringIO) -> None:
    configure_logging("json", "warning", stream=captured)
    log = structlog.get_logger()
    log.info("sync.started")
    log.warning("sync.stalled", peer="cn-mps")

    (line,) = lines(captured)
    assert line["event"] == "sync.stalled"


def test_console_mode_is_readable_and_redacts() -> None:
    out = io.StringIO()
    configure_logging("console", "info", stream=out)
    try:
        structlog.get_logger().info("envelope.received", peer="cn-mps", title=SECRET)
    finally:
        configure_logging("json", "warning", stream=io.StringIO())

    text = out.getvalue()
    assert "envelope.received" in text
    assert "cn-mps" in text
    assert SECRET not in text
    assert not text.lstrip().startswith("{")
    assert "\x1b[" not in text  # no colours when the stream is not a terminal


def test_configuring_twice_keeps_one_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "info", stream=first)
    configure_logging("json", "info", stream=second)
    try:
        structlog.get_logger().info("node.started")
    finally:
        configure_logging("json", "warning", stream=io.StringIO())

    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1


@pytest.mark.parametrize(("mode", "level"), [("text", "info"), ("json", "loud"), ("json", True)])
def test_bad_mode_or_level_is_a_config_error(mode: Any, level: Any) -> None:
    with pytest.raises(ConfigError):
        configure_logging(mode, level)
