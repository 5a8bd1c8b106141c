"""Anthropic Messages API wire shapes: the request, the response message, stream events.

The request Structs validate a ``/v1/messages`` body as the API reference describes it, so
that a 400 names the bad field (``messages[2].content[0].source``). Content blocks and tool
choices are tagged unions on ``type``; an unknown ``type`` is a validation error.

The response and stream Structs read what Anthropic sends back. They are deliberately loose
(``type: str`` rather than a closed union) so that block and delta types added to the API
later decode and are skipped instead of failing the whole answer. Unknown fields are ignored
everywhere. Tool inputs and JSON schemas are free-form JSON objects (``dict[str, object]``).
"""

from __future__ import annotations

from typing import Literal

import msgspec

JSONObject = dict[str, object]

# --------------------------------------------------------------------------- request


class CacheControl(msgspec.Struct):
    type: str = "ephemeral"
    ttl: str | None = None


class TextBlock(msgspec.Struct, tag="text", tag_field="type"):
    text: str
    cache_control: CacheControl | None = None


class Base64Source(msgspec.Struct, tag="base64", tag_field="type"):
    media_type: str
    data: str


class URLSource(msgspec.Struct, tag="url", tag_field="type"):
    url: str


class PlainTextSource(msgspec.Struct, tag="text", tag_field="type"):
    data: str
    media_type: str = "text/plain"


class FileSource(msgspec.Struct, tag="file", tag_field="type"):
    file_id: str


class ImageBlock(msgspec.Struct, tag="image", tag_field="type"):
    source: Base64Source | URLSource | FileSource
    cache_control: CacheControl | None = None


class DocumentBlock(msgspec.Struct, tag="document", tag_field="type"):
    source: Base64Source | URLSource | PlainTextSource | FileSource
    title: str | None = None
    cache_control: CacheControl | None = None


class ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: JSONObject
    cache_control: CacheControl | None = None


class ToolResultBlock(msgspec.Struct, tag="tool_result", tag_field="type"):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(msgspec.Struct, tag="thinking", tag_field="type"):
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(msgspec.Struct, tag="redacted_thinking", tag_field="type"):
    data: str


ContentBlockParam = (
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
)


class MessageParam(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlockParam]


class Tool(msgspec.Struct):
    name: str
    input_schema: JSONObject | None = None  # required for custom tools, absent on server tools
    description: str | None = None
    type: str | None = None  # None or "custom"; server tools carry a version, e.g. web_search_...
    cache_control: CacheControl | None = None


class ToolChoiceAuto(msgspec.Struct, tag="auto", tag_field="type"):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(msgspec.Struct, tag="any", tag_field="type"):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(msgspec.Struct, tag="tool", tag_field="type"):
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(msgspec.Struct, tag="none", tag_field="type"):
    pass


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class ThinkingConfig(msgspec.Struct):
    """``enabled`` (with a budget), ``disabled``, ``adaptive`` and whatever comes next."""

    type: str
    budget_tokens: int | None = None


class Metadata(msgspec.Struct):
    user_id: str | None = None


class CountTokensRequest(msgspec.Struct):
    """The body of ``/v1/messages/count_tokens``: a Messages request without generation knobs."""

    model: str
    messages: list[MessageParam]
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None


class MessagesRequest(msgspec.Struct):
    model: str
    messages: list[MessageParam]
    max_tokens: int
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    metadata: Metadata | None = None


# --------------------------------------------------------------------------- response


class ResponseBlock(msgspec.Struct):
    """One block of an answer, any type: text, tool_use, thinking, redacted_thinking..."""

    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: JSONObject | None = None
    thinking: str | None = None
    signature: str | None = None


class AnthropicUsage(msgspec.Struct):
    """Input counts exclude cache reads and writes; all three add up to the prompt."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class Message(msgspec.Struct):
    id: str
    model: str
    content: list[ResponseBlock]
    role: str = "assistant"
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: AnthropicUsage = msgspec.field(default_factory=AnthropicUsage)


class ErrorDetail(msgspec.Struct):
    type: str = "api_error"
    message: str = ""


class ErrorResponse(msgspec.Struct, tag="error", tag_field="type"):
    error: ErrorDetail


# --------------------------------------------------------------------------- stream events


class BlockDelta(msgspec.Struct):
    """text_delta, input_json_delta, thinking_delta, signature_delta, or a newer kind."""

    type: str
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    signature: str | None = None


class MessageDeltaBody(msgspec.Struct):
    stop_reason: str | None = None
    stop_sequence: str | None = None


class _Event(msgspec.Struct, tag_field="type"):
    pass


class MessageStartEvent(_Event, tag="message_start"):
    message: Message


class ContentBlockStartEvent(_Event, tag="content_block_start"):
    index: int
    content_block: ResponseBlock


class ContentBlockDeltaEvent(_Event, tag="content_block_delta"):
    index: int
    delta: BlockDelta


class ContentBlockStopEvent(_Event, tag="content_block_stop"):
    index: int


class MessageDeltaEvent(_Event, tag="message_delta"):
    delta: MessageDeltaBody
    usage: AnthropicUsage = msgspec.field(default_factory=AnthropicUsage)


class MessageStopEvent(_Event, tag="message_stop"):
    pass


class PingEvent(_Event, tag="ping"):
    pass


class ErrorEvent(_Event, tag="error"):
    error: ErrorDetail


StreamEvent = (
    MessageStartEvent
    | ContentBlockStartEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
    | PingEvent
    | ErrorEvent
)
