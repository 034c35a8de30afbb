"""Reply parsing: reasoning split, code extraction, and judge verdicts from tools or text."""

from __future__ import annotations

import json

import pytest

from mlmaster_daemon.coders.llm.parse import (
    JUDGE_TOOL,
    NO_CODE_CORRECTION,
    JudgeVerdict,
    ParsedCode,
    extract_code,
    parse_code_response,
    parse_judge_arguments,
    parse_judge_text,
    split_reasoning,
)

SCRIPT = "import pandas as pd\n\ndf = pd.read_csv('./input/train.csv')\nprint(df.shape)"


def test_complete_think_block_is_stripped_and_kept_as_reasoning() -> None:
    visible, reasoning = split_reasoning("<think>\nweigh options\n</think>\n\nThe plan.")
    assert visible == "The plan."
    assert reasoning == "weigh options"


def test_multiple_think_blocks_are_all_collected_in_order() -> None:
    visible, reasoning = split_reasoning("<think>a</think>one <think>b</think>two")
    assert visible == "one two"
    assert reasoning == "a\n\nb"


def test_unterminated_think_makes_the_rest_reasoning() -> None:
    visible, reasoning = split_reasoning("<think>still thinking when the tokens ran out")
    assert visible == ""
    assert reasoning == "still thinking when the tokens ran out"


def test_bare_close_after_prefilled_think_marks_the_head_as_reasoning() -> None:
    visible, reasoning = split_reasoning("seeded thought continues\n</think>\nPlan here.")
    assert visible == "Plan here."
    assert reasoning == "seeded thought continues"


def test_reasoning_content_is_appended_after_inline_reasoning() -> None:
    visible, reasoning = split_reasoning("<think>inline</think>Answer", "separate")
    assert visible == "Answer"
    assert reasoning == "inline\n\nseparate"
    assert split_reasoning("Answer", "only separate") == ("Answer", "only separate")
    assert split_reasoning("Answer") == ("Answer", "")


def test_plan_is_text_before_first_fence_and_blocks_join_in_order() -> None:
    text = (
        "Plan: load the data.\nThen train.\n\n```python\nimport os\n```\n"
        "Some words.\n```py\nx = 1\n```\n```\ny = x + 1\n```\n"
    )
    plan, code = extract_code(text)
    assert plan == "Plan: load the data.\nThen train."
    assert code == "import os\n\nx = 1\n\ny = x + 1"


def test_non_compiling_blocks_are_skipped_when_one_compiles() -> None:
    text = "Plan.\n```python\ndef broken(:\n```\n```python\nprint('ok')\n```"
    plan, code = extract_code(text)
    assert code == "print('ok')"
    # The plan stops at the first block actually used.
    assert plan.startswith("Plan.")


def test_python_block_is_kept_even_if_none_compiles() -> None:
    _, code = extract_code("Plan.\n```python\ndef broken(:\n    pass\n```")
    assert code == "def broken(:\n    pass"


def test_other_languages_and_lone_values_in_bare_fences_are_not_code() -> None:
    text = "Run:\n```bash\npip install x\n```\nScore:\n```\n0.85\n```\n```text\na = 1\n```"
    plan, code = extract_code(text)
    assert code is None
    assert plan == text.strip()


def test_no_code_gives_none_and_the_whole_text_as_plan() -> None:
    text = "  I would use a random forest.  "
    assert extract_code(text) == ("I would use a random forest.", None)


def test_unfenced_reply_counts_as_code_only_if_it_is_a_real_program() -> None:
    assert extract_code(SCRIPT) == ("", SCRIPT)
    short = "import os\nprint(os.getcwd())"
    assert extract_code(short) == (short, None)


def test_unclosed_final_fence_still_yields_code() -> None:
    _, code = extract_code("Plan.\n```python\nimport os\nprint(1)\n")
    assert code == "import os\nprint(1)"


def test_longer_fences_and_indented_fences_are_handled() -> None:
    text = "Plan.\n````python\ns = '''```'''\n````\n  ```python\n  print(s)\n  ```"
    _, code = extract_code(text)
    assert code == "s = '''```'''\n\nprint(s)"


def test_parse_code_response_combines_both_steps() -> None:
    content = "<think>hmm</think>\nA baseline.\n```python\nprint(1)\n```"
    assert parse_code_response(content, "more") == ParsedCode(
        plan="A baseline.", code="print(1)", reasoning="hmm\n\nmore"
    )
    # Code that only appears inside reasoning is not an answer.
    assert parse_code_response("<think>```python\nprint(1)\n```</think>No code.").code is None


def test_no_code_correction_asks_for_a_python_block() -> None:
    assert "```python" in NO_CODE_CORRECTION


def test_judge_tool_schema_has_exactly_the_three_required_fields() -> None:
    function = JUDGE_TOOL["function"]
    assert JUDGE_TOOL["type"] == "function"
    assert function["name"] == "submit_review"
    params = function["parameters"]
    assert set(params["properties"]) == {"is_bug", "analysis", "summary"}
    assert sorted(params["required"]) == ["analysis", "is_bug", "summary"]
    assert "metric" not in json.dumps(params["properties"]).replace("metrics.json", "")


def test_judge_arguments_parse_and_normalise_the_summary() -> None:
    args = json.dumps({"is_bug": True, "analysis": " KeyError on 'b'. ",
                       "summary": "LightGBM\ncrashed: missing column", "metric": 0.9})
    assert parse_judge_arguments(args) == JudgeVerdict(
        is_bug=True, analysis="KeyError on 'b'.", summary="LightGBM crashed: missing column"
    )
    assert parse_judge_arguments(json.dumps(args)).is_bug is True
    lenient = json.dumps({"is_bug": "false", "analysis": "", "summary": "fine"})
    assert parse_judge_arguments(lenient).is_bug is False


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"is_bug": true, "analysis": "x"}', "summary"),
        ('{"is_bug": "maybe", "analysis": "x", "summary": "y"}', "is_bug"),
        ('{"is_bug": false, "analysis": 3, "summary": "y"}', "strings"),
        ('{"is_bug": false, "analysis": "x", "summary": "  "}', "empty"),
    ],
)
def test_malformed_judge_arguments_raise_value_error(arguments: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_judge_arguments(arguments)


def test_judge_text_fallback_finds_json_in_prose_and_fences() -> None:
    body = '{"is_bug": false, "analysis": "Ran cleanly.", "summary": "RF baseline ok"}'
    expected = JudgeVerdict(is_bug=False, analysis="Ran cleanly.", summary="RF baseline ok")
    assert parse_judge_text(f"Here is my review: {body} Hope it helps.") == expected
    assert parse_judge_text(f"Review:\n```json\n{body}\n```\n") == expected
    assert parse_judge_text(f"<think>{{\"draft\": 1}}</think>{{not json}} {body}") == expected
    assert parse_judge_text(f"<think>only here: {body}") == expected


def test_judge_text_without_usable_json_raises_value_error() -> None:
    with pytest.raises(ValueError, match="no JSON object"):
        parse_judge_text("The run looks fine to me.")
    with pytest.raises(ValueError, match="missing"):
        parse_judge_text('{"verdict": "ok"}')
    with pytest.raises(ValueError, match="no JSON object"):
        parse_judge_text('{"is_bug": false, "analysis": "x", "summary": "y",}')
