"""The provider interface: translation only, no I/O.

An adapter turns a client request (OpenAI shape) into the upstream's request, and the
upstream's answer (JSON body, SSE stream or error) back into the OpenAI shape. Adapters for
OpenAI-compatible upstreams forward bytes; translating adapters (Anthropic) re-encode.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.errors import ProxyError
from proxy.settings import DeploymentParams
from proxy.wire.openai import Usage


class Operation(enum.StrEnum):
    CHAT = "chat/completions"
    COMPLETION = "completions"
    EMBEDDING = "embeddings"


@dataclass(slots=True)
class ParsedRequest:
    """What the pipeline learned from the client's body, handed to the adapter."""

    op: Operation
    alias: str
    body: bytes
    stream: bool
    client_wants_usage: bool
    data: dict[str, Any] | None = None  # the decoded body, when something must change


@dataclass(slots=True)
class UpstreamRequest:
    url: str
    headers: Mapping[str, str]
    body: bytes
    # Client parameters the upstream cannot take and the adapter left out (drop_params);
    # the API layer reports them in ``x-llm-proxy-dropped-params``.
    dropped: tuple[str, ...] = ()


@dataclass(slots=True)
class ParsedResponse:
    body: bytes
    usage: Usage | None


@dataclass(slots=True)
class StreamAccount:
    """Side record of a stream for accounting: usage if reported, else the raw events."""

    usage: Usage | None = None
    raw: list[bytes] = field(default_factory=list)


class StreamTranslator(Protocol):
    account: StreamAccount

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to forward now for this upstream chunk (may be empty)."""
        ...

    def finish(self) -> bytes:
        """Bytes to forward when the upstream stream has ended normally."""
        ...

    def completion_text(self) -> str:
        """The generated text, for counting tokens when the upstream reported no usage."""
        ...


class ProviderAdapter(Protocol):
    name: str

    def prepare(self, params: DeploymentParams) -> Mapping[str, str]:
        """Headers sent with every request to this deployment (auth, content type)."""
        ...

    def url(self, op: Operation, params: DeploymentParams) -> str: ...

    def build_request(
        self, req: ParsedRequest, params: DeploymentParams, url: str, headers: Mapping[str, str]
    ) -> UpstreamRequest: ...

    def parse_response(self, req: ParsedRequest, body: bytes) -> ParsedResponse: ...

    def stream_translator(self, req: ParsedRequest) -> StreamTranslator: ...

    def parse_error(
        self, status: int, headers: Mapping[str, str], body: bytes, deployment: str
    ) -> ProxyError: ...
