"""A real OpenAI-compatible HTTP server for tests: aiohttp on 127.0.0.1, scripted faults.

Each request pops the next behaviour from `script` (or uses `default`):
  ok, think_only, nocode, tool, rate_limit, error500, hang, cut, malformed, bad_request
It streams Server-Sent Events when the request asks to stream, as the real APIs do.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_CODE = 'print("hello")\n'


@dataclass
class FakeOpenAI:
    code: str = DEFAULT_CODE
    plan: str = "Train a simple model and write the submission."
    default: str = "ok"
    latency_s: float = 0.0
    retry_after_s: float = 0.1
    hang_s: float = 30.0
    verdict: dict[str, Any] = field(
        default_factory=lambda: {"is_bug": False, "analysis": "ran fine", "summary": "ok"})
    script: deque[str] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completion)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def answer_text(self) -> str:
        return f"{self.plan}\n\n```python\n{self.code}```\n"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._respond(request, chat=True)

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        return await self._respond(request, chat=False)

    async def _respond(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        mode = self.script.popleft() if self.script else self.default
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if mode == "rate_limit":
            return web.json_response({"error": {"message": "slow down", "type": "rate_limit"}},
                                     status=429,
                                     headers={"Retry-After": str(self.retry_after_s)})
        if mode == "error500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if mode == "bad_request":
            return web.json_response({"error": {"message": "model does not exist"}},
                                     status=404)
        if mode == "hang":
            await asyncio.sleep(self.hang_s)
        text, reasoning, tool = self.answer_text(), "", None
        if mode == "think_only":
            text = "<think>I should write code but I will not.</think>"
        elif mode == "nocode":
            text = "I would train a gradient boosting model."
        elif mode == "tool":
            text, tool = "", json.dumps(self.verdict)
        elif mode == "reasoning":
            reasoning = "Let me think about the data first."
        if not body.get("stream"):
            return web.json_response(_full(body, chat, text, tool))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if mode == "malformed":
            await response.write(b"data: {not json\n\n")
            return response
        chunks = _chunks(body, chat, text, reasoning, tool)
        for i, chunk in enumerate(chunks):
            if mode == "cut" and i == len(chunks) // 2:
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response


def _base(body: dict[str, Any], chat: bool) -> dict[str, Any]:
    return {"id": "fake-1", "created": int(time.time()), "model": body.get("model", "m"),
            "object": "chat.completion.chunk" if chat else "text_completion"}


def _chunks(body: dict[str, Any], chat: bool, text: str, reasoning: str,
            tool: str | None) -> list[dict[str, Any]]:
    pieces = [text[i:i + 40] for i in range(0, len(text), 40)] or [""]
    out = []
    if reasoning and chat:
        out.append({**_base(body, chat), "choices": [
            {"index": 0, "delta": {"role": "assistant", "reasoning_content": reasoning},
             "finish_reason": None}]})
    for piece in pieces:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": piece}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
        else:
            choice = {"index": 0, "text": piece, "finish_reason": None, "logprobs": None}
        out.append({**_base(body, chat), "choices": [choice]})
    if tool is not None and chat:
        out.append({**_base(body, chat), "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "submit_review", "arguments": tool}}]},
            "finish_reason": "tool_calls"}]})
    out.append({**_base(body, chat), "choices": [],
                "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}})
    return out


def _full(body: dict[str, Any], chat: bool, text: str, tool: str | None) -> dict[str, Any]:
    usage = {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool is not None:
            message["tool_calls"] = [{"id": "call_1", "type": "function",
                                      "function": {"name": "submit_review", "arguments": tool}}]
        return {**_base(body, chat), "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage}
    return {**_base(body, chat), "choices": [{"index": 0, "text": text, "finish_reason": "stop",
                                              "logprobs": None}], "usage": usage}
