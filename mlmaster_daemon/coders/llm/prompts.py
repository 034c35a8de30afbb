"""Prompts for the coder operators, the judge and phase summaries, from packaged templates.

Wording lives in `llm/prompts/*.md` (`string.Template` files with `$placeholders`) and model
turn markers in `llm/chat_templates/*.toml`; this module only fills them in. Rendering is strict:
a template placeholder without a value raises ValueError instead of leaking a `$name` into a
prompt. A placeholder alone on its line whose value is empty (the memory section when there is
no memory) is removed together with the blank line after it.

Hardware is passed as a plain string describing what the node may use, for example
"CPU only: 2 cores" or "1x NVIDIA H200 (140 GB), 16 CPU cores"; it is quoted verbatim.

Every free-text field is capped at a fixed size, keeping its head and tail around a marker
saying how much was cut: see the `MAX_*` constants. Callers trim outputs already; the caps only
stop a pathological input from blowing up a prompt.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from string import Template
from typing import Final

from mlmaster_daemon.coders.protocol import CodeRequest
from mlmaster_daemon.models import Operator
from mlmaster_daemon.tasks.spec import Metric, TaskSpec

MAX_DESCRIPTION_CHARS: Final = 20_000
MAX_PREVIEW_CHARS: Final = 8_000
MAX_CODE_CHARS: Final = 50_000
MAX_OUTPUT_CHARS: Final = 8_000
MAX_ERROR_CHARS: Final = 4_000
MAX_MEMORY_CHARS: Final = 16_000
MAX_ENTRIES_CHARS: Final = 40_000
# The reasoning seed restates facts briefly; the full texts are in the user turn already.
SEED_PREVIEW_CHARS: Final = 1_500
SEED_OUTPUT_CHARS: Final = 1_500
SEED_ERROR_CHARS: Final = 1_000
SEED_OUTLINE_LINES: Final = 30

_PACKAGE: Final = "mlmaster_daemon.coders.llm"
_METRIC_NAMES: Final = {
    Metric.ACCURACY: "accuracy",
    Metric.ROC_AUC: "ROC AUC",
    Metric.LOG_LOSS: "log loss",
    Metric.RMSE: "RMSE",
    Metric.MAE: "MAE",
    Metric.RMSLE: "RMSLE",
    Metric.QWK: "quadratic weighted kappa",
    Metric.MAP_AT_K: "MAP@k",
    Metric.F1: "F1",
    Metric.F1_MICRO: "micro-averaged F1",
    Metric.F1_MACRO: "macro-averaged F1",
}
_LONE_PLACEHOLDER = re.compile(
    r"^[ \t]*\$(?:(?P<plain>[_a-z][_a-z0-9]*)|\{(?P<braced>[_a-z][_a-z0-9]*)\})[ \t]*$",
    re.IGNORECASE,
)
_OUTLINE_LINE = re.compile(r"^(?:import |from \S+ import |def |async def |class |if __name__)")
_NO_LIMIT: Final = "no limit given"

Messages = list[dict[str, str]]


def clip(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else its head and tail around a cut marker.

    The result may exceed `limit` by the marker's length (under 60 characters).
    """
    if len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} characters cut ...]\n{text[len(text) - tail:]}"


def _read_text(folder: str, filename: str) -> str:
    path = resources.files(_PACKAGE).joinpath(folder, filename)
    if not path.is_file():
        raise ValueError(f"no packaged file {folder}/{filename}")
    return path.read_text(encoding="utf-8")


def _listing(folder: str, suffix: str) -> list[str]:
    root = resources.files(_PACKAGE).joinpath(folder)
    return sorted(
        entry.name.removesuffix(suffix)
        for entry in root.iterdir()
        if entry.is_file() and entry.name.endswith(suffix)
    )


def template_names() -> list[str]:
    """Names (without `.md`) of every packaged prompt template."""
    return _listing("prompts", ".md")


@cache
def _template(name: str) -> Template:
    template = Template(_read_text("prompts", f"{name}.md"))
    if not template.is_valid():
        raise ValueError(f"prompt template {name}.md has a malformed $ placeholder (use $$ for $)")
    return template


def template_placeholders(name: str) -> list[str]:
    """The placeholder names template `name` uses, in first-use order."""
    return _template(name).get_identifiers()


def render_template(name: str, values: Mapping[str, str]) -> str:
    """Fill template `name` from `values` and strip the result.

    Raises ValueError naming every placeholder with no value; extra values are ignored. A
    placeholder alone on its line whose value is "" is dropped with the blank line after it.
    """
    template = _template(name)
    missing = [key for key in template.get_identifiers() if key not in values]
    if missing:
        raise ValueError(f"prompt template {name}.md needs values for: {', '.join(missing)}")
    kept: list[str] = []
    skip_blank = False
    for line in template.template.split("\n"):
        match = _LONE_PLACEHOLDER.match(line)
        if match and values[match.group("plain") or match.group("braced")] == "":
            skip_blank = True
            continue
        if skip_blank and not line.strip():
            skip_blank = False
            continue
        skip_blank = False
        kept.append(line)
    return Template("\n".join(kept)).substitute(values).strip()


def _fenced(text: str, lang: str = "") -> str:
    """`text` in a code fence longer than any backtick run inside it."""
    runs = [len(run) for run in re.findall(r"`+", text)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def metric_name(metric: Metric) -> str:
    """The metric's usual human name, e.g. "ROC AUC"."""
    return _METRIC_NAMES.get(metric, metric.value)


def task_metric_name(task: TaskSpec) -> str:
    """What the task is scored by: the metric's name, or for a competition's own metric what
    mle-bench's grader computes ("mean Levenshtein distance")."""
    if task.metric is not Metric.COMPETITION:
        return metric_name(task.metric)
    from mlmaster_daemon.tasks import registry

    known = registry.lookup(task.competition_id or "")
    scoring = known.scoring if known is not None else "the competition's metric"
    return f"{scoring} (the competition's own metric, as MLE-bench grades it)"


def format_duration(seconds: float | None) -> str:
    """Human-readable time left: "2 h 05 min", "14 min 30 s", "40 s", or "no limit given"."""
    if seconds is None:
        return _NO_LIMIT
    if seconds <= 0:
        return "none (the search is out of time)"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _task_values(task: TaskSpec) -> dict[str, str]:
    return {
        "task_name": task.name,
        "task_description": clip(task.description.strip(), MAX_DESCRIPTION_CHARS),
        "metric_name": task_metric_name(task),
        "direction": "lower is better" if task.lower_is_better else "higher is better",
        "target": task.target,
        "id_column": task.id_column,
        "train_file": task.train_file,
        "test_file": task.test_file,
        "sample_submission_file": task.sample_submission_file,
    }


def _code_block(code: str | None) -> str:
    return _fenced(clip(code, MAX_CODE_CHARS), "python") if code else "(no code)"


def _output_block(output: str | None) -> str:
    if not output or not output.strip():
        return "(no output was captured)"
    return _fenced(clip(output.strip("\n"), MAX_OUTPUT_CHARS))


def _error_block(error: str | None) -> str:
    if not error or not error.strip():
        return "Nothing beyond the output above."
    return _fenced(clip(error.strip(), MAX_ERROR_CHARS))


def _require(request: CodeRequest) -> None:
    needs_parent = request.operator in (Operator.IMPROVE, Operator.DEBUG, Operator.CROSSOVER)
    if needs_parent and not request.parent_code:
        raise ValueError(f"{request.operator.value} request has no parent_code")
    if request.operator is Operator.CROSSOVER and not request.other_parent_code:
        raise ValueError("crossover request has no other_parent_code")


def validation_plan(folds: int, seed: int) -> str:
    """The task's validation plan in words, for the contract (see `CodeRequest.cv_folds`)."""
    if folds < 2:
        return (f"one 80/20 split, `train_test_split(rows, test_size=0.2, random_state={seed})` "
                "over the training rows in file order (stratified by the target for "
                "classification); `fold_metrics` then holds the one score.")
    return (f"{folds}-fold cross-validation with `StratifiedKFold(n_splits={folds}, "
            f"shuffle=True, random_state={seed})` for classification (`KFold` with the same "
            "arguments for regression, or when a class has fewer rows than folds), split over "
            "the training rows in file order; the validation metric is the score of the "
            "out-of-fold predictions.")


def _operator_values(request: CodeRequest, hardware: str) -> dict[str, str]:
    _require(request)
    values = _task_values(request.task)
    values.update(
        validation_plan=validation_plan(request.cv_folds, request.cv_seed),
        hardware=hardware.strip() or "not specified",
        time_left=format_duration(request.time_left_s),
        steps_left=_NO_LIMIT if request.steps_left is None else str(request.steps_left),
    )
    memory = request.memory_text.strip()
    values.update(
        data_preview_block=_fenced(clip(request.data_preview.strip(), MAX_PREVIEW_CHARS)),
        memory_section=(
            render_template("memory", {"memory_text": clip(memory, MAX_MEMORY_CHARS)})
            if memory
            else ""
        ),
        resources=render_template("resources", values),
        contract=render_template("contract", values),
        response_format=render_template("response_format", values),
        parent_code_block=_code_block(request.parent_code),
        parent_output_block=_output_block(request.parent_output),
        harness_error_block=_error_block(request.parent_error),
        other_code_block=_code_block(request.other_parent_code),
        other_output_block=_output_block(request.other_parent_output),
    )
    return values


def operator_messages(request: CodeRequest, hardware: str) -> Messages:
    """Chat messages (system, then user) asking for one script for `request.operator`.

    The user turn holds the role, task description, data preview, scoped memory (left out
    when `memory_text` is blank), time/steps left, `hardware`, the harness contract and the
    operator's guidance; improve/debug/crossover also include the parent code(s) and outputs,
    debug the harness error. Raises ValueError when a parent the operator needs is missing.
    """
    values = _operator_values(request, hardware)
    return [
        {"role": "system", "content": render_template("system", values)},
        {"role": "user", "content": render_template(request.operator.value, values)},
    ]


def _head_lines(text: str, limit: int) -> str:
    """The first lines of `text` that fit in `limit` characters."""
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit)
    return text[: cut if cut > 0 else limit] + "\n..."


def _tail(text: str | None, limit: int) -> str:
    if not text or not text.strip():
        return "(no output was captured)"
    text = text.strip("\n")
    return _fenced(text if len(text) <= limit else "..." + text[len(text) - limit:])


def _outline(code: str | None) -> str:
    """The script's imports and top-level definitions: a compact restatement of its shape."""
    lines = (code or "").splitlines()
    picked = [line.rstrip() for line in lines if _OUTLINE_LINE.match(line)]
    if not picked:
        picked = [line.rstrip() for line in lines[: SEED_OUTLINE_LINES // 2]]
    if len(picked) > SEED_OUTLINE_LINES:
        picked = [*picked[:SEED_OUTLINE_LINES], "..."]
    return _fenced("\n".join(picked), "python")


def think_seed(request: CodeRequest, hardware: str) -> str:
    """The reasoning seed pre-filled after `<think>` in completion mode.

    In the model's own voice it restates the task, metric and direction, hardware and budget,
    the head of the data preview, and for improve/debug/crossover each parent's outline
    (imports and top-level definitions) and output tail; debug adds the harness error.
    It ends with a newline so the model continues the thought.
    """
    values = _operator_values(request, hardware)
    error = (request.parent_error or "").strip()
    values.update(
        data_summary=_fenced(_head_lines(request.data_preview.strip(), SEED_PREVIEW_CHARS)),
        parent_outline=_outline(request.parent_code),
        parent_output_tail=_tail(request.parent_output, SEED_OUTPUT_CHARS),
        harness_error=clip(error, SEED_ERROR_CHARS) if error else "nothing beyond the output.",
        other_outline=_outline(request.other_parent_code),
        other_output_tail=_tail(request.other_parent_output, SEED_OUTPUT_CHARS),
    )
    return render_template(f"seed_{request.operator.value}", values) + "\n"


@dataclass(frozen=True)
class ChatTemplate:
    """Turn markers of one model family for raw-completion prompts (`chat_templates/*.toml`)."""

    name: str
    description: str
    bos: str
    system_prefix: str
    system_suffix: str
    merge_system_into_user: bool
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    think_open: str


def available_chat_templates() -> list[str]:
    """Names of the packaged chat templates, sorted (e.g. "chatml", "deepseek_r1", "qwen")."""
    return _listing("chat_templates", ".toml")


@cache
def load_chat_template(name: str) -> ChatTemplate:
    """Load `chat_templates/<name>.toml`; unknown names raise ValueError listing the known ones.

    A file missing a key, with an extra key, or a value of the wrong type raises ValueError.
    """
    known = available_chat_templates()
    if name not in known:
        raise ValueError(f"unknown chat template {name!r}; available: {', '.join(known)}")
    raw = tomllib.loads(_read_text("chat_templates", f"{name}.toml"))
    expected = {item.name for item in fields(ChatTemplate)} - {"name"}
    if set(raw) != expected:
        wrong = sorted(set(raw) ^ expected)
        raise ValueError(f"chat template {name}.toml has missing or unknown keys: {wrong}")
    for key, value in raw.items():
        wanted = bool if key == "merge_system_into_user" else str
        if not isinstance(value, wanted):
            raise ValueError(f"chat template {name}.toml: {key} must be a {wanted.__name__}")
    return ChatTemplate(name=name, **raw)


def completion_prompt(request: CodeRequest, hardware: str, template: str) -> str:
    """One raw-completion prompt: the operator messages in `template`'s turn markers, with
    the assistant turn opened and pre-filled with `think_open` plus `think_seed(...)`.

    The model continues the reasoning, closes `</think>` and answers; parse the completion
    with `parse.split_reasoning`, which treats text before a bare `</think>` as reasoning.
    Templates with `merge_system_into_user` put the system text at the top of the user turn.
    Raises ValueError for an unknown template name.
    """
    chat = load_chat_template(template)
    system, user = (message["content"] for message in operator_messages(request, hardware))
    parts = [chat.bos]
    if chat.merge_system_into_user:
        user = f"{system}\n\n{user}"
    else:
        parts += [chat.system_prefix, system, chat.system_suffix]
    parts += [chat.user_prefix, user, chat.user_suffix, chat.assistant_prefix, chat.think_open]
    parts.append(think_seed(request, hardware))
    return "".join(parts)


def judge_messages(
    task: TaskSpec, code: str, output_tail: str, harness_error: str | None
) -> Messages:
    """Chat messages asking the judge for `submit_review` (is_bug, analysis, summary).

    The prompt says the harness measures the metric and knows its direction, so the judge
    reports neither; it also asks for a bare JSON object when tools are unavailable.
    """
    values = _task_values(task)
    values.update(validation_plan="the task's fixed folds (or split) that the prompt named.")
    values.update(
        contract=render_template("contract", values),
        code_block=_code_block(code),
        output_block=_output_block(output_tail),
        harness_error_block=_error_block(harness_error),
    )
    return [
        {"role": "system", "content": render_template("reviewer_system", values)},
        {"role": "user", "content": render_template("judge", values)},
    ]


def summary_messages(entries_text: str, task: TaskSpec) -> Messages:
    """Chat messages asking for a phase summary (what worked, what failed, next plan) of
    `entries_text`, capped at `MAX_ENTRIES_CHARS`, for the memory hierarchy's L2 tier.
    """
    values = _task_values(task)
    entries = entries_text.strip() or "(no attempts were recorded in this phase)"
    values["entries_block"] = _fenced(clip(entries, MAX_ENTRIES_CHARS))
    return [
        {"role": "system", "content": render_template("reviewer_system", values)},
        {"role": "user", "content": render_template("summary", values)},
    ]
