"""Labels and ids in one canonical text form, so that `1`, `1.0`, `"1"` and `True` are the
same label whichever way a CSV reader typed them."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

_TRUE_TEXT = ("True", "TRUE", "true")
_FALSE_TEXT = ("False", "FALSE", "false")


def normalise_label(value: Any) -> str:
    """Canonical text of a label or id.

    Whole numbers (int, float or numeric text) become integer text (`1.0` -> `"1"`), other
    numbers their shortest float text, booleans and the texts pandas reads as booleans
    (`True`, `true`, `TRUE`, ...) `"1"`/`"0"` (True == 1 in scikit-learn's comparisons), other
    text is stripped. Missing values become `""`.
    """
    if isinstance(value, str):
        return text_label(value.strip())
    # Here, not at the top: the daemon imports this module, and idle it needs no numpy/pandas.
    import numpy as np
    import pandas as pd

    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    # exact for integers beyond 2**53, where a float round trip would merge distinct ids
    if isinstance(value, int | np.integer):
        return str(int(value))
    if value is None or (np.ndim(value) == 0 and bool(pd.isna(value))):
        return ""
    if isinstance(value, float | np.floating):
        return _number_text(float(value))
    return str(value).strip()


def normalise_labels(values: Iterable[Any]) -> list[str]:
    """`normalise_label` applied to each value."""
    return [normalise_label(value) for value in values]


def sort_labels(labels: Iterable[str]) -> list[str]:
    """Unique labels sorted numerically when all are numbers, else as text."""
    unique = set(labels)
    try:
        return sorted(unique, key=float)
    except ValueError:
        return sorted(unique)


def text_label(text: str) -> str:
    """`normalise_label` of text already stripped."""
    if text in _TRUE_TEXT or text in _FALSE_TEXT:
        return "1" if text in _TRUE_TEXT else "0"
    try:
        return str(int(text))
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return _number_text(number)


def _number_text(number: float) -> str:
    if not math.isfinite(number):
        return repr(number)
    if number.is_integer():
        return str(int(number))
    return repr(number)
