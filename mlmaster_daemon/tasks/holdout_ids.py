"""Fresh ids for holdout rows that look like a test table's own: integers from the same range,
or text of the same lengths and the same characters at each position."""

from __future__ import annotations

import itertools
import random
import re

from mlmaster_daemon.errors import MlmasterError
from mlmaster_daemon.tasks.labels import normalise_label, normalise_labels

# An id longer than this is not an id a table would hold; refusing it bounds the work.
MAX_ID_CHARS = 256
# Draws per fresh text id before giving up (the id space is then nearly full).
TEXT_ATTEMPTS = 200
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")


class HoldoutError(MlmasterError):
    """The holdout cannot be built or a submission cannot be split (the message says why)."""

    code = "holdout_error"


def _integers(ids: list[str]) -> bool:
    return bool(ids) and all(_INTEGER.fullmatch(i) for i in ids)


def is_sorted(ids: list[str]) -> bool:
    """Whether `ids` are in increasing order (as numbers when they all are integers)."""
    if _integers(ids):
        numbers = [int(i) for i in ids]
        return all(a <= b for a, b in itertools.pairwise(numbers))
    return all(a <= b for a, b in itertools.pairwise(ids))


def id_order(ids: list[str]) -> list[int]:
    """Positions of `ids` in increasing id order (numeric for integers)."""
    if _integers(ids):
        numbers = [int(i) for i in ids]
        return sorted(range(len(ids)), key=lambda p: numbers[p])
    return sorted(range(len(ids)), key=lambda p: ids[p])


def fresh_ids(real: list[str], taken: set[str], count: int, rng: random.Random) -> list[str]:
    """`count` distinct ids like those in `real`, none in `taken`. Raises `HoldoutError` for ids
    too long to imitate or an id space too full to draw from."""
    if not real:
        raise HoldoutError("the test table has no ids to imitate")
    longest = max(len(i) for i in real)
    if longest > MAX_ID_CHARS:
        raise HoldoutError(f"the test table has an id of {longest} characters (more than "
                      f"{MAX_ID_CHARS}): fresh ids cannot be made to look like it")
    if _integers(real):
        return _fresh_integers(real, taken, count, rng)
    return _fresh_text(real, taken, count, rng)


def _fresh_integers(real: list[str], taken: set[str], count: int,
                    rng: random.Random) -> list[str]:
    """Integers between the smallest and largest real id not taken (the gaps), the range
    widened above the largest only when the gaps are too few."""
    used = {int(i) for i in taken if _INTEGER.fullmatch(i)}
    low, high = min(int(i) for i in real), max(int(i) for i in real)
    if min(used, default=low) < low:
        low = min(used)
    high = max(high, max(used, default=high))
    span = high - low + 1
    free = span - len({u for u in used if low <= u <= high})
    if free < count:
        high += count - free
        span = high - low + 1
    if span <= 4 * (len(used) + count) or span <= 1_000_000:
        pool = [n for n in range(low, high + 1) if n not in used]
        return [str(n) for n in rng.sample(pool, count)]
    chosen: set[int] = set()
    picks: list[str] = []
    while len(picks) < count:
        n = rng.randint(low, high)
        if n not in used and n not in chosen:
            chosen.add(n)
            picks.append(str(n))
    return picks


def _fresh_text(real: list[str], taken: set[str], count: int, rng: random.Random) -> list[str]:
    """Text ids with a real id's length and, at each position, a character some real id of
    that length has there."""
    by_length: dict[int, list[set[str]]] = {}
    for ident in real:
        slots = by_length.setdefault(len(ident), [set() for _ in ident])
        for slot, char in zip(slots, ident, strict=True):
            slot.add(char)
    alphabets = {n: [sorted(s) for s in slots] for n, slots in by_length.items()}
    lengths = sorted(len(i) for i in real)
    # Ids are matched in normalised form ("007" is 7): a fresh id may not equal a taken one so.
    seen = set(normalise_labels(list(taken)))
    chosen: set[str] = set()
    picks: list[str] = []
    attempts = 0
    while len(picks) < count:
        attempts += 1
        if attempts > TEXT_ATTEMPTS * count:
            raise HoldoutError(f"cannot draw {count} fresh ids like the test's: its ids leave too "
                          "few unused combinations")
        candidate = "".join(rng.choice(chars) for chars in alphabets[rng.choice(lengths)])
        canonical = normalise_label(candidate)
        if candidate not in taken and canonical not in seen and canonical not in chosen:
            chosen.add(canonical)
            picks.append(candidate)
    return picks
