"""Prompt rendering: required sections, the harness contract, strict templates, chat templates."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from mlmaster_daemon.coders.llm import prompts
from mlmaster_daemon.coders.protocol import CodeRequest
from mlmaster_daemon.models import Operator
from mlmaster_daemon.tasks.spec import Metric, TaskSpec

HARDWARE = "1x NVIDIA H200 (140 GB), 16 CPU cores"
LEFTOVER = re.compile(r"\$(?:[_a-zA-Z]|\{)")

TASK = TaskSpec(
    name="spaceship-titanic",
    root=Path("/tasks/spaceship"),
    public_dir=Path("/tasks/spaceship/public"),
    private_dir=None,
    description="Predict which passengers were transported to another dimension.",
    metric=Metric.LOG_LOSS,
    lower_is_better=True,
    target="Transported",
    id_column="PassengerId",
    train_file="train_v2.csv",
    test_file="test_v2.csv",
    sample_submission_file="sample_sub.csv",
)
PARENT = "import pandas as pd\n\n\ndef main():\n    df = pd.read_csv('./input/train_v2.csv')\n"
OTHER = "import numpy as np\n\n\nclass Model:\n    pass\n"


def request(operator: Operator, **changes: object) -> CodeRequest:
    base = CodeRequest(
        operator=operator,
        task=TASK,
        node_id=7,
        cv_folds=5,
        cv_seed=4242,
        data_preview="Files:\n  train_v2.csv (1.2 MB)\nColumns: PassengerId, Age, Transported",
        parent_code=PARENT,
        parent_output="fold 1 logloss 0.45\nPARENT-OUTPUT-TAIL",
        parent_error="KeyError: 'Cabin'",
        other_parent_code=OTHER,
        other_parent_output="OTHER-OUTPUT-TAIL",
        memory_text="- node 3 (draft): random forest, logloss 0.50",
        steps_left=42,
        time_left_s=2 * 3600 + 5 * 60,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def user_prompt(operator: Operator, **changes: object) -> str:
    messages = prompts.operator_messages(request(operator, **changes), HARDWARE)
    assert [m["role"] for m in messages] == ["system", "user"]
    return messages[1]["content"]


@pytest.mark.parametrize("operator", list(Operator))
def test_operator_prompt_has_every_section_and_the_contract(operator: Operator) -> None:
    text = user_prompt(operator)
    for needle in [
        "# Introduction",
        TASK.description,
        "Columns: PassengerId, Age, Transported",
        "# Memory",
        "random forest, logloss 0.50",
        "2 h 05 min",
        "42",
        HARDWARE,
        "`python solution.py`",
        "./input/train_v2.csv",
        "./input/test_v2.csv",
        "./input/sample_sub.csv",
        "`Transported`",
        "`PassengerId`",
        "./submission/submission.csv",
        '`./metrics.json` as\n  `{"validation_metric": <float>, "fold_metrics": [',
        "StratifiedKFold(n_splits=5, shuffle=True, random_state=4242)",
        "**log loss** (lower is better)",
        "./working/",
        "One self-contained file",
        "Print progress",
        "3-5 sentences",
        "ONE fenced ```python block",
    ]:
        assert needle in text, f"{operator.value} prompt lacks {needle!r}"
    assert not LEFTOVER.search(text)


def test_operator_specific_material_is_included() -> None:
    draft = user_prompt(Operator.DRAFT)
    assert "baseline" in draft and "different approach" in draft
    assert "PARENT-OUTPUT-TAIL" not in draft and "def main" not in draft

    improve = user_prompt(Operator.IMPROVE)
    assert "exactly one atomic change" in improve
    assert "def main():" in improve and "PARENT-OUTPUT-TAIL" in improve

    debug = user_prompt(Operator.DEBUG)
    assert "Fix the bug" in debug
    assert "def main():" in debug and "PARENT-OUTPUT-TAIL" in debug and "KeyError: 'Cabin'" in debug

    crossover = user_prompt(Operator.CROSSOVER)
    assert "strengths of both" in crossover
    for needle in ("def main():", "PARENT-OUTPUT-TAIL", "class Model:", "OTHER-OUTPUT-TAIL"):
        assert needle in crossover


@pytest.mark.parametrize("operator", list(Operator))
def test_empty_memory_is_omitted_cleanly(operator: Operator) -> None:
    text = user_prompt(operator, memory_text="  \n")
    assert "# Memory" not in text
    # The dropped section leaves no extra blank lines before the next heading.
    assert "\n\n\n# " not in text
    assert "\n\n# Resources" in text


def test_unknown_time_and_steps_read_as_unlimited() -> None:
    text = user_prompt(Operator.DRAFT, time_left_s=None, steps_left=None)
    assert "Time left for the whole search: no limit given" in text
    assert "attempts left in the search: no limit given" in text


def test_missing_parents_raise_value_error() -> None:
    with pytest.raises(ValueError, match="parent_code"):
        prompts.operator_messages(request(Operator.IMPROVE, parent_code=None), HARDWARE)
    with pytest.raises(ValueError, match="other_parent_code"):
        prompts.operator_messages(request(Operator.CROSSOVER, other_parent_code=None), HARDWARE)


def test_long_fields_are_capped_head_and_tail() -> None:
    huge = "HEAD" + "x" * (prompts.MAX_OUTPUT_CHARS * 3) + "TAIL"
    text = user_prompt(Operator.IMPROVE, parent_output=huge)
    assert "HEAD" in text and "TAIL" in text and "characters cut" in text
    assert len(text) < prompts.MAX_OUTPUT_CHARS + 10_000


def test_code_containing_fences_gets_a_longer_fence() -> None:
    text = user_prompt(Operator.DEBUG, parent_code="s = '''\n```\n'''\nprint(s)\n")
    assert "````python\ns = '''" in text


def test_format_duration() -> None:
    assert prompts.format_duration(45) == "45 s"
    assert prompts.format_duration(14 * 60 + 30) == "14 min 30 s"
    assert prompts.format_duration(3 * 3600 + 60) == "3 h 01 min"
    assert prompts.format_duration(0).startswith("none")


def test_every_template_renders_fully_and_missing_values_raise() -> None:
    names = prompts.template_names()
    for required in ("system", "draft", "improve", "debug", "crossover", "judge", "summary"):
        assert required in names
    for name in names:
        placeholders = prompts.template_placeholders(name)
        rendered = prompts.render_template(name, {key: "filled" for key in placeholders})
        assert not LEFTOVER.search(rendered), name
        if placeholders:
            with pytest.raises(ValueError, match=placeholders[0]):
                prompts.render_template(name, {key: "x" for key in placeholders[1:]})


def test_values_containing_dollars_are_not_expanded() -> None:
    text = user_prompt(Operator.IMPROVE, parent_code="price = '$task_name'\nprint(price)\n")
    assert "price = '$task_name'" in text


@pytest.mark.parametrize("template", ["chatml", "deepseek_r1", "qwen"])
@pytest.mark.parametrize("operator", list(Operator))
def test_completion_prompt_ends_with_assistant_turn_and_think_seed(
    template: str, operator: Operator
) -> None:
    assert template in prompts.available_chat_templates()
    chat = prompts.load_chat_template(template)
    req = request(operator)
    prompt = prompts.completion_prompt(req, HARDWARE, template)
    seed = prompts.think_seed(req, HARDWARE)
    assert prompt.endswith(chat.assistant_prefix + chat.think_open + seed)
    assert "<think>" in chat.think_open
    assert prompt.startswith(chat.bos + (chat.user_prefix if chat.merge_system_into_user
                                         else chat.system_prefix))
    assert TASK.description in prompt and "./metrics.json" in prompt
    assert not LEFTOVER.search(prompt)
    for needle in ("spaceship-titanic", "log loss (lower is better)", "train_v2.csv", HARDWARE):
        assert needle in seed
    if operator is not Operator.DRAFT:
        assert "import pandas as pd" in seed and "PARENT-OUTPUT-TAIL" in seed
    if operator is Operator.DEBUG:
        assert "KeyError: 'Cabin'" in seed
    if operator is Operator.CROSSOVER:
        assert "class Model:" in seed and "OTHER-OUTPUT-TAIL" in seed


def test_unknown_chat_template_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="available: chatml, deepseek_r1, qwen"):
        prompts.completion_prompt(request(Operator.DRAFT), HARDWARE, "llama9")


def test_judge_prompt_leaves_metric_to_the_harness() -> None:
    system, user = prompts.judge_messages(TASK, PARENT, "JUDGE-OUTPUT", "exit code 1")
    assert system["role"] == "system" and user["role"] == "user"
    text = user["content"]
    for needle in (PARENT.strip(), "JUDGE-OUTPUT", "exit code 1", "submit_review", "`is_bug`",
                   "`analysis`", "`summary`", "Do not report the metric's value or its direction",
                   "./input/sample_sub.csv"):
        assert needle in text
    assert not LEFTOVER.search(text)
    clean = prompts.judge_messages(TASK, PARENT, "", None)[1]["content"]
    assert "Nothing beyond the output above." in clean and "(no output was captured)" in clean


def test_summary_prompt_asks_what_worked_failed_and_next() -> None:
    system, user = prompts.summary_messages("1. draft: LightGBM, logloss 0.41", TASK)
    assert system["role"] == "system"
    text = user["content"]
    for needle in ("LightGBM, logloss 0.41", "What worked", "What failed", "Next plan",
                   "log loss", "lower is better", "spaceship-titanic"):
        assert needle in text
    assert not LEFTOVER.search(text)


def test_the_contract_names_the_tasks_single_split_when_folds_are_off() -> None:
    text = user_prompt(Operator.DRAFT, cv_folds=0, cv_seed=77)
    assert "train_test_split(rows, test_size=0.2, random_state=77)" in text
    assert "StratifiedKFold" not in text
