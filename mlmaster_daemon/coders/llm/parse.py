"""Turning raw model replies into a plan, a script, reasoning, and judge verdicts.

Nothing here talks to a model: every function is pure and raises `ValueError` (judge parsing
only) when a reply cannot be used, so the caller decides whether to retry.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
import warnings
from dataclasses import dataclass
from typing import Any, Final

from mlmaster_daemon.coders.protocol import JudgeVerdict

THINK_OPEN: Final = "<think>"
THINK_CLOSE: Final = "</think>"

NO_CODE_CORRECTION: Final = (
    "Your reply had no Python code block, so there is nothing to run. Reply again with a short "
    "plan (3-5 sentences) followed by the complete script in ONE fenced ```python block. "
    "Write the whole file: nothing outside the block is executed."
)

_PYTHON_LANGS: Final = frozenset({"python", "py", "python3", "py3"})
_FENCE_OPEN = re.compile(r"^[ \t]{0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*?)[ \t]*$")
_MIN_UNFENCED_LINES: Final = 3


def split_reasoning(content: str, reasoning_content: str | None = None) -> tuple[str, str]:
    """Split a reply into (visible text, reasoning), both stripped.

    Every complete `<think>...</think>` block is removed from the visible text and kept as
    reasoning. A `<think>` that is never closed turns the rest of the reply into reasoning (a
    reply cut off mid-thought has no visible part). A `</think>` with no opening tag before it,
    as when the prompt pre-filled `<think>`, makes everything before it reasoning. A separate
    `reasoning_content` from the endpoint is appended after the reasoning found in `content`.
    """
    reasoning: list[str] = []
    visible: list[str] = []
    rest = content
    close = rest.find(THINK_CLOSE)
    open_ = rest.find(THINK_OPEN)
    if close != -1 and (open_ == -1 or close < open_):
        reasoning.append(rest[:close])
        rest = rest[close + len(THINK_CLOSE) :]
    while rest:
        start = rest.find(THINK_OPEN)
        if start == -1:
            visible.append(rest)
            break
        visible.append(rest[:start])
        body_start = start + len(THINK_OPEN)
        end = rest.find(THINK_CLOSE, body_start)
        if end == -1:
            reasoning.append(rest[body_start:])
            break
        reasoning.append(rest[body_start:end])
        rest = rest[end + len(THINK_CLOSE) :]
    if reasoning_content:
        reasoning.append(reasoning_content)
    parts = [part.strip() for part in reasoning if part.strip()]
    return "".join(visible).strip(), "\n\n".join(parts)


@dataclass(frozen=True)
class _Block:
    start: int
    lang: str
    body: str


def _fenced_blocks(text: str) -> list[_Block]:
    """Fenced blocks in order; `start` is the offset of the opening fence line.

    A fence closes on a line of the same character at least as long; an unclosed last fence
    runs to the end of the text (a reply truncated at the token limit).
    """
    blocks: list[_Block] = []
    lines = text.splitlines(keepends=True)
    offset = 0
    index = 0
    while index < len(lines):
        line = lines[index]
        match = _FENCE_OPEN.match(line.rstrip("\r\n"))
        if match is None:
            offset += len(line)
            index += 1
            continue
        fence = match.group("fence")
        closer = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        words = match.group("info").split()
        lang = words[0].lower() if words else ""
        start = offset
        offset += len(line)
        index += 1
        body: list[str] = []
        while index < len(lines) and not closer.match(lines[index].rstrip("\r\n")):
            body.append(lines[index])
            offset += len(lines[index])
            index += 1
        if index < len(lines):
            offset += len(lines[index])
            index += 1
        blocks.append(_Block(start, lang, "".join(body)))
    return blocks


def _clean(body: str) -> str:
    return textwrap.dedent(body).strip("\n").rstrip()


def _parse_python(code: str) -> ast.Module | None:
    with warnings.catch_warnings():
        # Invalid escape sequences in model code warn at compile time; that is not our concern.
        warnings.simplefilter("ignore")
        try:
            return ast.parse(code)
        except (SyntaxError, ValueError):
            return None


def _is_program(tree: ast.Module) -> bool:
    """False for lone expressions such as `0.85` or `submission.csv` that merely parse."""
    for statement in tree.body:
        if not isinstance(statement, ast.Expr) or isinstance(statement.value, ast.Call):
            return True
    return False


def extract_code(text: str) -> tuple[str, str | None]:
    """Return (plan, code) from the visible text of a reply.

    Candidates are fenced blocks tagged python/py/python3/py3, and untagged fenced blocks
    whose body parses as a Python program (not a lone value). Candidates that do not parse
    are dropped when at least one does; when none parses, all python-tagged blocks are kept so
    the run surfaces the syntax error to debug. The kept blocks are joined in order with a
    blank line. The plan is the text before the first kept block, stripped.

    A reply with no fences at all is taken as bare code only when it parses as a program
    and has at least 3 non-blank lines; its plan is then empty. Otherwise code is None and
    the plan is the whole text, stripped.
    """
    candidates: list[tuple[_Block, bool]] = []
    for block in _fenced_blocks(text):
        body = _clean(block.body)
        if not body:
            continue
        tree = _parse_python(body)
        if block.lang in _PYTHON_LANGS:
            candidates.append((block, tree is not None))
        elif not block.lang and tree is not None and _is_program(tree):
            candidates.append((block, True))
    if any(ok for _, ok in candidates):
        candidates = [(block, ok) for block, ok in candidates if ok]
    if candidates:
        code = "\n\n".join(_clean(block.body) for block, _ in candidates)
        return text[: candidates[0][0].start].strip(), code
    if "```" not in text and "~~~" not in text:
        bare = _clean(text)
        tree = _parse_python(bare)
        lines = [line for line in bare.splitlines() if line.strip()]
        if tree is not None and _is_program(tree) and len(lines) >= _MIN_UNFENCED_LINES:
            return "", bare
    return text.strip(), None


@dataclass(frozen=True)
class ParsedCode:
    """A coder reply: the plan before the code, the code (None if absent), the reasoning."""

    plan: str
    code: str | None
    reasoning: str


def parse_code_response(content: str, reasoning_content: str | None = None) -> ParsedCode:
    """Strip reasoning with `split_reasoning`, then extract plan and code from what is left."""
    visible, reasoning = split_reasoning(content, reasoning_content)
    plan, code = extract_code(visible)
    return ParsedCode(plan=plan, code=code, reasoning=reasoning)


JUDGE_TOOL: Final[dict[str, Any]] = {
    "type": "function",
    "function": {
        "name": "submit_review",
        "description": "Report whether the solution run has a bug, why, and a one-line summary.",
        "parameters": {
            "type": "object",
            "properties": {
                "is_bug": {
                    "type": "boolean",
                    "description": (
                        "true if the run failed, crashed, timed out, or broke the harness "
                        "contract (no submission.csv or metrics.json, wrong columns, or a "
                        "validation score not computed on held-out data); otherwise false."
                    ),
                },
                "analysis": {
                    "type": "string",
                    "description": (
                        "A few sentences: what went wrong and how to fix it if buggy, else "
                        "what the run shows and what could be tried next."
                    ),
                },
                "summary": {
                    "type": "string",
                    "description": (
                        "One line for the search memory: the approach and its outcome."
                    ),
                },
            },
            "required": ["is_bug", "analysis", "summary"],
            "additionalProperties": False,
        },
    },
}

_TRUE_WORDS: Final = frozenset({"true", "yes"})
_FALSE_WORDS: Final = frozenset({"false", "no"})


def _as_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ValueError(f"judge review: 'is_bug' must be a boolean, got {value!r}")


def _verdict(raw: object) -> JudgeVerdict:
    if not isinstance(raw, dict):
        raise ValueError(f"judge review must be a JSON object, got {type(raw).__name__}")
    missing = [key for key in ("is_bug", "analysis", "summary") if key not in raw]
    if missing:
        raise ValueError(f"judge review is missing field(s): {', '.join(missing)}")
    analysis, summary = raw["analysis"], raw["summary"]
    if not isinstance(analysis, str) or not isinstance(summary, str):
        raise ValueError("judge review: 'analysis' and 'summary' must be strings")
    # Memory keeps the summary as one line.
    one_line = " ".join(summary.split())
    if not one_line:
        raise ValueError("judge review: 'summary' is empty")
    return JudgeVerdict(is_bug=_as_bool(raw["is_bug"]), analysis=analysis.strip(),
                        summary=one_line)


def parse_judge_arguments(arguments: str) -> JudgeVerdict:
    """Parse the JSON arguments of a `submit_review` tool call.

    Extra fields (a metric a model volunteers, say) are ignored. Raises ValueError when the
    text is not JSON, not an object, or lacks a field or has one of the wrong type.
    """
    try:
        raw = json.loads(arguments)
        if isinstance(raw, str):
            # Some servers double-encode tool arguments as a JSON string.
            raw = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"judge tool arguments are not valid JSON: {exc}") from exc
    return _verdict(raw)


def _json_objects(text: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    position = text.find("{")
    while position != -1:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            position = text.find("{", position + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        position = text.find("{", end)
    return found


def parse_judge_text(text: str) -> JudgeVerdict:
    """Parse a judge reply written as text: the first JSON object holding `is_bug`.

    The object may sit in prose or in a ```json fence; `<think>` blocks are searched only if
    the visible text has no object. Strict JSON only (no trailing commas, no single quotes).
    Raises ValueError when no usable object is found.
    """
    visible, reasoning = split_reasoning(text)
    for source in (visible, reasoning):
        objects = _json_objects(source)
        for obj in objects:
            if "is_bug" in obj:
                return _verdict(obj)
        if objects:
            return _verdict(objects[0])
    raise ValueError("judge reply contains no JSON object with is_bug, analysis and summary")
