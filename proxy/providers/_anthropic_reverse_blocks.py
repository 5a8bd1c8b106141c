"""Anthropic messages and tools -> OpenAI chat messages and tools (typed in, dicts out).

A user turn can hold ``tool_result`` blocks next to ordinary content; OpenAI wants each
result as its own ``tool`` message directly after the assistant's calls, so the results go
first and the rest of the turn follows as one user message. Images inside a tool result
(OpenAI tool messages take text only) move to that following user message.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import InvalidRequestError
from proxy.wire.anthropic import (
    Base64Source,
    ContentBlockParam,
    DocumentBlock,
    ImageBlock,
    MessageParam,
    PlainTextSource,
    TextBlock,
    Tool,
    ToolResultBlock,
    ToolUseBlock,
    URLSource,
)


def openai_messages(
    system: str | list[TextBlock] | None, messages: list[MessageParam]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if system:
        text = system if isinstance(system, str) else "\n".join(b.text for b in system)
        out.append({"role": "system", "content": text})
    for i, message in enumerate(messages):
        if isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
        elif message.role == "assistant":
            out.append(_assistant(message.content))
        else:
            out.extend(_user(message.content, f"messages.{i}.content"))
    return out


def openai_tools(tools: list[Tool]) -> list[dict[str, Any]]:
    out = []
    for j, tool in enumerate(tools):
        if tool.type not in (None, "custom") or tool.input_schema is None:
            raise InvalidRequestError(
                f"tools.{j}: only custom tools (name, description, input_schema) can be sent "
                "to this model",
                param=f"tools.{j}",
            )
        function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description:
            function["description"] = tool.description
        out.append({"type": "function", "function": function})
    return out


def _assistant(blocks: list[ContentBlockParam]) -> dict[str, Any]:
    texts = [b.text for b in blocks if isinstance(b, TextBlock)]
    calls = [
        {
            "id": b.id,
            "type": "function",
            "function": {"name": b.name, "arguments": orjson.dumps(b.input).decode()},
        }
        for b in blocks
        if isinstance(b, ToolUseBlock)
    ]
    content: str | list[dict[str, str]] | None = texts[0] if len(texts) == 1 else None
    if len(texts) > 1:  # e.g. turns merged on the way in: keep their boundaries
        content = [{"type": "text", "text": text} for text in texts]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""  # only thinking blocks: an empty turn, kept for alternation
    return message


def _user(blocks: list[ContentBlockParam], where: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.{j}"
        if isinstance(block, ToolResultBlock):
            results.append(_tool_message(block, parts, at))
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append(_image(block, at))
        elif isinstance(block, DocumentBlock):
            parts.append(_document(block, at))
        # thinking blocks in a user turn carry nothing for the model: skipped
    if not parts:
        return results
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*results, {"role": "user", "content": parts[0]["text"]}]
    return [*results, {"role": "user", "content": parts}]


def _tool_message(block: ToolResultBlock, parts: list[dict[str, Any]], at: str) -> dict[str, Any]:
    content = block.content
    if isinstance(content, list):
        texts = []
        for k, item in enumerate(content):
            if isinstance(item, TextBlock):
                texts.append(item.text)
            else:
                parts.append(_image(item, f"{at}.content.{k}"))
        content = "\n".join(texts)
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": content or ""}


def _image(block: ImageBlock, at: str) -> dict[str, Any]:
    source = block.source
    if isinstance(source, Base64Source):
        url = f"data:{source.media_type};base64,{source.data}"
    elif isinstance(source, URLSource):
        url = source.url
    else:
        raise InvalidRequestError(
            f"{at}.source: file references cannot be sent to this model", param=f"{at}.source"
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: DocumentBlock, at: str) -> dict[str, Any]:
    source = block.source
    if isinstance(source, PlainTextSource):
        return {"type": "text", "text": source.data}
    if isinstance(source, Base64Source):
        data_url = f"data:{source.media_type};base64,{source.data}"
        name = block.title or "document.pdf"
        return {"type": "file", "file": {"filename": name, "file_data": data_url}}
    raise InvalidRequestError(
        f"{at}.source: only base64 and text documents can be sent to this model",
        param=f"{at}.source",
    )
