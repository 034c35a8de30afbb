"""Script fragments that score predictions with the task's metric.

Each defines `evaluate(y_true, pred)`: `y_true` holds class indices (classification) or
values, `pred` is a probability matrix (classification) or a vector of values.
"""

from __future__ import annotations

from mlmaster_daemon.tasks.spec import Metric

EVALUATE: dict[Metric, str] = {
    Metric.ACCURACY: """\
def evaluate(y_true, pred):
    return float(metrics.accuracy_score(y_true, pred.argmax(axis=1)))
""",
    Metric.ROC_AUC: """\
def evaluate(y_true, pred):
    if N_CLASSES == 2:
        return float(metrics.roc_auc_score(y_true, pred[:, 1]))
    return float(
        metrics.roc_auc_score(y_true, pred, multi_class="ovr", labels=list(range(N_CLASSES)))
    )
""",
    Metric.LOG_LOSS: """\
def evaluate(y_true, pred):
    return float(metrics.log_loss(y_true, pred, labels=list(range(N_CLASSES))))
""",
    Metric.RMSE: """\
def evaluate(y_true, pred):
    return float(np.sqrt(metrics.mean_squared_error(y_true, pred)))
""",
    Metric.MAE: """\
def evaluate(y_true, pred):
    return float(metrics.mean_absolute_error(y_true, pred))
""",
    Metric.RMSLE: """\
def evaluate(y_true, pred):
    error = np.log1p(np.clip(pred, 0.0, None)) - np.log1p(np.clip(y_true, 0.0, None))
    return float(np.sqrt(np.mean(error**2)))
""",
    Metric.QWK: """\
def evaluate(y_true, pred):
    kappa = metrics.cohen_kappa_score(
        y_true, pred.argmax(axis=1), weights="quadratic", labels=list(range(N_CLASSES))
    )
    # Kappa is undefined (NaN) when truth and prediction are one class; count that as chance.
    return float(np.nan_to_num(kappa))
""",
    Metric.MAP_AT_K: """\
def evaluate(y_true, pred):
    # One true label per row: its precision at k is 1 / rank when ranked within the top k.
    ranked = np.argsort(-pred, axis=1, kind="stable")[:, :MAP_K]
    hits = ranked == np.asarray(y_true)[:, None]
    return float(np.mean((hits / np.arange(1, ranked.shape[1] + 1)).sum(axis=1)))
""",
    Metric.F1: """\
def evaluate(y_true, pred):
    if N_CLASSES != 2:
        return float(metrics.f1_score(y_true, pred.argmax(axis=1), average="macro"))
    # Classes are sorted, so index 1 is the largest label: the positive class.
    return float(metrics.f1_score(y_true, pred.argmax(axis=1), pos_label=1, zero_division=0))
""",
    Metric.F1_MICRO: """\
def evaluate(y_true, pred):
    present = np.unique(y_true)
    return float(
        metrics.f1_score(
            y_true, pred.argmax(axis=1), labels=present, average="micro", zero_division=0
        )
    )
""",
    Metric.F1_MACRO: """\
def evaluate(y_true, pred):
    present = np.unique(y_true)
    return float(
        metrics.f1_score(
            y_true, pred.argmax(axis=1), labels=present, average="macro", zero_division=0
        )
    )
""",
}
