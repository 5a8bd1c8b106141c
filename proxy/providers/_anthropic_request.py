"""OpenAI chat request -> Anthropic Messages request (a dict, encoded by the adapter).

Anthropic differs from OpenAI in ways that need more than renaming:

* the system prompt is a top-level field: ``system`` and ``developer`` messages, wherever
  they appear, are joined (blank line between) into ``system``;
* roles must alternate: consecutive messages with the same role are merged, and ``tool``
  messages become ``tool_result`` blocks of a user message;
* ``max_tokens`` is required: without one from the client the deployment's
  ``default_max_tokens`` is sent;
* ``response_format`` has no counterpart: a ``json_schema`` becomes a tool of that name that
  the model is forced to call, and the adapter turns the call back into message content
  (``json_tool_name``); ``json_object`` becomes a system instruction to answer in JSON.

Parameters Anthropic has no use for (``logit_bias``, ``seed``, ``n`` > 1...) are dropped and
reported when the deployment says ``drop_params: true``, else refused with a 400.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import InvalidRequestError
from proxy.providers._anthropic_content import assistant_blocks, tool_result_block, user_blocks
from proxy.settings import DeploymentParams

JSON_OBJECT_INSTRUCTION = "Respond only with a single valid JSON object, with no text around it."
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}
TOOL_CHOICES: dict[str, dict[str, str]] = {
    "auto": {"type": "auto"},
    "none": {"type": "none"},
    "required": {"type": "any"},
}
_TRANSLATED = frozenset(
    (
        *("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p"),
        *("top_k", "stop", "stream", "stream_options", "tools", "tool_choice", "user"),
        *("parallel_tool_calls", "response_format", "reasoning_effort"),
    )
)
# Values that mean "not set": some clients (LangChain...) send OpenAI's defaults explicitly.
_NEUTRAL: dict[str, tuple[object, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "store": (False,),
}


def json_tool_name(data: dict[str, Any]) -> str | None:
    """The forced tool standing for ``response_format: json_schema``, if the request has one."""
    fmt = data.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    schema = fmt.get("json_schema")
    name = schema.get("name") if isinstance(schema, dict) else None
    return name if isinstance(name, str) and name else "json_response"


def to_messages_request(
    data: dict[str, Any], params: DeploymentParams
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The Anthropic request body, and the names of the client parameters left out."""
    dropped = _unsupported(data, params.drop_params)
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequestError("'messages' must be an array.", param="messages")
    system, turns = convert_messages(messages)
    out: dict[str, Any] = {"model": params.upstream_model, "messages": turns}
    max_tokens = _int(data, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _int(data, "max_tokens")
    out["max_tokens"] = max_tokens if max_tokens is not None else params.default_max_tokens
    for key in ("temperature", "top_p", "top_k"):
        if data.get(key) is not None:
            out[key] = data[key]
    _stop(data.get("stop"), out)
    if data.get("stream"):
        out["stream"] = True
    user = data.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    _tools(data, out)
    _response_format(data, out, system)
    _reasoning(data.get("reasoning_effort"), out)
    if system:
        out["system"] = "\n\n".join(system)
    return out, dropped


def convert_messages(messages: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """System texts, and the alternating user/assistant turns."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequestError(f"'{where}' must be an object.", param=where)
        role = message.get("role")
        if role in ("system", "developer"):
            text = flatten_text(message.get("content"), f"{where}.content")
            if text:
                system.append(text)
            continue
        if role == "user":
            turn_role, blocks = "user", user_blocks(message.get("content"), where)
        elif role == "assistant":
            turn_role, blocks = "assistant", assistant_blocks(message, where)
        elif role == "tool":
            turn_role, blocks = "user", [tool_result_block(message, where)]
        else:
            raise InvalidRequestError(
                f"Messages with role {role!r} are not supported for this model; "
                "use 'tool' messages for tool results.",
                param=f"{where}.role",
            )
        if not blocks:
            continue  # Anthropic refuses empty turns; an empty message says nothing anyway
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})
    for turn in turns:
        blocks = turn["content"]
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            turn["content"] = blocks[0]["text"]  # the plain form, as a person would write it
    return system, turns


def flatten_text(content: object, where: str) -> str:
    """A message's text: the string itself, or its text parts one per line."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                raise InvalidRequestError(
                    f"'{where}[{j}]' must be a text part here.", param=f"{where}[{j}]"
                )
            texts.append(part["text"])
        return "\n".join(texts)
    raise InvalidRequestError(f"'{where}' must be a string or an array of parts.", param=where)


def _unsupported(data: dict[str, Any], drop: bool) -> tuple[str, ...]:
    names = []
    for key, value in data.items():
        if key in _TRANSLATED or value is None or value in _NEUTRAL.get(key, ()):
            continue
        if not drop:
            raise InvalidRequestError(
                f"Unsupported parameter: '{key}' is not supported with this model. "
                "Remove it, or set drop_params: true on the deployment to have it dropped.",
                param=key,
                code="unsupported_parameter",
            )
        names.append(key)
    return tuple(names)


def _int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequestError(f"Invalid type for '{key}': expected an integer.", param=key)
    return value


def _stop(stop: object, out: dict[str, Any]) -> None:
    if stop is None:
        return
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if stop:
            out["stop_sequences"] = list(stop)
    else:
        raise InvalidRequestError(
            "Invalid type for 'stop': expected a string or an array of strings.", param="stop"
        )


def _tools(data: dict[str, Any], out: dict[str, Any]) -> None:
    tools = data.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise InvalidRequestError("Invalid type for 'tools': expected an array.", param="tools")
        out["tools"] = [_tool(tool, f"tools[{j}]") for j, tool in enumerate(tools)]
    choice = data.get("tool_choice")
    mapped: dict[str, Any] | None = None
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        mapped = dict(TOOL_CHOICES[choice])
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise InvalidRequestError(
                "Missing required parameter: 'tool_choice.function.name'.",
                param="tool_choice.function.name",
            )
        mapped = {"type": "tool", "name": name}
    elif choice is not None:
        raise InvalidRequestError(
            "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": ...}}.',
            param="tool_choice",
        )
    if data.get("parallel_tool_calls") is False and (mapped or {}).get("type") != "none":
        mapped = {**(mapped or {"type": "auto"}), "disable_parallel_tool_use": True}
    if mapped is not None:
        out["tool_choice"] = mapped


def _tool(tool: object, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise InvalidRequestError(
            f"Invalid value for '{where}.type': only 'function' tools are supported.",
            param=f"{where}.type",
        )
    function = tool.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(function, dict) or not isinstance(name, str):
        raise InvalidRequestError(
            f"Missing required parameter: '{where}.function.name'.", param=f"{where}.function.name"
        )
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    out: dict[str, Any] = {"name": name, "input_schema": schema}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _response_format(data: dict[str, Any], out: dict[str, Any], system: list[str]) -> None:
    fmt = data.get("response_format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_object":
        system.append(JSON_OBJECT_INSTRUCTION)
    elif kind == "json_schema":
        name = json_tool_name(data)
        spec = fmt.get("json_schema") if isinstance(fmt.get("json_schema"), dict) else {}
        schema = spec.get("schema") or {"type": "object"}
        tool = {
            "name": name,
            "description": spec.get("description") or "Answer with the response object.",
            "input_schema": schema,
        }
        out["tools"] = [*out.get("tools", []), tool]
        out["tool_choice"] = {"type": "tool", "name": name}
    elif kind != "text":
        raise InvalidRequestError(
            "Invalid value for 'response_format.type': expected 'text', 'json_object' or "
            "'json_schema'.",
            param="response_format.type",
        )


def _reasoning(effort: object, out: dict[str, Any]) -> None:
    if effort is None or effort == "none":
        return
    if not isinstance(effort, str) or effort not in THINKING_BUDGETS:
        raise InvalidRequestError(
            f"Invalid value for 'reasoning_effort': {orjson.dumps(effort).decode()}; "
            "expected 'low', 'medium' or 'high'.",
            param="reasoning_effort",
        )
    budget = THINKING_BUDGETS[effort]
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if out["max_tokens"] <= budget:
        # Anthropic counts thinking inside max_tokens: keep the client's limit for the answer.
        out["max_tokens"] += budget
