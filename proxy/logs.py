"""Logging set-up, a JSON formatter for every record, and the per-request access log.

``configure_logging(level, fmt)`` installs one stderr handler on the root logger: ``text``
(the default, for people) or ``json`` (one object per line, for log pipelines), so Sanic's
records and ours come out alike. A JSON record carries ``ts`` (UTC, ISO 8601, ms),
``level``, ``logger``, ``pid`` and ``msg``; an ERROR record with an exception (a bug of ours)
also carries its ``traceback``, a lower one only the exception's one-line ``error``.

``AccessLog.log`` writes one line per request with a fixed set of fields: its keyword-only
signature is the allow-list, so a key, a header or a prompt cannot be logged by accident.
Disabled, it returns at once; callers on the hot path test ``access.enabled`` first, which
also saves building the arguments.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import IO, Any, Literal

import orjson

LogFormat = Literal["text", "json"]
ACCESS_LOGGER = "llm_proxy.access"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
_MAX_FIELD = 200  # a client-chosen string (model, request id) is cut to this many characters
_SANIC_LOGGERS = ("sanic.root", "sanic.error", "sanic.server")


def configure_logging(level: str, fmt: LogFormat = "text", stream: IO[str] | None = None) -> None:
    """Route every record to stderr (or ``stream``) in ``fmt``; calling it again replaces
    the handler it installed, and leaves other handlers alone."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_llm_proxy", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler._llm_proxy = True  # type: ignore[attr-defined]  # ours to replace, not others'
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Sanic's own loggers follow ours; its access log is off unless asked for.
    for name in _SANIC_LOGGERS:
        logging.getLogger(name).setLevel(level.upper())


def _timestamp(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class AccessLine:
    """An access record's message: its fields, rendered as ``key=value`` only for text."""

    __slots__ = ("fields",)

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.fields.items() if v is not None)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; access records put their fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
        }
        if isinstance(record.msg, AccessLine):
            out.update(record.msg.fields)
        else:
            out["msg"] = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            if record.levelno >= logging.ERROR:
                out["traceback"] = self.formatException(record.exc_info)
            else:
                exc = record.exc_info[1]
                out["error"] = f"{type(exc).__name__}: {exc}"
        if record.stack_info and record.levelno >= logging.ERROR:
            out["stack"] = record.stack_info
        return orjson.dumps(out, default=str).decode()


def _cut(value: str | None) -> str | None:
    return value[:_MAX_FIELD] if value is not None and len(value) > _MAX_FIELD else value


class AccessLog:
    """One line per request when enabled; a no-op otherwise."""

    __slots__ = ("_logger", "enabled")

    def __init__(self, enabled: bool, logger: logging.Logger | None = None) -> None:
        self.enabled = enabled
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)
        if enabled:
            # Asked for explicitly, so shown whatever the general log level.
            self._logger.setLevel(logging.INFO)

    def log(
        self,
        *,
        request_id: str | None,
        route: str,
        model: str | None,
        status: int,
        latency_ms: float,
        deployment: str | None = None,
        provider: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        cost_usd: float | None = None,
        ttft_ms: float | None = None,
        error_type: str | None = None,
        key_alias: str | None = None,
        cache: str | None = None,
    ) -> None:
        if not self.enabled:
            return
        fields = {
            "request_id": _cut(request_id),
            "key_alias": key_alias,
            "model": _cut(model),
            "deployment": deployment,
            "provider": provider,
            "route": route,
            "status": status,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cost_usd": cost_usd,
            "latency_ms": round(latency_ms, 3),
            "ttft_ms": None if ttft_ms is None else round(ttft_ms, 3),
            "cache": cache,
            "error_type": error_type,
        }
        self._logger.info(AccessLine(fields))
