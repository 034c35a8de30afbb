"""One OpenAI-compatible endpoint: a reused official async client, bounded concurrency, rate
limits, retries with backoff and jitter, and a circuit breaker.

Transient faults (429 honouring Retry-After, 5xx, connection errors, timeouts, cut streams,
malformed bodies) are retried up to `max_retries`; when they persist the call raises
`EndpointUnavailable` and the breaker counts it. Other 4xx answers raise `LlmError` at once:
retrying cannot fix them. The API key lives only in the client object; it is never logged.
Waits (backoff, rate limits, breaker cooldown) go through the injected `sleep` and are measured
on the injected `clock`.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai

from mlmaster_daemon.coders.llm.limits import (
    BreakerState,
    CircuitBreaker,
    Now,
    Sleep,
    TokenBucket,
)
from mlmaster_daemon.config import EndpointConfig
from mlmaster_daemon.errors import ConfigError, EndpointUnavailable, LlmError
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.metrics import LlmCall
from mlmaster_daemon.models import CallRecord
from mlmaster_daemon.redact import redact, redact_value, register_secret
from mlmaster_daemon.tokenizer import TiktokenCounter

log = get_logger("mlmaster.llm")
MAX_KEY_CHARS = 4096
# Characters kept of an answer per token of max_tokens (tokens average ~4 characters).
CHARS_PER_TOKEN_CAP = 16
_TRANSIENT = (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError,
              openai.RateLimitError, openai.APIResponseValidationError, httpx2.HTTPError,
              TimeoutError, OSError, ValueError, KeyError)


@dataclass(frozen=True)
class Reply:
    content: str
    reasoning: str
    tool_arguments: str | None
    record: CallRecord


def read_api_key(cfg: EndpointConfig, where: str) -> str | None:
    """The key from the environment variable or file the config names (None when neither)."""
    key = _read_key(cfg, where)
    # From now on the key is cut from every prompt, database row, API answer and log line.
    register_secret(key)
    return key


def _read_key(cfg: EndpointConfig, where: str) -> str | None:
    if cfg.api_key_env:
        value = os.environ.get(cfg.api_key_env)
        if not value:
            raise ConfigError(f"{where}.api_key_env names {cfg.api_key_env}, which is not set; "
                              f"export it in the daemon's environment")
        return value.strip()
    if cfg.api_key_file:
        path = Path(cfg.api_key_file).expanduser()
        try:
            # A key is a line; a "key file" of megabytes is a mistake, read no more than that.
            with path.open(encoding="utf-8", errors="replace") as handle:
                return handle.read(MAX_KEY_CHARS).strip()
        except OSError as exc:
            raise ConfigError(f"{where}.api_key_file {path} cannot be read: "
                              f"{exc.strerror}") from None
    return None


def _retry_after(exc: openai.APIStatusError) -> float | None:
    raw = exc.response.headers.get("retry-after")
    try:
        return max(float(raw), 0.0) if raw is not None else None
    except ValueError:
        return None


class Endpoint:
    def __init__(self, role: str, cfg: EndpointConfig, api_key: str | None,
                 clock: Now = time.monotonic, seed: int | None = None, *,
                 sleep: Sleep = asyncio.sleep):
        self.role = role
        self.cfg = cfg
        self._clock = clock
        self._sleep = sleep
        self.client = openai.AsyncOpenAI(
            api_key=api_key or "EMPTY", base_url=cfg.base_url, max_retries=0,
            timeout=openai.Timeout(cfg.timeout_s, connect=cfg.connect_timeout_s),
        )
        self._slots = asyncio.Semaphore(cfg.max_concurrency)
        self._requests = TokenBucket(cfg.requests_per_minute, clock, sleep)
        self._tokens = TokenBucket(cfg.tokens_per_minute, clock, sleep)
        self.breaker = CircuitBreaker(cfg.breaker_failures, cfg.breaker_cooldown_s, clock)
        self._probe_lock = asyncio.Lock()
        self._rng = random.Random(seed)
        self._counter = TiktokenCounter()
        # Told of every call's end (the daemon's metrics), when set.
        self.observe: Callable[[LlmCall], None] | None = None

    @property
    def label(self) -> str:
        return f"{self.role} endpoint {self.cfg.base_url} ({self.cfg.model})"

    @property
    def available(self) -> bool:
        return self.breaker.state is BreakerState.CLOSED

    def status(self) -> dict[str, Any]:
        return {"role": self.role, "base_url": self.cfg.base_url, "model": self.cfg.model,
                "breaker": self.breaker.state.value, "last_error": self.breaker.last_error}

    async def close(self) -> None:
        await self.client.close()

    async def chat(self, messages: list[dict[str, str]], *, tools: list[dict[str, Any]] | None
                   = None, max_tokens: int | None = None) -> Reply:
        # Whatever a prompt was built from, no key the daemon holds leaves in it.
        messages = redact_value(messages)

        async def call() -> tuple[str, str, str | None, Any]:
            extra: dict[str, Any] = {}
            if tools:
                extra["tools"] = tools
                extra["tool_choice"] = {"type": "function",
                                        "function": {"name": tools[0]["function"]["name"]}}
            stream = await self.client.chat.completions.create(  # type: ignore[call-overload]
                model=self.cfg.model, messages=messages,
                temperature=self.cfg.temperature, max_tokens=max_tokens or self.cfg.max_tokens,
                stream=True, stream_options={"include_usage": True}, **extra,
            )
            content = _Bounded(self._answer_cap(max_tokens))
            reasoning = _Bounded(content.cap)
            arguments = _Bounded(content.cap)
            usage: Any = None
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    delta = choice.delta
                    content.add(delta.content or "")
                    extra_fields = delta.model_extra or {}
                    reasoning.add(str(extra_fields.get("reasoning_content") or ""))
                    for tool_call in delta.tool_calls or []:
                        if tool_call.function and tool_call.function.arguments:
                            arguments.add(tool_call.function.arguments)
                if content.full or reasoning.full or arguments.full:
                    self._cut(content.cap)
                    await stream.close()  # the rest is never read: drop the connection
                    break
            return content.text(), reasoning.text(), arguments.text() or None, usage

        prompt_text = "\n".join(m.get("content", "") for m in messages)
        return await self._call(call, prompt_text)

    async def complete(self, prompt: str, max_tokens: int | None = None) -> Reply:
        prompt = redact(prompt)

        async def call() -> tuple[str, str, str | None, Any]:
            stream = await self.client.completions.create(
                model=self.cfg.model, prompt=prompt, temperature=self.cfg.temperature,
                max_tokens=max_tokens or self.cfg.max_tokens, stream=True,
                stream_options={"include_usage": True},
            )
            parts = _Bounded(self._answer_cap(max_tokens))
            usage: Any = None
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    parts.add(choice.text or "")
                if parts.full:
                    self._cut(parts.cap)
                    await stream.close()
                    break
            return parts.text(), "", None, usage

        return await self._call(call, prompt)

    def _answer_cap(self, max_tokens: int | None) -> int:
        # A token is a few characters; an answer many times longer than max_tokens allows is
        # not a model at work, and is not held (or stored) whole.
        return (max_tokens or self.cfg.max_tokens) * CHARS_PER_TOKEN_CAP

    def _cut(self, cap: int) -> None:
        log.warning("llm answer cut: far longer than max_tokens allows", role=self.role,
                    endpoint=self.cfg.base_url, kept_chars=cap)

    async def _call(self, make: Callable[[], Awaitable[tuple[str, str, str | None, Any]]],
                    prompt_text: str) -> Reply:
        estimate = self._counter.count(prompt_text) + self.cfg.max_tokens
        attempts = 0
        started = self._clock()
        while True:
            attempts += 1
            delay = min(self.cfg.backoff_s * 2 ** (attempts - 1), self.cfg.backoff_max_s)
            delay *= 0.5 + self._rng.random()  # jitter: callers that failed together spread out
            try:
                async with self._slots:
                    await self._requests.take(1)
                    await self._tokens.take(estimate)
                    async with asyncio.timeout(self.cfg.timeout_s):
                        content, reasoning, arguments, usage = await make()
            except openai.APIStatusError as exc:
                if exc.status_code != 429 and exc.status_code < 500:
                    self._report(attempts, started, None)
                    raise LlmError(f"{self.label} refused the request with HTTP "
                                   f"{exc.status_code}: {_message(exc)}") from None
                error = f"HTTP {exc.status_code}: {_message(exc)}"
                delay = _retry_after(exc) or delay
            except _TRANSIENT as exc:
                error = f"{type(exc).__name__}: {str(exc)[:200] or 'no detail'}"
            else:
                self.breaker.record_success()
                record = self._record(prompt_text, content, reasoning, usage, started, attempts)
                self._report(attempts, started, record)
                return Reply(content, reasoning, arguments, record)
            log.warning("llm call failed", role=self.role, endpoint=self.cfg.base_url,
                        attempt=attempts, error=error)
            if attempts > self.cfg.max_retries:
                self.breaker.record_failure(error)
                self._report(attempts, started, None)
                raise EndpointUnavailable(f"{self.label} failed {attempts} times; last: {error}")
            await self._sleep(delay)

    def _report(self, attempts: int, started: float, record: CallRecord | None) -> None:
        if self.observe is not None:
            self.observe(LlmCall(self.role, self.cfg.model, self.cfg.base_url, attempts,
                                 self._clock() - started, record))

    def _record(self, prompt_text: str, content: str, reasoning: str, usage: Any,
                started: float, attempts: int) -> CallRecord:
        if usage is not None:
            prompt_tokens = int(usage.prompt_tokens or 0)
            completion_tokens = int(usage.completion_tokens or 0)
            details = getattr(usage, "completion_tokens_details", None)
            reasoning_tokens = int(getattr(details, "reasoning_tokens", 0) or 0)
        else:
            # No usage in the answer: count with the local tokenizer instead.
            prompt_tokens = self._counter.count(prompt_text)
            completion_tokens = self._counter.count(content + reasoning)
            reasoning_tokens = 0
        if reasoning and not reasoning_tokens:
            reasoning_tokens = self._counter.count(reasoning)
        cost = (prompt_tokens * self.cfg.price_prompt
                + completion_tokens * self.cfg.price_completion) / 1e6
        return CallRecord(self.role, self.cfg.model, self.cfg.base_url, prompt_tokens,
                          completion_tokens, reasoning_tokens,
                          round(self._clock() - started, 4), cost, attempts, content,
                          reasoning)

    async def probe(self) -> str | None:
        """One tiny request; None when the endpoint answered, else what went wrong."""
        try:
            async with asyncio.timeout(self.cfg.connect_timeout_s + 30):
                stream = await self.client.chat.completions.create(
                    model=self.cfg.model, messages=[{"role": "user", "content": "ping"}],
                    max_tokens=1, stream=True,
                )
                async for _chunk in stream:
                    pass
        except openai.APIStatusError as exc:
            return f"HTTP {exc.status_code}: {_message(exc)}"
        except _TRANSIENT as exc:
            return f"{type(exc).__name__}: {str(exc)[:200] or 'no detail'}"
        return None

    async def wait_available(self) -> None:
        """Return once the endpoint answers again: probe after each cooldown until one works."""
        while not self.available:
            async with self._probe_lock:
                if self.available:
                    return
                await self._sleep(self.breaker.seconds_until_probe())
                error = await self.probe()
                if error is None:
                    self.breaker.record_success()
                    log.info("llm endpoint is back", role=self.role, endpoint=self.cfg.base_url)
                else:
                    self.breaker.record_failure(error)


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return str(exc.message)[:300]


class _Bounded:
    """Text streamed in pieces, kept up to `cap` characters, as valid UTF-8 (a lone surrogate,
    which no UTF-8 file or database can hold, becomes "?")."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._parts: list[str] = []
        self._size = 0

    @property
    def full(self) -> bool:
        return self._size >= self.cap

    def add(self, piece: str) -> None:
        if piece and not self.full:
            piece = piece[: self.cap - self._size]
            self._parts.append(piece)
            self._size += len(piece)

    def text(self) -> str:
        return "".join(self._parts).encode("utf-8", "replace").decode("utf-8")
