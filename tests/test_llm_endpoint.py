"""The endpoint client against a real local OpenAI-compatible server, fault by fault. Its
waits (backoff, Retry-After, rate limits, breaker cooldown) run on a manual clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from openai_server import FakeOpenAI

from mlmaster_daemon.coders.llm.endpoint import Endpoint
from mlmaster_daemon.config import EndpointConfig
from mlmaster_daemon.errors import EndpointUnavailable, LlmError

KEY = "sk-test-secret-123456"
MESSAGES = [{"role": "user", "content": "write code"}]


class ManualClock:
    """A clock that moves only when the endpoint sleeps on it: each wait asked for is recorded
    and added to the time at once, so no test spends it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI().start()
    yield fake
    await fake.stop()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def _endpoint(server: FakeOpenAI, clock: ManualClock | None = None, **cfg: object) -> Endpoint:
    settings: dict[str, object] = {"base_url": server.base_url, "model": "fake-model",
                                   "backoff_s": 0.01, "backoff_max_s": 0.05, "max_retries": 3,
                                   "timeout_s": 5, "price_prompt": 1.0, "price_completion": 2.0}
    settings.update(cfg)
    clock = clock or ManualClock()
    return Endpoint("code", EndpointConfig.model_validate(settings), KEY, clock, seed=1,
                    sleep=clock.sleep)


async def test_a_streamed_answer_is_assembled_and_accounted(server: FakeOpenAI) -> None:
    endpoint = _endpoint(server)
    reply = await endpoint.chat(MESSAGES)
    assert reply.content == server.answer_text()
    record = reply.record
    assert (record.prompt_tokens, record.completion_tokens) == (100, 50)
    assert record.cost == pytest.approx((100 * 1.0 + 50 * 2.0) / 1e6)
    assert record.attempts == 1
    assert server.requests[0]["stream"] is True
    assert server.headers[0]["Authorization"] == f"Bearer {KEY}"
    await endpoint.close()


async def test_reasoning_content_is_kept_apart(server: FakeOpenAI) -> None:
    server.script.append("reasoning")
    reply = await _endpoint(server).chat(MESSAGES)
    assert reply.reasoning == "Let me think about the data first."
    assert reply.record.reasoning_tokens > 0


async def test_429_is_retried_after_retry_after(server: FakeOpenAI, clock: ManualClock) -> None:
    server.retry_after_s = 0.3
    server.script.extend(["rate_limit", "ok"])
    reply = await _endpoint(server, clock).chat(MESSAGES)
    assert clock.sleeps == [pytest.approx(0.3)]  # the server's Retry-After, not the backoff
    assert reply.record.attempts == 2
    assert reply.record.latency_s == pytest.approx(0.3)  # measured on the endpoint's clock


async def test_a_request_over_the_rate_limit_waits_for_the_bucket_to_refill(
    server: FakeOpenAI, clock: ManualClock,
) -> None:
    endpoint = _endpoint(server, clock, requests_per_minute=2)
    for _ in range(3):
        await endpoint.chat(MESSAGES)
    # Two requests fit the bucket; the third waits for one request's refill (60 s / 2).
    assert clock.sleeps == [pytest.approx(30.0)]
    assert len(server.requests) == 3


@pytest.mark.parametrize("fault", ["error500", "cut", "malformed"])
async def test_transient_faults_are_retried_with_growing_backoff(
    server: FakeOpenAI, clock: ManualClock, fault: str,
) -> None:
    server.script.extend([fault, fault, "ok"])
    reply = await _endpoint(server, clock).chat(MESSAGES)
    assert reply.record.attempts == 3
    assert "```python" in reply.content
    # backoff_s 0.01 doubled per attempt, each with jitter between x0.5 and x1.5.
    assert len(clock.sleeps) == 2
    assert 0.005 <= clock.sleeps[0] <= 0.015 and 0.01 <= clock.sleeps[1] <= 0.03


async def test_a_hung_request_times_out_and_is_retried(server: FakeOpenAI) -> None:
    server.hang_s = 1.5
    server.script.extend(["hang", "ok"])
    reply = await _endpoint(server, timeout_s=0.5).chat(MESSAGES)
    assert reply.record.attempts == 2


async def test_other_4xx_fail_at_once_with_the_reason(server: FakeOpenAI) -> None:
    server.script.append("bad_request")
    with pytest.raises(LlmError, match="HTTP 404: model does not exist") as err:
        await _endpoint(server).chat(MESSAGES)
    assert not isinstance(err.value, EndpointUnavailable)
    assert len(server.requests) == 1


async def test_persistent_failure_opens_the_breaker_and_a_probe_closes_it(
    server: FakeOpenAI, clock: ManualClock,
) -> None:
    server.default = "error500"
    endpoint = _endpoint(server, clock, max_retries=1, breaker_failures=1,
                         breaker_cooldown_s=0.2)
    with pytest.raises(EndpointUnavailable):
        await endpoint.chat(MESSAGES)
    assert not endpoint.available
    assert endpoint.status()["breaker"] == "open"
    server.default = "ok"
    requests = len(server.requests)
    await endpoint.wait_available()
    assert clock.sleeps[-1] == pytest.approx(0.2)  # the probe waited out the cooldown
    assert len(server.requests) == requests + 1  # then one probe closed the breaker
    assert endpoint.available
    assert (await endpoint.chat(MESSAGES)).record.attempts == 1


async def test_raw_completion_mode_streams_text(server: FakeOpenAI) -> None:
    reply = await _endpoint(server, mode="completion").complete("<think>\n")
    assert "```python" in reply.content
    assert "prompt" in server.requests[0]


async def test_the_judge_tool_call_arguments_come_back(server: FakeOpenAI) -> None:
    server.script.append("tool")
    tool = {"type": "function", "function": {"name": "submit_review", "parameters": {}}}
    reply = await _endpoint(server).chat(MESSAGES, tools=[tool])
    assert reply.tool_arguments is not None
    assert '"is_bug": false' in reply.tool_arguments
    assert server.requests[0]["tool_choice"]["function"]["name"] == "submit_review"


async def test_probe_reports_an_unreachable_endpoint() -> None:
    cfg = EndpointConfig(base_url="http://127.0.0.1:9/v1", model="m", connect_timeout_s=1)
    error = await Endpoint("code", cfg, None).probe()
    assert error is not None and "Connect" in error


async def test_an_answer_far_beyond_max_tokens_is_cut_not_held_whole(server: FakeOpenAI) -> None:
    server.plan = "blah " * 200_000  # a megabyte streamed for an answer of at most 100 tokens
    reply = await _endpoint(server, max_tokens=100).chat(MESSAGES)
    assert len(reply.content) == 100 * 16
    assert reply.content.startswith("blah blah")


async def test_an_answer_no_utf8_can_hold_is_made_valid_and_kept(server: FakeOpenAI) -> None:
    server.code = 'print("\ud800")\n'
    reply = await _endpoint(server).chat(MESSAGES)
    assert 'print("?")' in reply.content
    reply.content.encode("utf-8")
    reply.record.content.encode("utf-8")
