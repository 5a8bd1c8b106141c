"""Realistic OpenAI-compatible traffic against the proxy (locust).

Each virtual user holds one virtual key and, in a loop, sends one of: a chat completion,
a streamed chat completion (read to ``data: [DONE]``; time to first token is reported as
its own entry, ``TTFT``), or an embeddings request, in the proportions of ``--mix``. Prompt
lengths are lognormal (``--prompt-median-tokens``, ``--prompt-sigma``, clipped); a share
of prompts (``--repeat-share``) comes from a small fixed pool, so a response cache sees hits.

Keys: ``--keys-file`` (one per line, or a JSON list), else ``--key-count`` keys created at
test start through ``POST /key/generate`` with ``--master-key``, else ``--master-key``
itself. Every option also reads an environment variable (``LOADTEST_MIX`` and so on).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --master-key sk-master
    locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 60s --host ... --csv out
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import urllib.request
from itertools import count
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, events
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `loadtests`

from loadtests import traffic

_ENV = os.environ.get
_state: dict[str, Any] = {"keys": [], "prompts": None, "mix": None}
_user_ids = count()


def _options(parser: LocustArgumentParser) -> None:
    group = parser  # options on the parser itself appear in the web UI too
    group.add_argument("--mix", default=_ENV("LOADTEST_MIX", traffic.DEFAULT_MIX))
    group.add_argument("--repeat-share", type=float, default=_ENV("LOADTEST_REPEAT_SHARE", "0.2"))
    group.add_argument(
        "--prompt-median-tokens", type=float, default=_ENV("LOADTEST_PROMPT_MEDIAN", "200")
    )
    group.add_argument("--prompt-sigma", type=float, default=_ENV("LOADTEST_PROMPT_SIGMA", "1.0"))
    group.add_argument("--prompt-max-tokens", type=int, default=_ENV("LOADTEST_PROMPT_MAX", "8000"))
    group.add_argument("--max-tokens", type=int, default=_ENV("LOADTEST_MAX_TOKENS", "64"))
    group.add_argument("--chat-model", default=_ENV("LOADTEST_CHAT_MODEL", "gpt-4o-mini"))
    group.add_argument(
        "--embedding-model", default=_ENV("LOADTEST_EMBEDDING_MODEL", "text-embedding-3-small")
    )
    group.add_argument("--keys-file", default=_ENV("LOADTEST_KEYS_FILE", ""))
    group.add_argument("--key-count", type=int, default=_ENV("LOADTEST_KEY_COUNT", "50"))
    group.add_argument("--master-key", default=_ENV("LOADTEST_MASTER_KEY", ""), is_secret=True)


def _generate_keys(host: str, master_key: str, n: int) -> list[str]:
    keys = []
    for i in range(n):
        body = json.dumps({"key_alias": f"loadtest-{i}", "metadata": {"loadtest": True}})
        request = urllib.request.Request(
            f"{host.rstrip('/')}/key/generate",
            data=body.encode(),
            headers={"Authorization": f"Bearer {master_key}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            keys.append(json.loads(response.read())["key"])
    return keys


def _prepare(environment: Environment, **_: Any) -> None:
    opts = environment.parsed_options
    assert opts is not None
    assert environment.host
    _state["mix"] = traffic.parse_mix(opts.mix)
    sizes = traffic.PromptSizes(
        median=opts.prompt_median_tokens, sigma=opts.prompt_sigma, high=opts.prompt_max_tokens
    )
    _state["prompts"] = traffic.PromptSource(sizes, repeat_share=opts.repeat_share)
    if opts.keys_file:
        _state["keys"] = traffic.load_keys(Path(opts.keys_file))
    elif opts.master_key and opts.key_count > 0:
        _state["keys"] = _generate_keys(environment.host, opts.master_key, opts.key_count)
    else:
        _state["keys"] = [opts.master_key or "sk-loadtest"]
    print(f"loadtest: {len(_state['keys'])} keys, mix {_state['mix']}", file=sys.stderr)


# locust's EventHook.add_listener carries no annotations.
events.init_command_line_parser.add_listener(_options)  # type: ignore[no-untyped-call]
events.test_start.add_listener(_prepare)  # type: ignore[no-untyped-call]


class LlmUser(FastHttpUser):
    """One client application with its own key."""

    wait_time = between(
        float(_ENV("LOADTEST_WAIT_MIN", "0.5")), float(_ENV("LOADTEST_WAIT_MAX", "2.0"))
    )
    network_timeout = 600.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.rng = random.Random()
        keys: list[str] = _state["keys"]
        key = keys[next(_user_ids) % len(keys)]
        self.headers = {"Authorization": f"Bearer {key}"}

    def _prompt(self) -> tuple[str, str]:
        prompt, repeat = _state["prompts"].next(self.rng)
        return prompt, " (repeat)" if repeat else ""

    @property
    def _opts(self) -> Any:
        return self.environment.parsed_options

    def _task(self) -> None:
        kind = traffic.choose_kind(_state["mix"], self.rng)
        {"chat": self.chat, "stream": self.stream, "embeddings": self.embeddings}[kind]()

    tasks = [_task]

    def chat(self) -> None:
        prompt, label = self._prompt()
        body = traffic.chat_body(self._opts.chat_model, prompt, self._opts.max_tokens, False)
        with self.client.post(
            "/v1/chat/completions",
            json=body,
            headers=self.headers,
            name="chat" + label,
            catch_response=True,
        ) as response:
            if response.status_code == 200 and "choices" not in (response.text or ""):
                response.failure("200 without choices")

    def embeddings(self) -> None:
        prompt, label = self._prompt()
        body = traffic.embeddings_body(self._opts.embedding_model, prompt)
        self.client.post(
            "/v1/embeddings", json=body, headers=self.headers, name="embeddings" + label
        )

    def stream(self) -> None:
        prompt, label = self._prompt()
        body = traffic.chat_body(self._opts.chat_model, prompt, self._opts.max_tokens, True)
        start = time.perf_counter()
        sse = traffic.SseAccumulator()
        ttft_ms: float | None = None
        failure: Exception | None = None
        length = 0
        with self.client.post(
            "/v1/chat/completions",
            json=body,
            headers={**self.headers, "Accept": "text/event-stream"},
            name="stream (headers)" + label,
            stream=True,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            try:
                while line := response.stream.readline(b"\n"):
                    length += len(line)
                    kind = sse.feed(line)
                    if kind == "content" and ttft_ms is None:
                        ttft_ms = (time.perf_counter() - start) * 1000
                sse.finish()
            except Exception as exc:  # a broken stream is a failed request
                failure = exc
            if failure is None and not sse.complete:
                failure = RuntimeError(sse.error or "stream ended without data: [DONE]")
        self._report("stream" + label, (time.perf_counter() - start) * 1000, length, failure)
        if ttft_ms is not None:
            self._report("TTFT" + label, ttft_ms, 0, None)

    def _report(self, name: str, ms: float, length: int, exc: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type="SSE",
            name=name,
            response_time=ms,
            response_length=length,
            exception=exc,
            context={},
        )
