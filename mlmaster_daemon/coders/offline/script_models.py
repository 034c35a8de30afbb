"""Script fragments that fit one member's model on one fold, inside a time limit.

`fit_member(member, X_fit, y_fit, X_val, y_val, native, stop_at)` returns a predict function
and a report (what the fit did: rounds or trees, and why it stopped). LightGBM stops on its
fold's validation rows after `patience` rounds without progress (with no validation rows, a
refit, it runs its `rounds`), and stops adding rounds at `stop_at`; forests and histogram
boosting grow in steps and stop growing at `stop_at`.
"""

from __future__ import annotations

LIGHTGBM = """\

class RoundGuard:
    \"\"\"Early stopping on the fold's validation rows that also stops adding rounds at a
    deadline, keeping the best round so far either way.\"\"\"

    order = 30

    def __init__(self, patience, stop_at):
        self.patience, self.stop_at = patience, stop_at
        self.best, self.best_round, self.results, self.stopped = None, 0, None, "cap"

    def __call__(self, env):
        if not env.evaluation_result_list:
            # A refit on every row has no validation rows: only the deadline stops it.
            self.best_round = env.iteration
            if time.time() >= self.stop_at:
                self.stopped = "time"
                raise lgb.callback.EarlyStopException(self.best_round, [])
            return
        _, _, value, higher_better = env.evaluation_result_list[0][:4]
        score = value if higher_better else -value
        if self.best is None or score > self.best:
            self.best, self.best_round = score, env.iteration
            self.results = env.evaluation_result_list
        elif env.iteration - self.best_round >= self.patience:
            self.stopped = "patience"
            raise lgb.callback.EarlyStopException(self.best_round, self.results)
        if time.time() >= self.stop_at:
            self.stopped = "time"
            raise lgb.callback.EarlyStopException(self.best_round, self.results)


def lightgbm_objective():
    if REGRESSION:
        return {"objective": "regression", "metric": "l1" if METRIC == "mae" else "l2"}
    if N_CLASSES == 2:
        # Log loss also for AUC tasks: rounds chosen on it stop less by chance than on AUC.
        return {"objective": "binary", "metric": "binary_logloss"}
    return {"objective": "multiclass", "num_class": N_CLASSES, "metric": "multi_logloss"}


def fit_lightgbm(member, X_fit, y_fit, X_val, y_val, native, stop_at):
    params = {**lightgbm_objective(), "num_threads": 1, "verbosity": -1, **member["params"]}
    fit_set = lgb.Dataset(X_fit, y_fit, weight=sample_weights(member, y_fit),
                          categorical_feature=native)
    valid = [] if X_val is None else [
        lgb.Dataset(X_val, y_val, reference=fit_set, categorical_feature=native)]
    guard = RoundGuard(member["patience"], stop_at)
    booster = lgb.train(params, fit_set, num_boost_round=member["rounds"],
                        valid_sets=valid, callbacks=[guard])
    rounds = guard.best_round + 1

    def predict(X_out):
        raw = booster.predict(X_out, num_iteration=rounds)
        if REGRESSION:
            return from_model_space(raw)
        return np.column_stack([1.0 - raw, raw]) if N_CLASSES == 2 else raw

    return predict, {"rounds": rounds, "stopped": guard.stopped}


def sample_weights(member, y_fit):
    \"\"\"Balanced class weights when the member asks for them.\"\"\"
    if REGRESSION or not member["class_weight"]:
        return None
    counts = np.bincount(y_fit, minlength=N_CLASSES)
    return len(y_fit) / (N_CLASSES * np.maximum(counts, 1))[y_fit]
"""

SKLEARN = """\

# The estimators that grow: fitted in steps so that a deadline can stop the growth.
GROWN = {"random_forest": "n_estimators", "extra_trees": "n_estimators",
         "hist_gradient_boosting": "max_iter"}


def grow(model, setting, total, X_fit, y_fit, stop_at):
    \"\"\"Fit `model` up to `total` trees or iterations in about eight steps, stopping at
    `stop_at`.\"\"\"
    step = max(10, total // 8)
    grown = 0
    while grown < total:
        grown = min(total, grown + step)
        model.set_params(**{setting: grown, "warm_start": True})
        model.fit(X_fit, y_fit)
        if grown < total and time.time() >= stop_at:
            return {"trees": grown, "stopped": "time"}
    return {"trees": grown, "stopped": "done"}


def fit_sklearn(member, X_fit, y_fit, native, stop_at):
    family, params = member["family"], dict(member["params"])
    if family == "knn":
        # KNN cannot ask for more neighbours than there are training rows.
        params["n_neighbors"] = max(1, min(params["n_neighbors"], X_fit.shape[0] - 1))
    if family == "hist_gradient_boosting" and native:
        params["categorical_features"] = native
    model = ESTIMATORS[family](**params)
    if family in GROWN:
        report = grow(model, GROWN[family], params[GROWN[family]], X_fit, y_fit, stop_at)
    else:
        model.fit(X_fit, y_fit)
        report = {"stopped": "done"}

    def predict(X_out):
        if REGRESSION:
            return from_model_space(model.predict(X_out))
        # A fold may miss a class, so place each model column at its class's position.
        full = np.zeros((X_out.shape[0], N_CLASSES))
        full[:, np.asarray(model.classes_, dtype=int)] = model.predict_proba(X_out)
        return full

    return predict, report
"""


def dispatcher(with_lightgbm: bool, with_sklearn: bool) -> str:
    """`fit_member`, sending each family to the fit function rendered for it."""
    lines = [
        "",
        "def fit_member(member, X_fit, y_fit, X_val, y_val, native, stop_at):",
        '    """Fit `member` on one fold; returns (predict function, report)."""',
    ]
    if with_lightgbm:
        lines.append('    if member["family"] == "lightgbm":')
        lines.append("        return fit_lightgbm(member, X_fit, y_fit, X_val, y_val, native, "
                     "stop_at)")
    if with_sklearn:
        lines.append("    return fit_sklearn(member, X_fit, y_fit, native, stop_at)")
    else:
        lines.append('    raise ValueError(f"unknown model family {member[\'family\']}")')
    return "\n".join(lines) + "\n"
