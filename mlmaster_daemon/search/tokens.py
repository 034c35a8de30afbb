"""The token counter the search's memory is bounded by. Counting is not additive across
concatenation (BPE merges across the seam), so a budget check must count the final rendered text,
never a sum of its parts. The real counter (`mlmaster_daemon.tokenizer`) is passed in.
"""

from __future__ import annotations

from typing import Protocol


class TokenCounter(Protocol):
    """Counts tokens and cuts text to a token budget."""

    def count(self, text: str) -> int:
        """The number of tokens in `text`."""
        ...

    def truncate(self, text: str, max_tokens: int) -> str:
        """A prefix of `text` whose own count is at most `max_tokens` ("" when that is <= 0)."""
        ...
