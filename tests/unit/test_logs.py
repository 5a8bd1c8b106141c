"""proxy.logs: the text and JSON formats, tracebacks only for errors, and an access log
that writes exactly its allowed fields or nothing at all."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from proxy.logs import ACCESS_LOGGER, AccessLog, JsonFormatter, configure_logging


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """Where configure_logging writes during the test; the root logger is restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    access = logging.getLogger(ACCESS_LOGGER)
    saved_access = access.level
    stream = io.StringIO()
    yield stream
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    access.setLevel(saved_access)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_renders_every_record_as_one_object(output: io.StringIO) -> None:
    """With fmt=json an ordinary record is one JSON line with ts, level, logger, pid, msg."""
    configure_logging("info", "json", stream=output)
    logging.getLogger("llm_proxy").info("listening on %s", "http://x")
    logging.getLogger("sanic.server").warning("from sanic")
    first, second = lines(output)
    assert first["msg"] == "listening on http://x"
    assert first["level"] == "info" and first["logger"] == "llm_proxy"
    assert first["ts"].endswith("Z") and len(first["ts"]) == len("2025-01-01T00:00:00.000Z")
    assert isinstance(first["pid"], int)
    assert second["logger"] == "sanic.server" and second["level"] == "warning"


def test_text_keeps_the_classic_format(output: io.StringIO) -> None:
    """With fmt=text a record reads `<time> LEVEL name [pid] message`."""
    configure_logging("info", "text", stream=output)
    logging.getLogger("llm_proxy").warning("careful")
    line = output.getvalue().strip()
    assert line.split(" ", 2)[2].startswith("WARNING llm_proxy [")
    assert line.endswith("] careful")


def test_the_level_applies_to_ours_and_sanics(output: io.StringIO) -> None:
    """log_level=warning hides info records, ours and Sanic's."""
    configure_logging("warning", "json", stream=output)
    logging.getLogger("llm_proxy").info("hidden")
    logging.getLogger("sanic.root").info("hidden too")
    assert output.getvalue() == ""
    assert logging.getLogger("sanic.error").level == logging.WARNING


def test_configuring_twice_leaves_one_handler(output: io.StringIO) -> None:
    """A worker process may configure again: records are still written once."""
    configure_logging("info", "json", stream=output)
    configure_logging("info", "json", stream=output)
    logging.getLogger("llm_proxy").info("once")
    assert len(lines(output)) == 1


def _raise() -> None:
    raise ValueError("boom")


def test_an_error_record_carries_its_traceback(output: io.StringIO) -> None:
    """logger.exception (a bug of ours) puts the whole traceback in the object."""
    configure_logging("info", "json", stream=output)
    try:
        _raise()
    except ValueError:
        logging.getLogger("llm_proxy").exception("unexpected")
    (record,) = lines(output)
    assert record["level"] == "error"
    assert "Traceback" in record["traceback"] and "_raise" in record["traceback"]


def test_a_warning_with_an_exception_carries_one_line(output: io.StringIO) -> None:
    """Below ERROR an exception is summarised, not dumped: expected failures stay short."""
    configure_logging("info", "json", stream=output)
    try:
        _raise()
    except ValueError:
        logging.getLogger("llm_proxy").warning("upstream hiccup", exc_info=True)
    (record,) = lines(output)
    assert record["error"] == "ValueError: boom"
    assert "traceback" not in record


def test_the_access_log_writes_the_documented_fields(output: io.StringIO) -> None:
    """One JSON object per request, with every field of the access-log schema."""
    configure_logging("warning", "json", stream=output)
    AccessLog(enabled=True).log(
        request_id="r1",
        route="chat",
        model="gpt-4o-mini",
        deployment="gpt-4o-mini/openai/gpt-4o-mini",
        provider="openai",
        status=200,
        prompt_tokens=12,
        completion_tokens=30,
        cost_usd=0.00021,
        latency_ms=812.34567,
        ttft_ms=120.5,
    )
    (record,) = lines(output)
    assert record["logger"] == ACCESS_LOGGER and record["level"] == "info"
    expected = {
        "request_id": "r1",
        "key_alias": None,
        "model": "gpt-4o-mini",
        "deployment": "gpt-4o-mini/openai/gpt-4o-mini",
        "provider": "openai",
        "route": "chat",
        "status": 200,
        "prompt_tokens": 12,
        "completion_tokens": 30,
        "cost_usd": 0.00021,
        "latency_ms": 812.346,
        "ttft_ms": 120.5,
        "cache": None,
        "error_type": None,
    }
    assert {k: record[k] for k in expected} == expected
    assert "msg" not in record


def test_the_access_log_in_text_is_key_value_without_empty_fields(output: io.StringIO) -> None:
    """With fmt=text an access line lists the fields that have a value."""
    configure_logging("info", "text", stream=output)
    AccessLog(enabled=True).log(
        request_id="r2",
        route="embeddings",
        model="other",
        status=404,
        latency_ms=1.0,
        error_type="model_not_found",
    )
    line = output.getvalue().strip()
    assert line.endswith(
        "request_id=r2 model=other route=embeddings status=404 latency_ms=1.0 "
        "error_type=model_not_found"
    )
    assert "None" not in line


def test_a_disabled_access_log_writes_nothing(output: io.StringIO) -> None:
    """enabled=False: log() returns at once."""
    configure_logging("info", "json", stream=output)
    access = AccessLog(enabled=False)
    access.log(request_id="r", route="chat", model="m", status=200, latency_ms=1.0)
    assert not access.enabled
    assert output.getvalue() == ""


def test_the_access_log_takes_no_field_outside_its_schema() -> None:
    """A header, key or prompt cannot be passed in: unknown fields are a TypeError."""
    access: Any = AccessLog(enabled=True, logger=logging.getLogger("test.access"))
    with pytest.raises(TypeError):
        access.log(
            request_id="r", route="chat", model="m", status=200, latency_ms=1, api_key="sk-x"
        )


def test_client_chosen_strings_are_cut(output: io.StringIO) -> None:
    """A huge model name from a client is cut to 200 characters."""
    configure_logging("info", "json", stream=output)
    AccessLog(enabled=True).log(
        request_id="r", route="chat", model="x" * 10_000, status=404, latency_ms=1.0
    )
    (record,) = lines(output)
    assert record["model"] == "x" * 200


def test_the_formatter_renders_values_json_cannot() -> None:
    """A message argument of any type still yields valid JSON."""
    record = logging.LogRecord("llm_proxy", logging.INFO, __file__, 1, "%s", (object(),), None)
    assert orjson.loads(JsonFormatter().format(record))["msg"].startswith("<object object")
