"""OpenAI wire shapes: request views (only what the proxy reads) and response pieces.

Views decode and validate the fields the proxy acts on; every other field stays in the raw
body, which is forwarded untouched unless something must change.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class ChatMessage(msgspec.Struct):
    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(msgspec.Struct):
    model: str
    messages: list[ChatMessage]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    tools: list[dict[str, Any]] | None = None
    user: str | None = None


# msgspec allows one array type per union: a list of strings, token ids or id lists.
PromptInput = str | list[str | int | list[int]]


class CompletionRequest(msgspec.Struct):
    model: str
    prompt: PromptInput
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None


class EmbeddingRequest(msgspec.Struct):
    model: str
    input: PromptInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None


class PromptTokensDetails(msgspec.Struct, omit_defaults=True):
    cached_tokens: int | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class UsageView(msgspec.Struct):
    """Reads ``usage`` from a response or the last stream chunk; skips everything else."""

    usage: Usage | None = None


class DeltaView(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None


class ChoiceView(msgspec.Struct):
    delta: DeltaView | None = None
    text: str | None = None  # legacy completions chunks


class ChunkView(msgspec.Struct):
    """A stream chunk, read only when the upstream gave no usage and we count it ourselves."""

    choices: list[ChoiceView] = []
    usage: Usage | None = None


class Model(msgspec.Struct):
    id: str
    created: int
    owned_by: str
    object: str = "model"


class ModelList(msgspec.Struct):
    data: list[Model]
    object: str = "list"
