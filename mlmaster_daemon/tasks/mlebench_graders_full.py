"""mle-bench's graders of some competitions of the full benchmark beyond Lite (medium and high
splits), reproduced as `mlebench_graders` reproduces Lite's: same checks, same refusals, the
same scikit-learn calls on the frames pandas read."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.mlebench_graders import (
    Grader,
    accuracy_values,
    floats,
    one_hot_log_loss_inputs,
    require,
    same_length,
)


def _ids_match_sorted(sub: pd.DataFrame, ans: pd.DataFrame,
                      id_column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both sorted by id; refused unless the ids agree row by row (and so in number)."""
    s = sub.sort_values(id_column).reset_index(drop=True)
    a = ans.sort_values(id_column).reset_index(drop=True)
    if len(s) != len(a) or (s[id_column].to_numpy() != a[id_column].to_numpy()).any():
        raise GradingError(f"the submission's {id_column} values are not the answers' ids")
    return s, a


def _same_ids(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str) -> None:
    if set(sub[id_column]) != set(ans[id_column]):
        raise GradingError(f"the submission's {id_column} values are not the answers' ids")


def _rmse_within_1_100(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                       targets: tuple[str, ...]) -> float:
    """petfinder-pawpularity-score: every prediction within [1, 100], then RMSE by id."""
    target = targets[0]
    require(sub, (id_column, target))
    if not pd.to_numeric(sub[target], errors="coerce").between(1, 100).all():
        raise GradingError(f"submission column {target!r} must hold numbers from 1 to 100")
    s, a = _ids_match_sorted(sub, ans, id_column)
    truth, guess = floats(a[target], target), floats(s[target], target)
    return float(np.sqrt(np.mean((truth - guess) ** 2)))


def _mae_merged_rounded(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                        targets: tuple[str, ...]) -> float:
    """predict-volcanic-eruptions: the same set of ids, rows joined on the id, the mean
    absolute error rounded to a whole number."""
    target = targets[0]
    require(sub, (target, id_column))
    _same_ids(sub, ans, id_column)
    merged = ans.merge(sub[[id_column, target]], on=id_column, suffixes=("_true", "_pred"))
    truth = floats(merged[f"{target}_true"], f"answers column {target!r}")
    guess = floats(merged[f"{target}_pred"], f"submission column {target!r}")
    return float(round(float(np.mean(np.abs(truth - guess)))))


def _qwk_sorted_by_id(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                      targets: tuple[str, ...]) -> float:
    """learning-agency-lab-automated-essay-scoring-2: quadratic kappa on rows paired by id."""
    from sklearn.metrics import cohen_kappa_score

    target = targets[0]
    require(sub, (target, id_column))
    if sub.empty:
        raise GradingError("the submission has no rows")
    s, a = _ids_match_sorted(sub, ans, id_column)
    guess, truth = s[target].to_numpy(), a[target].to_numpy()
    accuracy_values(truth, guess)  # the label checks scikit-learn makes
    return float(cohen_kappa_score(guess, truth, weights="quadratic"))


def _as_int(values: pd.Series, who: str) -> list[int]:
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError, OverflowError):
        raise GradingError(f"the {who} labels must be whole numbers") from None


def _f1_macro_int(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                  targets: tuple[str, ...]) -> float:
    """herbarium, iwildcam-2019: labels cast to int, macro F1 over every label either side
    uses."""
    from sklearn.metrics import f1_score

    target = targets[0]
    same_length(sub, ans)
    require(sub, (id_column, target))
    s, a = _ids_match_sorted(sub, ans, id_column)
    truth, guess = _as_int(a[target], "answers'"), _as_int(s[target], "submission's")
    return float(f1_score(truth, guess, average="macro", zero_division=0))


def _average_precision(actual: set[str], predicted: list[str], k: int) -> float:
    predicted = predicted[:k]
    score = 0.0
    hits = 0
    for rank, label in enumerate(predicted):
        if label in actual and label not in predicted[:rank]:
            hits += 1
            score += hits / (rank + 1)
    return score / min(len(actual), k) if actual else 0.0


def _map_at_k(s: pd.DataFrame, a: pd.DataFrame, target: str, k: int) -> float:
    """mean AP@k, labels split on single spaces of the values' text (pandas 2's astype(str))."""
    def split(values: pd.Series) -> list[list[str]]:
        return [("nan" if pd.isna(v) else str(v)).split(" ") for v in values.tolist()]

    actual = [set(labels) for labels in split(a[target])]
    guesses = split(s[target])
    return float(np.mean([_average_precision(t, p, k)
                          for t, p in zip(actual, guesses, strict=False)]))


def _map_at_5_same_ids(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                       targets: tuple[str, ...]) -> float:
    """hotel-id-2021-fgvc8: the same set of ids and rows, MAP@5."""
    require(sub, (id_column, targets[0]))
    _same_ids(sub, ans, id_column)
    same_length(sub, ans)
    s = sub.sort_values(id_column).reset_index(drop=True)
    a = ans.sort_values(id_column).reset_index(drop=True)
    return _map_at_k(s, a, targets[0], 5)


def _map_at_5_exact_columns(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                            targets: tuple[str, ...]) -> float:
    """whale-categorization-playground: exactly the id and label columns, MAP@5."""
    if set(sub.columns) != {id_column, targets[0]}:
        raise GradingError(f"the submission's columns must be exactly {id_column} and "
                           f"{targets[0]}")
    same_length(sub, ans)
    _same_ids(sub, ans, id_column)
    s = sub.sort_values(id_column).reset_index(drop=True)
    a = ans.sort_values(id_column).reset_index(drop=True)
    return _map_at_k(s, a, targets[0], 5)


def _map_at_12_superset(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                        targets: tuple[str, ...]) -> float:
    """h-and-m: exactly the two columns, every answered customer present (others ignored),
    MAP@12."""
    if set(sub.columns) != {id_column, targets[0]}:
        raise GradingError(f"the submission's columns must be exactly {id_column} and "
                           f"{targets[0]}")
    if not set(sub[id_column]) >= set(ans[id_column]):
        raise GradingError(f"every {id_column} of the answers needs a row")
    kept = sub[sub[id_column].isin(ans[id_column])]
    s = kept.sort_values(id_column).reset_index(drop=True)
    a = ans.sort_values(id_column).reset_index(drop=True)
    return _map_at_k(s, a, targets[0], 12)


def _one_hot_log_loss_rounded_sum(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                                  targets: tuple[str, ...]) -> float:
    """lmsys-chatbot-arena: class probabilities in [0, 1] whose rows sum to 1 once rounded to
    6 decimals, then log loss on the one-hot answers."""
    columns = [id_column, *targets]
    require(sub, columns)
    same_length(sub, ans)
    values = sub[list(targets)]
    if not ((values >= 0) & (values <= 1)).all().all():
        raise GradingError("every class probability must lie in [0, 1]")
    if not values.sum(axis=1).round(6).eq(1).all():
        raise GradingError("each row's class probabilities must sum to 1 (to 6 decimals)")
    _ids_match_sorted(sub[columns], ans[columns], id_column)
    return one_hot_log_loss_inputs(sub[columns], ans[columns], id_column, targets)


GRADERS: dict[str, Grader] = {
    "rmse_within_1_100": _rmse_within_1_100,
    "mae_merged_rounded": _mae_merged_rounded,
    "qwk_sorted_by_id": _qwk_sorted_by_id,
    "f1_macro_int": _f1_macro_int,
    "map_at_5_same_ids": _map_at_5_same_ids,
    "map_at_5_exact_columns": _map_at_5_exact_columns,
    "map_at_12_superset": _map_at_12_superset,
    "one_hot_log_loss_rounded_sum": _one_hot_log_loss_rounded_sum,
}
