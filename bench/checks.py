"""Functional checks run before measuring: the target must answer chat like OpenAI does.

Non-stream: 200, JSON whose message content has the upstream's marker, and a usage object.
Stream: 200, text/event-stream, chat.completion.chunk events whose content deltas join to
the upstream's text, and a final "data: [DONE]". A missing usage chunk (the request asks
for it with stream_options.include_usage) is a warning, not a failure.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass, field

SYSTEM = "You are a concise assistant. Answer in one short paragraph."
USER = (
    "Summarise the trade-offs between pooling HTTP connections "
    "and opening a new connection for every request."
)


def chat_body(model: str, stream: bool) -> bytes:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
        "max_tokens": 128,
        "temperature": 0.2,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(body).encode()


@dataclass
class CheckResult:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    content: str | None = None
    stream_text: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def post(
    host: str, port: int, path: str, body: bytes, *, key: str, timeout: float = 10.0
) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type") or "", resp.read()
    finally:
        conn.close()


def sse_data(raw: bytes) -> list[str]:
    """The data payloads of an SSE body, one per event, in order."""
    events: list[str] = []
    lines: list[str] = []
    for raw_line in raw.decode("utf-8", "replace").split("\n"):
        line = raw_line.removesuffix("\r")
        if not line:
            if lines:
                events.append("\n".join(lines))
                lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
    if lines:
        events.append("\n".join(lines))
    return events


def _usage_ok(usage: object) -> bool:
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return isinstance(usage, dict) and all(isinstance(usage.get(k), int) for k in keys)


def check_nonstream(result: CheckResult, status: int, raw: bytes, marker: str) -> None:
    if status != 200:
        result.problems.append(f"non-stream: status {status}: {raw[:300]!r}")
        return
    try:
        obj = json.loads(raw)
        content = obj["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        result.problems.append(f"non-stream: not a chat.completion ({exc!r}): {raw[:300]!r}")
        return
    result.content = content
    if not isinstance(content, str) or marker not in content:
        result.problems.append(f"non-stream: content lacks marker {marker!r}: {content!r}")
    if not _usage_ok(obj.get("usage")):
        result.problems.append(f"non-stream: no usage object: {obj.get('usage')!r}")


def check_stream(
    result: CheckResult, status: int, ctype: str, raw: bytes, expected: str | None
) -> None:
    if status != 200:
        result.problems.append(f"stream: status {status}: {raw[:300]!r}")
        return
    if not ctype.startswith("text/event-stream"):
        result.problems.append(f"stream: content-type {ctype!r}, want text/event-stream")
    events = sse_data(raw)
    if not events or events[-1] != "[DONE]":
        tail = events[-1][:100] if events else None
        result.problems.append(f"stream: last event is {tail!r}, want [DONE]")
    parts: list[str] = []
    usage_seen = False
    for data in events:
        if data == "[DONE]":
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            result.problems.append(f"stream: event is not JSON: {data[:100]!r}")
            return
        if chunk.get("object") != "chat.completion.chunk":
            result.problems.append(f"stream: not a chat.completion.chunk: {data[:100]!r}")
            return
        usage_seen = usage_seen or _usage_ok(chunk.get("usage"))
        for choice in chunk.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content")
            if isinstance(piece, str):
                parts.append(piece)
    result.stream_text = "".join(parts)
    if expected is not None and result.stream_text != expected:
        result.problems.append(
            f"stream: deltas join to {result.stream_text!r}, upstream sent {expected!r}"
        )
    if not usage_seen:
        result.warnings.append("stream: no usage chunk although include_usage was asked")


def check_chat(
    host: str, port: int, *, key: str, model: str, marker: str, expected: str | None
) -> CheckResult:
    """Check one target; expected is the upstream's text (None when checking the upstream)."""
    result = CheckResult()
    path = "/v1/chat/completions"
    try:
        status, _, raw = post(host, port, path, chat_body(model, False), key=key)
        check_nonstream(result, status, raw, marker)
        status, ctype, raw = post(host, port, path, chat_body(model, True), key=key)
        check_stream(result, status, ctype, raw, expected if expected else result.content)
    except (OSError, http.client.HTTPException) as exc:
        result.problems.append(f"request failed: {exc!r}")
    return result
