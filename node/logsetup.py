"""Logging for the node and the CLI: structlog, configured once at the entry point.

``configure_logging("json", "info")`` for services (one JSON object per line) or
``configure_logging("console", "info")`` for a terminal. Records from the standard
``logging`` module (grpc, asyncio, sqlite-utils) go through the same pipeline.

No field value may ever reach a log line (docs/DESIGN.md §9, §13.1), so the last step before
rendering is :func:`redact`: only keys on an allow-list pass, only with plain scalar values;
every other value becomes ``"[redacted]"``. Event names must be stable dotted names such as
``release.decided``; free text (which could carry a value) is redacted too. Exceptions are
reduced to their type, Accord error code and stack frames: an exception's message may quote
a value (jsonschema does), so it is never logged, and neither are local variables.

The module is named ``logsetup`` so that it does not shadow the standard ``logging``.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Mapping, MutableMapping
from types import TracebackType
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from exchange.errors import ConfigError

REDACTED = "[redacted]"

# Keys whose scalar values are metadata, never report content or key material.
ALLOWED_KEYS = frozenset(
    {
        "event",
        "level",
        "timestamp",
        "logger",
        "node",
        "peer",
        # active/standby (docs/adr/0026): which process leads; host names and process ids
        "host",
        "pid",
        "leader_host",
        "leader_pid",
        "report_id",
        "envelope_id",
        "version",
        "seq",
        "first_seq",
        "last_seq",
        "after_seq",
        "count",
        "code",
        "correlation_id",
        "kind",
        "schema",
        "sop",
        "duration_ms",
        "size",
        "old_size",
        "tree_size",
        "leaf_index",
        "path",
        "method",
        "status",
        "attempt",
        "delay_ms",
        "origin",
        "endpoint",
        "listen",
        "error",
        "error_code",
        "stack",
        # key schedule (node/services/keywatch.py): what ends when, never key material
        "subject",
        "not_after",
        "days_left",
        "expired",
        "card_version",
        # escalation commands (services/alerts.py), watched inbox rows: never stdin or output
        "reason",
        "exit_code",
        "row",
    }
)
# Keys that carry field names only: a list of names, or a mapping whose keys are kept and
# whose values are dropped.
NAME_LIST_KEYS = frozenset({"fields", "released", "transformed", "withheld"})

MAX_VALUE_LEN = 256
_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_KEY_MATERIAL = re.compile(r"PRIVATE KEY|AGE-SECRET-KEY|BEGIN ENCRYPTED", re.IGNORECASE)
_HANDLER_MARK = "_accord_logsetup"

Mode = Literal["json", "console"]


def _safe_scalar(value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if len(value) > MAX_VALUE_LEN or _KEY_MATERIAL.search(value):
            return REDACTED
        return value
    return REDACTED


def _names_only(value: object) -> object:
    names: list[object]
    if isinstance(value, Mapping):
        names = list(value.keys())
    elif isinstance(value, list | tuple | set | frozenset):
        names = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
    else:
        return REDACTED
    if all(isinstance(n, str) and _FIELD_NAME.fullmatch(n) for n in names):
        return names
    return REDACTED


def _exc_info(value: object) -> tuple[type[BaseException], BaseException, TracebackType | None]:
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return value[0], value[1], value[2]
    exc_type, exc, tb = sys.exc_info()
    if exc_type is None or exc is None:
        raise LookupError("no exception to describe")
    return exc_type, exc, tb


def _describe_exception(value: object, out: MutableMapping[str, Any]) -> None:
    """Type, Accord code and stack frames of an exception: never its message or locals."""
    try:
        exc_type, exc, tb = _exc_info(value)
    except LookupError:
        return
    out["error"] = exc_type.__qualname__
    code = getattr(exc, "code", None)
    if isinstance(code, str) and isinstance(_safe_scalar(code), str):
        out["error_code"] = code
    frames = traceback.extract_tb(tb)
    out["stack"] = " <- ".join(f"{f.filename}:{f.lineno} {f.name}" for f in reversed(frames))


def failure_level(error: BaseException) -> str:
    """How loud a background task's failure is: a database that is down or restarting
    (``store.unavailable``) is retried and logged as a warning; anything else is an error."""
    return "warning" if getattr(error, "code", None) == "store.unavailable" else "error"


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Keep allow-listed keys with scalar values and name lists; redact everything else."""
    exc = event_dict.pop("exc_info", None)
    event_dict.pop("exception", None)
    event_dict.pop("stack_info", None)
    safe: EventDict = {}
    for key, value in event_dict.items():
        if key == "event":
            ok = isinstance(value, str) and len(value) <= 64 and _EVENT_NAME.fullmatch(value)
            safe[key] = value if ok else REDACTED
        elif key in NAME_LIST_KEYS:
            safe[key] = _names_only(value)
        elif key in ALLOWED_KEYS:
            safe[key] = _safe_scalar(value)
        else:
            safe[key] = REDACTED
    if exc:
        _describe_exception(exc, safe)
    return safe


def _level_number(level: str | int) -> int:
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    if isinstance(level, str):
        number = logging.getLevelNamesMapping().get(level.upper())
        if number is not None:
            return number
    raise ConfigError(
        f"log level {level!r} is not one of debug, info, warning, error, critical",
        next_step="Pass --log-level info (or debug, warning, error).",
    )


def configure_logging(
    mode: Mode = "json", level: str | int = "info", *, stream: TextIO | None = None
) -> None:
    """Configure structlog and the standard ``logging`` root once, for the whole process.

    Calling it again replaces the previous configuration (tests do; programs should not).
    """
    if mode not in ("json", "console"):
        raise ConfigError(
            f"log mode {mode!r} is not 'json' or 'console'",
            next_step="Use json for services and console for a terminal.",
        )
    number = _level_number(level)
    out = stream if stream is not None else sys.stderr

    renderer: Processor
    if mode == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )

    shared: list[Processor] = [
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(number)

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
