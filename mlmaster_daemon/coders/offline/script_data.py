"""Script fragments that read the task's files: the tables, each column's kind, the target.

Each fragment is top-level script code relying on names set by the constants and earlier
fragments; `render.py` stitches them in order.
"""

from __future__ import annotations

LOAD = """\
os.makedirs("submission", exist_ok=True)
os.makedirs("working", exist_ok=True)
train = pd.read_csv(TRAIN_PATH)
test = pd.read_csv(TEST_PATH)
sample = pd.read_csv(SAMPLE_PATH)
train = train[train[TARGET].notna()].reset_index(drop=True)
print(f"loaded train {train.shape}, test {test.shape}, sample {sample.shape}")
"""

COLUMNS = """\
# A date looks like 2021-03-04, 04/03/2021 or 2021.03.04, maybe followed by a time.
DATE_PATTERN = r"\\d{1,4}[-/.]\\d{1,2}[-/.]\\d{1,4}(?:[ T]\\d{1,2}:\\d{2}.*)?"
features = [c for c in train.columns if c not in (TARGET, ID_COL) and c in test.columns]
# Train and test together, so unsupervised steps (codes, TF-IDF vocabularies) see every value.
both = pd.concat([train[features], test[features]], ignore_index=True)
N_TRAIN = len(train)


def column_kind(values):
    \"\"\"numeric, date, text or categorical, judged on up to 1000 present values.\"\"\"
    if pd.api.types.is_numeric_dtype(values):
        return "numeric"
    present = values.dropna().astype(str)
    probe = present.sample(min(len(present), 1000), random_state=0)
    if len(probe) == 0:
        return "categorical"
    if probe.str.fullmatch(DATE_PATTERN).mean() > 0.9:
        return "date"
    if probe.str.split().str.len().mean() >= 3 and present.nunique() >= 0.3 * len(present):
        return "text"
    return "categorical"


kinds = {col: column_kind(both[col]) for col in features}
numeric = [c for c in features if kinds[c] == "numeric"]
categorical = [c for c in features if kinds[c] == "categorical"]
dates = [c for c in features if kinds[c] == "date"]
texts = [c for c in features if kinds[c] == "text"]
missing = [c for c in features if both[c].isna().any()]
# Machine-readable lines (here and `member=`) tell the next node what this one found.
FACTS = [
    f"columns: rows={N_TRAIN} numeric={len(numeric)} categorical={len(categorical)} "
    f"date={len(dates)} text={len(texts)} missing={len(missing)}"
]
print(FACTS[-1])
"""

TARGET: dict[bool, str] = {
    False: """\
labels = sorted(set(train[TARGET].tolist()))
classes = [int(c) if isinstance(c, float) and c.is_integer() else c for c in labels]
class_index = {label: i for i, label in enumerate(classes)}
label_position = {str(label): i for i, label in enumerate(classes)}
N_CLASSES = len(classes)
REGRESSION = False
y = np.array([class_index[label] for label in train[TARGET].tolist()], dtype=int)
counts = np.bincount(y, minlength=N_CLASSES)
# What target encoding and the choice of ratio columns learn from: one column per class.
TARGET_SCORES = np.eye(N_CLASSES)[y][:, 1:] if N_CLASSES == 2 else np.eye(N_CLASSES)[y]
print(f"{N_CLASSES} classes: {dict(zip(map(str, classes), counts.tolist()))}")
FACTS.append(f"target: classes={N_CLASSES} imbalance={counts.max() / max(counts.min(), 1):.2f}")
print(FACTS[-1])


def to_model_space(values):
    return values


def from_model_space(values):
    return values


def can_stratify(y_part, n_splits):
    return np.bincount(y_part, minlength=N_CLASSES).min() >= n_splits
""",
    True: """\
N_CLASSES = 0
REGRESSION = True
y = train[TARGET].to_numpy(dtype=float)
print(f"target mean {y.mean():.4f}, std {y.std():.4f}")


def to_model_space(values):
    # RMSLE is RMSE in log1p space, so the models learn log1p(target) for it.
    return np.log1p(np.clip(values, 0.0, None)) if METRIC == "rmsle" else values


def from_model_space(values):
    return np.clip(np.expm1(values), 0.0, None) if METRIC == "rmsle" else values


TARGET_SCORES = to_model_space(y)[:, None]


def can_stratify(y_part, n_splits):
    return False
""",
}
