"""Fixed fragments of the scripts the offline coder writes; `render.py` stitches them.

Each fragment is top-level script code that relies on the names set by earlier fragments
(`train`, `test`, `sample`, `X`, `X_te`, `y`, `build_model`, ...).
"""

from __future__ import annotations

from mlmaster_daemon.tasks.spec import Metric

LOAD = """\
started = time.time()
os.makedirs("submission", exist_ok=True)
os.makedirs("working", exist_ok=True)

train = pd.read_csv(TRAIN_PATH)
test = pd.read_csv(TEST_PATH)
sample = pd.read_csv(SAMPLE_PATH)
train = train[train[TARGET].notna()].reset_index(drop=True)
print(f"loaded train {train.shape}, test {test.shape}, sample {sample.shape}")
"""

FEATURES: dict[str, str] = {
    "base": """\
features = [c for c in train.columns if c not in (TARGET, ID_COL) and c in test.columns]
categorical = [c for c in features if not pd.api.types.is_numeric_dtype(train[c])]
numeric = [c for c in features if c not in categorical]
X_train = train[features].copy()
X_test = test[features].copy()
print(f"{len(numeric)} numeric and {len(categorical)} categorical features")
""",
    "engineering": """\
for frame in (X_train, X_test):
    frame["fe_missing_count"] = frame[features].isna().sum(axis=1).astype(float)
    if len(numeric) >= 2:
        frame["fe_row_mean"] = frame[numeric].mean(axis=1)
        frame["fe_row_std"] = frame[numeric].std(axis=1)
        frame["fe_row_min"] = frame[numeric].min(axis=1)
        frame["fe_row_max"] = frame[numeric].max(axis=1)
""",
    "encode": """\
for col in categorical:
    # Codes come from train and test together so unseen test categories still get a code.
    seen = pd.concat([X_train[col], X_test[col]]).dropna().astype(str)
    mapping = {value: float(code) for code, value in enumerate(sorted(seen.unique()))}
    X_train[col] = pd.to_numeric(X_train[col].astype(str).map(mapping), errors="coerce")
    X_test[col] = pd.to_numeric(X_test[col].astype(str).map(mapping), errors="coerce")
""",
    "indicators": """\
for col in [c for c in features if X_train[c].isna().any() or X_test[c].isna().any()]:
    X_train[f"missing_{col}"] = X_train[col].isna().astype(float)
    X_test[f"missing_{col}"] = X_test[col].isna().astype(float)
""",
    "impute": """\
filled = list(X_train.select_dtypes("number").columns)
medians = X_train[filled].median()
X_train[filled] = X_train[filled].fillna(medians).fillna(0.0)
X_test[filled] = X_test[filled].fillna(medians).fillna(0.0)
""",
    "matrix": """\
X = X_train.to_numpy(dtype=float)
X_te = X_test.to_numpy(dtype=float)
print(f"feature matrix {X.shape}")
""",
    "scale": """\
# Unsupervised scaling fitted on all labelled rows; the leak into validation is negligible.
scaler = StandardScaler().fit(X)
X = scaler.transform(X)
X_te = scaler.transform(X_te)
print("features standardised")
""",
}

TARGET: dict[bool, str] = {
    False: """\
labels = sorted(set(train[TARGET].tolist()))
classes = [int(c) if isinstance(c, float) and c.is_integer() else c for c in labels]
class_index = {label: i for i, label in enumerate(classes)}
label_position = {str(label): i for i, label in enumerate(classes)}
N_CLASSES = len(classes)
y = np.array([class_index[label] for label in train[TARGET].tolist()], dtype=int)
counts = np.bincount(y, minlength=N_CLASSES)
print(f"{N_CLASSES} classes: {dict(zip(map(str, classes), counts.tolist()))}")
""",
    True: """\
y = train[TARGET].to_numpy(dtype=float)
print(f"target mean {y.mean():.4f}, std {y.std():.4f}")
""",
}

PREDICT: dict[bool, str] = {
    False: """\

def predict(model, X_out):
    # A fold may miss a class, so place each model column at its class's position.
    proba = model.predict_proba(X_out)
    full = np.zeros((len(X_out), N_CLASSES))
    full[:, np.asarray(model.classes_, dtype=int)] = proba
    return full


def can_stratify(y_part, n_splits):
    return np.bincount(y_part, minlength=N_CLASSES).min() >= n_splits
""",
    True: """\

def predict(model, X_out):
    return model.predict(X_out)


def can_stratify(y_part, n_splits):
    return False
""",
}

_FIT_PREDICT = """\

def fit_predict(X_fit, y_fit, outputs):
    \"\"\"Fit every model in MODELS; average their predictions for each matrix.\"\"\"
    sums = [0.0 for _ in outputs]
    for name in MODELS:
        model = build_model(name, len(X_fit))
        model.fit(X_fit, y_fit)
        for i, X_out in enumerate(outputs):
            sums[i] = sums[i] + predict(model, X_out)
    return [total / len(MODELS) for total in sums]


"""

_METRIC_CODE: dict[Metric, str] = {
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
predict_unclipped = predict


def predict(model, X_out):
    # RMSLE rejects negative predictions, and 0 is nearer any non-negative answer in log space.
    return np.clip(predict_unclipped(model, X_out), 0.0, None)


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
MAP_K = globals().get("MAP_K", 5)


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
EVALUATE: dict[Metric, str] = {metric: _FIT_PREDICT + code for metric, code in _METRIC_CODE.items()}

HOLDOUT = """\

rows = np.arange(len(X))
stratify = y if can_stratify(y, 2) else None
fit_rows, val_rows = train_test_split(rows, test_size=0.2, random_state=SEED, stratify=stratify)
(val_pred,) = fit_predict(X[fit_rows], y[fit_rows], [X[val_rows]])
score = evaluate(y[val_rows], val_pred)
print(f"holdout {METRIC}: {score:.6f}")
np.save(os.path.join("working", "holdout_predictions.npy"), val_pred)
# Refit on every labelled row so the submission benefits from the holdout rows too.
(test_pred,) = fit_predict(X, y, [X_te])
"""

KFOLD = """\

if can_stratify(y, N_FOLDS):
    splitter = StratifiedKFold(n_splits=N_FOLDS, shuffle=True, random_state=SEED)
else:
    splitter = KFold(n_splits=N_FOLDS, shuffle=True, random_state=SEED)
oof = None
test_pred = 0.0
for fold, (fit_rows, val_rows) in enumerate(splitter.split(X, y)):
    val_pred, fold_test = fit_predict(X[fit_rows], y[fit_rows], [X[val_rows], X_te])
    if oof is None:
        oof = np.zeros((len(X),) + val_pred.shape[1:])
    oof[val_rows] = val_pred
    test_pred = test_pred + fold_test / N_FOLDS
    print(f"fold {fold + 1}/{N_FOLDS} done")
score = evaluate(y, oof)
print(f"{N_FOLDS}-fold out-of-fold {METRIC}: {score:.6f}")
np.save(os.path.join("working", "oof_predictions.npy"), oof)
"""

SUBMISSION_TAIL = """\
submission = submission[list(sample.columns)]
submission.to_csv(os.path.join("submission", "submission.csv"), index=False)
with open("metrics.json", "w") as handle:
    json.dump({"validation_metric": float(score)}, handle)
print(f"wrote {len(submission)} submission rows in {time.time() - started:.1f}s")
print(f"validation_metric={score:.6f}")
"""
