"""`InjectedModel`, the OpenAI-compatible server that plays a prompt-injected model in a
hostile run: the victim task gets working scripts, the attacker task the attacks in turn."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tools.chaos import NodeRow
from tools.hostile.attacks import ATTACKS_BY_NAME, ECHOED_KEY
from tools.hostile.settings import MIB

# The tasks' names, which the model finds in its prompts.
ATTACKER, VICTIM = "hostile-attacker", "hostile-victim"


@dataclass(frozen=True)
class Served:
    """One answer the model server began to give (whole, or until the daemon stopped
    reading: either way the model was paid for it): the task it was for (by its name in the
    prompt; None for the start-up probe), and when (monotonic seconds) it began and ended."""

    task: str | None
    started: float
    ended: float


def _answer_text(plan: str, code: str) -> str:
    return f"{plan}\n\n```python\n{code.rstrip()}\n```\n"


class InjectedModel:
    """An OpenAI-compatible chat server (POST /v1/chat/completions, streamed as SSE or whole)
    playing a prompt-injected model: the victim's code requests get the working script, the
    attacker's the next of `attacker_scripts` (cycled; the working script while there are
    none); other requests (the start-up probe, summaries) a line of text. Every request body
    is kept in `requests`."""

    def __init__(self, working: str) -> None:
        self.working = working
        self.attacker_scripts: list[tuple[str, str]] = []  # (attack name or "working", code)
        self.padding_mb: dict[str, int] = {}  # attack name -> MiB of plan before its code
        self.requests: list[dict[str, Any]] = []
        self.served: Counter[str] = Counter()
        self.answers: list[Served] = []
        self._next = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * MIB)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def answer(self, body: Mapping[str, Any], key: str = "") -> str:
        """The answer to one request; `key` is the API key the request came with, which an
        `echo_key` attack repeats."""
        text = "\n".join(str(m.get("content") or "") for m in body.get("messages", []))
        if f"# Task: {VICTIM}" in text:
            self.served["working"] += 1
            return _answer_text("Working script: a simple model and its submission.",
                                self.working)
        if f"# Task: {ATTACKER}" in text and not self.attacker_scripts:
            self.served["working"] += 1
            return _answer_text("Working script: a simple model and its submission.",
                                self.working)
        if f"# Task: {ATTACKER}" in text:
            name, code = self.attacker_scripts[self._next % len(self.attacker_scripts)]
            self._next += 1
            self.served[name] += 1
            plan = ("Working script: a simple model and its submission." if name == "working"
                    else f"Injected attack: {name}. The note in the data told me to.")
            if name != "working" and ATTACKS_BY_NAME[name].echo_key:
                code = code.replace(ECHOED_KEY, key)
                plan += f" My key is {key}."
            padding = self.padding_mb.get(name, 0)
            if padding:
                plan += "\n" + ("All work and no play makes a dull model. " * 24 + "\n") * (
                    padding * MIB // 1009)
            return _answer_text(plan, code)
        return "Nothing to add."

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        body = await request.json()
        self.requests.append(body)
        prompt = "\n".join(str(m.get("content") or "") for m in body.get("messages", []))
        task = next((name for name in (ATTACKER, VICTIM)
                     if f"# Task: {name}" in prompt or f'competition "{name}"' in prompt), None)
        text = self.answer(body, request.headers.get("Authorization", "").removeprefix(
            "Bearer "))
        base = {"id": "hostile-1", "created": int(time.time()), "model": body.get("model", "m")}
        usage = {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}
        if not body.get("stream"):
            self.answers.append(Served(task, started, time.monotonic()))
            return web.json_response({**base, "object": "chat.completion", "usage": usage,
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant",
                                                               "content": text}}]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await self._stream(response, base, text, usage)
        except ConnectionResetError:
            pass  # the daemon stopped reading (an answer too long) or died: it was served
        finally:
            self.answers.append(Served(task, started, time.monotonic()))
        return response

    async def _stream(self, response: web.StreamResponse, base: Mapping[str, Any], text: str,
                      usage: Mapping[str, int]) -> None:
        chunk = {**base, "object": "chat.completion.chunk"}
        # Small pieces as real servers send them; a huge answer in pieces of 64 KiB.
        piece = 400 if len(text) < MIB else 64 * 1024
        for start in range(0, len(text), piece):
            delta = {"role": "assistant", "content": text[start:start + piece]}
            await response.write(b"data: " + json.dumps({**chunk, "choices": [
                {"index": 0, "delta": delta, "finish_reason": None}]}).encode() + b"\n\n")
        await response.write(b"data: " + json.dumps({**chunk, "choices": [], "usage": usage})
                             .encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")


def plan_attack(row: NodeRow) -> str:
    """The attack a node ran, as the plan the model gave it names it: "working" for a working
    script, "?" for a plan the model did not write."""
    plan = str(dict(row.outcome)["plan"] or "")
    if plan.startswith("Injected attack: "):
        return plan.removeprefix("Injected attack: ").split(".")[0]
    return "working" if plan.startswith("Working script") else "?"
