"""OpenAI message content -> Anthropic content blocks, one message at a time.

Text parts become ``text`` blocks (empty ones are left out: Anthropic refuses them), images
become ``image`` blocks with a ``base64`` source for ``data:`` URLs and a ``url`` source for
http(s) URLs, PDF files sent inline become ``document`` blocks. Assistant ``tool_calls``
become ``tool_use`` blocks whose ``input`` is the parsed ``arguments`` JSON; a ``tool``
message becomes a ``tool_result`` block. Anything else is a 400 naming the part.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import InvalidRequestError


def user_blocks(content: object, where: str) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return _text(content or "")
    if not isinstance(content, list):
        raise InvalidRequestError(
            f"'{where}.content' must be a string or an array of parts.", param=f"{where}.content"
        )
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            blocks.extend(_text(part["text"]))
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{at}.image_url"))
        elif kind == "file":
            blocks.append(_document(part.get("file"), f"{at}.file"))
        else:
            raise InvalidRequestError(
                f"Unsupported content part {kind!r} at '{at}': this model takes text, "
                "image_url and (PDF) file parts.",
                param=f"{at}.type",
            )
    return blocks


def assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    content = message.get("content")
    blocks: list[dict[str, Any]] = []
    if content is None or isinstance(content, str):
        blocks.extend(_text(content or ""))
    elif isinstance(content, list):
        for j, part in enumerate(content):
            text = _part_text(part)
            if text is None:
                raise InvalidRequestError(
                    f"'{where}.content[{j}]' must be a text or refusal part.",
                    param=f"{where}.content[{j}]",
                )
            blocks.extend(_text(text))
    calls = message.get("tool_calls") or []
    for j, call in enumerate(calls):
        blocks.append(_tool_use(call, f"{where}.tool_calls[{j}]"))
    return blocks


def tool_result_block(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequestError(
            f"Missing required parameter: '{where}.tool_call_id'.", param=f"{where}.tool_call_id"
        )
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    content = message.get("content")
    if isinstance(content, list):
        texts = [_part_text(part) for part in content]
        if any(text is None for text in texts):
            raise InvalidRequestError(
                f"'{where}.content' of a tool message must hold text parts only.",
                param=f"{where}.content",
            )
        content = "\n".join(t for t in texts if t)
    if content:
        block["content"] = content
    return block


def _text(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}] if text else []


def _part_text(part: object) -> str | None:
    if not isinstance(part, dict):
        return None
    if part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
        return str(part["refusal"])
    text = part.get("text")
    return text if isinstance(text, str) else None


def _image(image_url: object, where: str) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if isinstance(url, str) and url.startswith("data:"):
        media_type, data = _data_url(url, f"{where}.url")
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequestError(
        f"Invalid '{where}.url': expected a base64 data: URL or an http(s) URL.",
        param=f"{where}.url",
    )


def _document(file: object, where: str) -> dict[str, Any]:
    data_url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data_url, str):
        raise InvalidRequestError(
            f"'{where}.file_data' is required: uploaded file ids cannot be sent to this model.",
            param=f"{where}.file_data",
        )
    media_type, data = _data_url(data_url, f"{where}.file_data")
    source = {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "document", "source": source}


def _data_url(url: str, where: str) -> tuple[str, str]:
    """``data:<media type>;base64,<data>`` -> (media type, data)."""
    header, sep, data = url.partition(",")
    media_type, _, encoding = header.removeprefix("data:").partition(";")
    if not sep or encoding != "base64" or not media_type or not data:
        raise InvalidRequestError(
            f"Invalid '{where}': expected 'data:<media type>;base64,<data>'.", param=where
        )
    return media_type, data


def _tool_use(call: object, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(call, dict) or not isinstance(function, dict):
        raise InvalidRequestError(f"'{where}.function' is required.", param=f"{where}.function")
    name, call_id = function.get("name"), call.get("id")
    if not isinstance(name, str) or not isinstance(call_id, str):
        raise InvalidRequestError(
            f"'{where}' needs an 'id' and a 'function.name'.", param=f"{where}.function.name"
        )
    arguments = function.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str | bytes) else None
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise InvalidRequestError(
            f"Invalid '{where}.function.arguments': expected a JSON object encoded as a string.",
            param=f"{where}.function.arguments",
        )
    return {"type": "tool_use", "id": call_id, "name": name, "input": parsed}
