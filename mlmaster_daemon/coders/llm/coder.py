"""The coder that asks real models: the `code` role writes scripts, the `feedback` role judges
runs and summarises phases. Parsing and prompts live in `parse.py` / `prompts.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlmaster_daemon.coders.llm.endpoint import Endpoint, Reply
from mlmaster_daemon.coders.llm.parse import (
    JUDGE_TOOL,
    NO_CODE_CORRECTION,
    parse_code_response,
    parse_judge_arguments,
    parse_judge_text,
)
from mlmaster_daemon.coders.llm.prompts import (
    completion_prompt,
    judge_messages,
    operator_messages,
    summary_messages,
)
from mlmaster_daemon.coders.protocol import CodeRequest, CodeResponse, JudgeVerdict
from mlmaster_daemon.config import Settings
from mlmaster_daemon.errors import LlmError, NoCodeInAnswer
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.models import CallRecord
from mlmaster_daemon.store.records import with_prompt
from mlmaster_daemon.tasks.spec import TaskSpec

log = get_logger("mlmaster.llm")
SUMMARY_CHARS = 240


def _summary(plan: str) -> str:
    """The first sentence of the plan, bounded: what memory keeps of this attempt."""
    first = plan.strip().split("\n")[0]
    cut = first.find(". ")
    text = first if cut < 0 else first[: cut + 1]
    return text[:SUMMARY_CHARS] or "model-written solution"


class LlmCoder:
    """A `Coder` and a `Reviewer`. `settings` is the daemon's one config holder: its `[llm]`
    values are read at each call, never copied."""

    def __init__(self, code: Endpoint, settings: Settings, feedback: Endpoint | None = None,
                 hardware: str = "CPU only"):
        self.code = code
        self.feedback = feedback
        self.settings = settings
        # What the daemon found (its slots); `[llm] hardware`, when set, wins.
        self.detected_hardware = hardware

    @property
    def hardware(self) -> str:
        return self.settings.config.llm.hardware or self.detected_hardware

    def hardware_for(self, request: CodeRequest) -> str:
        """The hardware line of this request's prompt: on a Ray cluster, what the task's own
        [resources] ask when it says."""
        config = self.settings.config
        if config.llm.hardware or config.execution.backend != "ray" or not request.task.resources:
            return self.hardware
        from mlmaster_daemon.execution.ray_cluster import describe_share
        from mlmaster_daemon.execution.ray_executor import execution_for

        return describe_share(execution_for(config.execution, request.task))

    @property
    def judges(self) -> bool:
        return self.feedback is not None

    @property
    def endpoints(self) -> list[Endpoint]:
        return [e for e in (self.code, self.feedback) if e is not None]

    async def wait_available(self) -> None:
        await self.code.wait_available()

    async def close(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.close()

    async def generate(self, request: CodeRequest) -> CodeResponse:
        """Ask for a script; a reply without a python block is retried with a short
        correction up to `no_code_retries` times, then the node fails with that reason."""
        calls: list[CallRecord] = []
        chat = self.code.cfg.mode == "chat"
        hardware = self.hardware_for(request)
        messages = operator_messages(request, hardware) if chat else []
        prompt = "" if chat else completion_prompt(request, hardware, self.code.cfg.chat_template)
        for attempt in range(self.settings.config.llm.no_code_retries + 1):
            reply = await (self.code.chat(messages) if chat else self.code.complete(prompt))
            # Kept with the call: trajectory export pairs what the model saw with its answer.
            calls.append(with_prompt(reply.record, messages if chat else prompt))
            parsed = parse_code_response(reply.content, reply.reasoning or None)
            if parsed.code is not None:
                plan = parsed.plan or "The model gave no plan before its code."
                return CodeResponse(plan=plan, code=parsed.code, summary=_summary(plan),
                                    calls=tuple(calls))
            log.warning("model answered without code", attempt=attempt + 1)
            if chat:
                messages = [*messages, {"role": "assistant", "content": reply.content},
                            {"role": "user", "content": NO_CODE_CORRECTION}]
        raise NoCodeInAnswer(f"the model answered {len(calls)} times without a python code block",
                      tuple(calls))

    async def judge(self, task: TaskSpec, code: str, output_tail: str,
                    harness_error: str | None) -> tuple[JudgeVerdict | None, list[CallRecord]]:
        """The feedback model's verdict on a run (None when it could not give one). It never
        decides the metric: the harness measured that already."""
        if self.feedback is None:
            return None, []
        messages = judge_messages(task, code, output_tail, harness_error)
        try:
            reply = await self._ask_judge(messages)
        except LlmError as exc:
            log.warning("judge unavailable", error=exc.message)
            return None, []
        try:
            if reply.tool_arguments:
                verdict = parse_judge_arguments(reply.tool_arguments)
            else:
                verdict = parse_judge_text(reply.content)
        except ValueError as exc:
            log.warning("judge answer unreadable", error=str(exc))
            return None, [with_prompt(reply.record, messages)]
        return verdict, [with_prompt(reply.record, messages)]

    async def _ask_judge(self, messages: list[dict[str, str]]) -> Reply:
        assert self.feedback is not None
        if self.feedback.cfg.tools:
            return await self.feedback.chat(messages, tools=[JUDGE_TOOL], max_tokens=1024)
        return await self.feedback.chat(messages, max_tokens=1024)

    async def summarise(self, entries_text: str, task: TaskSpec) -> tuple[str | None,
                                                                        Sequence[CallRecord]]:
        """A phase summary for the memory hierarchy from the feedback model (None if down)."""
        endpoint = self.feedback or self.code
        messages = summary_messages(entries_text, task)
        try:
            reply = await endpoint.chat(messages, max_tokens=1024)
        except LlmError as exc:
            log.warning("summary unavailable", error=exc.message)
            return None, []
        return reply.content.strip() or None, [with_prompt(reply.record, messages)]
