"""The fake upstream speaks OpenAI's wire format, as judged by the official openai SDK."""

from __future__ import annotations

import base64
import json
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.fake_upstream import REPLY_PREFIX, Fault, parse_fault
from tests.support.processes import (
    FakeUpstream,
    ProcessError,
    http_json,
    run_fake_upstream,
    start_process,
    stop_process,
    wait_for_line,
)

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Say hello to the tests."}
]
DEFAULT_REPLY = REPLY_PREFIX + "alpha bravo charlie delta echo foxtrot golf hotel"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    """One fake upstream process shared by the module."""
    with run_fake_upstream() as upstream:
        yield upstream


@pytest.fixture
def client(fake: FakeUpstream) -> Iterator[openai.OpenAI]:
    """A synchronous SDK client pointed at the fake, without retries."""
    with openai.OpenAI(base_url=fake.base_url, api_key="x", max_retries=0) as sdk:
        yield sdk


def test_parse_fault_recognises_names_and_suffixes() -> None:
    """Fault names match exactly or with a separated suffix, and nothing else matches."""
    assert parse_fault("error-503") == Fault("error", 503)
    assert parse_fault("error-429-alias") == Fault("error", 429)
    assert parse_fault("slowfirst-250") == Fault("slowfirst", 250)
    assert parse_fault("slow-10") == Fault("slow", 10)
    assert parse_fault("echo") == Fault("echo")
    assert parse_fault("echo-case1") == Fault("echo")
    assert parse_fault("echoes") == Fault()
    assert parse_fault("error-") == Fault()
    assert parse_fault("gpt-4o") == Fault()


def test_chat_completion_non_stream_parses(client: openai.OpenAI) -> None:
    """A non-stream chat completion parses with the documented text and token counts."""
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini"
    assert completion.system_fingerprint == "fp_fake"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == DEFAULT_REPLY
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == len("Say hello to the tests.") // 4 + 1
    assert completion.usage.completion_tokens == 8
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 8
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 0


def test_chat_stream_deltas_join_and_usage_only_with_include_usage(
    client: openai.OpenAI,
) -> None:
    """Stream deltas join to the reply text; usage arrives only when include_usage is set."""
    with client.chat.completions.create(model="m", messages=MESSAGES, stream=True) as stream:
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == DEFAULT_REPLY
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert len(chunks) == 1 + 8 + 1

    with client.chat.completions.create(
        model="long-3",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    *content, usage_chunk = chunks
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 3
    assert all(c.usage is None and len(c.choices) == 1 for c in content)
    assert "".join(c.choices[0].delta.content or "" for c in content) == (
        REPLY_PREFIX + "alpha bravo charlie"
    )


async def test_async_client_streams_chat(fake: FakeUpstream) -> None:
    """The async SDK client streams the same reply."""
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="x", max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream]
    assert "".join(pieces) == DEFAULT_REPLY


def test_legacy_completions_non_stream_and_stream(client: openai.OpenAI) -> None:
    """Legacy completions answer text_completion objects, streamed or not."""
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="abcdefgh")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == DEFAULT_REPLY
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 3

    with client.completions.create(
        model="long-2", prompt="x", stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == (REPLY_PREFIX + "alpha bravo")
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2


def test_embeddings_default_base64_decode_to_full_length(
    client: openai.OpenAI, fake: FakeUpstream
) -> None:
    """The SDK's default base64 request decodes to full-length, unit, deterministic vectors."""
    result = client.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    assert fake.stats()["last_body"]["encoding_format"] == "base64"
    assert result.object == "list"
    assert [d.index for d in result.data] == [0, 1]
    first = result.data[0].embedding
    assert len(first) == 1536
    assert abs(sum(v * v for v in first) - 1.0) < 1e-4
    assert result.usage.prompt_tokens == 2
    again = client.embeddings.create(model="text-embedding-3-small", input="one")
    assert again.data[0].embedding == first


def test_embeddings_float_honours_dimensions_and_token_inputs(fake: FakeUpstream) -> None:
    """Float encoding and dimensions are honoured, and base64 matches float exactly."""
    body = {"model": "e", "input": [[1, 2, 3], [4]], "dimensions": 16, "encoding_format": "float"}
    status, floats = http_json("POST", f"{fake.base_url}/embeddings", body)
    assert status == 200
    assert [len(d["embedding"]) for d in floats["data"]] == [16, 16]
    assert floats["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    status, encoded = http_json(
        "POST", f"{fake.base_url}/embeddings", {**body, "encoding_format": "base64"}
    )
    assert status == 200
    decoded = struct.unpack("<16f", base64.b64decode(encoded["data"][0]["embedding"]))
    assert list(decoded) == floats["data"][0]["embedding"]


def test_models_list(client: openai.OpenAI) -> None:
    """The models list holds model objects."""
    models = list(client.models.list())
    assert "gpt-4o-mini" in {m.id for m in models}
    assert all(m.object == "model" and m.owned_by for m in models)


def test_error_429_raises_rate_limit_error_with_headers(client: openai.OpenAI) -> None:
    """error-429 raises RateLimitError with an OpenAI body and rate-limit headers."""
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="error-429", messages=MESSAGES)
    assert caught.value.code == "rate_limit_exceeded"
    headers = caught.value.response.headers
    assert headers["retry-after"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"


@pytest.mark.parametrize(
    ("status", "error_type", "code"),
    [
        (400, openai.BadRequestError, None),
        (401, openai.AuthenticationError, "invalid_api_key"),
        (403, openai.PermissionDeniedError, "permission_denied"),
        (404, openai.NotFoundError, "model_not_found"),
        (500, openai.InternalServerError, None),
        (503, openai.InternalServerError, "service_unavailable"),
    ],
)
def test_error_status_maps_to_sdk_exception(
    client: openai.OpenAI, status: int, error_type: type[openai.APIStatusError], code: str | None
) -> None:
    """error-<status> raises the SDK's exception for that status with the expected code."""
    with pytest.raises(error_type) as caught:
        client.chat.completions.create(model=f"error-{status}", messages=MESSAGES)
    assert caught.value.status_code == status
    assert caught.value.code == code


def test_garbage_raises_on_parse(client: openai.OpenAI) -> None:
    """A 200 JSON-typed body that is not JSON makes the SDK fail to parse it."""
    # The SDK surfaces the decoder's own error here rather than an openai.APIError subclass.
    with pytest.raises(json.JSONDecodeError):
        client.chat.completions.create(model="garbage", messages=MESSAGES)


def test_hang_times_out_without_blocking_others(client: openai.OpenAI, fake: FakeUpstream) -> None:
    """hang never answers, so a client timeout fires, while other requests still work."""
    fake.reset()
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(
            model="hang",
            messages=MESSAGES,
        )
    assert client.models.list().data
    stats = fake.wait_for_stats(lambda s: s["requests_cancelled"] == 1)
    assert stats["inflight"] == 0


def test_cut_stream_ends_early(client: openai.OpenAI, fake: FakeUpstream) -> None:
    """cut-3 delivers three content chunks and then drops the connection without [DONE]."""
    fake.reset()
    received: list[str] = []
    with (
        pytest.raises(openai.APIConnectionError),
        client.chat.completions.create(
            model="cut-3",
            messages=MESSAGES,
            stream=True,
        ) as stream,
    ):
        received.extend(chunk.choices[0].delta.content or "" for chunk in stream)
    assert "".join(received) == REPLY_PREFIX + "alpha bravo charlie"
    stats = fake.stats()
    assert (stats["streams_aborted"], stats["streams_completed"]) == (1, 0)
    assert stats["streams_cancelled"] == 0


def test_reset_raises_connection_error(client: openai.OpenAI) -> None:
    """reset closes the connection without a response."""
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="reset", messages=MESSAGES)


def test_echo_returns_the_request_body(client: openai.OpenAI, fake: FakeUpstream) -> None:
    """echo answers with the exact JSON body the fake received."""
    completion = client.chat.completions.create(
        model="echo-case1",
        messages=MESSAGES,
        temperature=0.5,
    )
    content = completion.choices[0].message.content
    assert content is not None
    assert json.loads(content) == {
        "messages": MESSAGES,
        "model": "echo-case1",
        "temperature": 0.5,
    }
    assert fake.stats()["last_body"] == json.loads(content)


def test_nousage_omits_usage(client: openai.OpenAI) -> None:
    """nousage drops usage from answers and streams even when include_usage is asked."""
    completion = client.chat.completions.create(model="nousage", messages=MESSAGES)
    assert completion.usage is None
    with client.chat.completions.create(
        model="nousage",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    assert all(c.usage is None and c.choices for c in chunks)


def test_slowfirst_delays_the_answer(client: openai.OpenAI) -> None:
    """slowfirst-<ms> waits before answering."""
    started = time.monotonic()
    client.chat.completions.create(model="slowfirst-300", messages=MESSAGES)
    assert time.monotonic() - started >= 0.3


def test_missing_messages_is_a_400(client: openai.OpenAI) -> None:
    """A request without messages is rejected like OpenAI does."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=[])
    assert caught.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as missing:
        client.post("/chat/completions", body={"model": "m"}, cast_to=dict)
    assert missing.value.code == "missing_required_parameter"


def test_azure_route_with_azure_client(fake: FakeUpstream) -> None:
    """The Azure deployment route serves AzureOpenAI and names the deployment as model."""
    with openai.AzureOpenAI(
        azure_endpoint=fake.root_url,
        api_key="azure-key",
        api_version="2024-10-21",
        azure_deployment="dep1",
        max_retries=0,
    ) as azure:
        completion = azure.chat.completions.create(model="ignored", messages=MESSAGES)
        stats = fake.stats()
        vectors = azure.embeddings.create(model="ignored", input="x")
    assert completion.model == "dep1"
    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert stats["last_path"] == "/openai/deployments/dep1/chat/completions"
    assert stats["last_query"] == {"api-version": "2024-10-21"}
    assert stats["last_headers"]["api-key"] == "azure-key"
    assert len(vectors.data[0].embedding) == 1536


def test_azure_route_requires_key_and_api_version(fake: FakeUpstream) -> None:
    """Azure routes answer 401 without api-key and 400 without api-version."""
    url = f"{fake.root_url}/openai/deployments/dep1/chat/completions"
    body = {"messages": MESSAGES}
    with httpx.Client(trust_env=False) as http:
        no_key = http.post(url, params={"api-version": "2024-10-21"}, json=body)
        no_version = http.post(url, headers={"api-key": "k"}, json=body)
        good = http.post(
            url, params={"api-version": "2024-10-21"}, headers={"api-key": "k"}, json=body
        )
    assert no_key.status_code == 401
    assert no_key.json()["error"]["code"] == "401"
    assert no_version.status_code == 400
    assert "api-version" in no_version.json()["error"]["message"]
    assert good.status_code == 200


def test_require_key_enforces_bearer_key() -> None:
    """With --require-key only the right Bearer key (or Azure api-key) is accepted."""
    with run_fake_upstream("--require-key", "sekret", "--chunks", "2") as keyed:
        with (
            openai.OpenAI(base_url=keyed.base_url, api_key="wrong", max_retries=0) as bad,
            pytest.raises(openai.AuthenticationError) as caught,
        ):
            bad.models.list()
        assert caught.value.code == "invalid_api_key"
        assert caught.value.type == "invalid_request_error"
        with openai.OpenAI(base_url=keyed.base_url, api_key="sekret", max_retries=0) as good:
            completion = good.chat.completions.create(model="m", messages=MESSAGES)
        assert completion.choices[0].message.content == REPLY_PREFIX + "alpha bravo"
        with (
            openai.AzureOpenAI(
                azure_endpoint=keyed.root_url,
                api_key="wrong",
                api_version="2024-10-21",
                azure_deployment="dep1",
                max_retries=0,
            ) as azure,
            pytest.raises(openai.AuthenticationError),
        ):
            azure.chat.completions.create(model="dep1", messages=MESSAGES)


def test_stats_count_a_cancelled_stream(fake: FakeUpstream) -> None:
    """Closing the connection mid-stream is counted in streams_cancelled."""
    fake.reset()
    body = {"model": "slow-200", "messages": MESSAGES, "stream": True}
    with (
        httpx.Client(trust_env=False) as http,
        http.stream("POST", f"{fake.base_url}/chat/completions", json=body) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        first = next(line for line in response.iter_lines() if line.startswith("data: "))
        assert json.loads(first[len("data: ") :])["object"] == "chat.completion.chunk"
    stats = fake.wait_for_stats(lambda s: s["streams_cancelled"] == 1)
    assert stats["streams_started"] == 1
    assert stats["streams_completed"] == 0
    assert stats["inflight"] == 0


def test_script_mode_serves_and_exits_cleanly_on_sigterm() -> None:
    """Run as a plain script, the fake announces its port, serves, and exits 0 on SIGTERM."""
    proc = start_process([sys.executable, "tests/support/fake_upstream.py", "--port", "0"])
    try:
        port = int(wait_for_line(proc, "LISTENING ", timeout=15))
        status, body = http_json("GET", f"http://127.0.0.1:{port}/v1/models")
        assert status == 200
        assert body["object"] == "list"
    finally:
        assert stop_process(proc) == 0
    assert proc.returncode == 0
    assert proc.stdout_text() == f"LISTENING {port}"


def test_wait_for_line_reports_a_dead_child() -> None:
    """wait_for_line raises ProcessError carrying the child's stderr when it dies early."""
    proc = start_process([sys.executable, "-c", "import sys; sys.exit('boom on stderr')"])
    try:
        with pytest.raises(ProcessError, match="boom on stderr"):
            wait_for_line(proc, "LISTENING ", timeout=10)
    finally:
        stop_process(proc)


def test_stop_process_reaps_forked_children() -> None:
    """stop_process also kills a forked worker that still holds the child's pipes."""
    script = (
        "import subprocess, sys, time\n"
        "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('WORKER', worker.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = start_process([sys.executable, "-c", script])
    try:
        worker_pid = int(wait_for_line(proc, "WORKER ", timeout=10))
    finally:
        assert stop_process(proc) == -15
    deadline = time.monotonic() + 5
    while not _is_dead(worker_pid):
        assert time.monotonic() < deadline, f"worker {worker_pid} survived stop_process"
        time.sleep(0.02)


def _is_dead(pid: int) -> bool:
    """True once ``pid`` is gone or a zombie waiting for its (re)parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
