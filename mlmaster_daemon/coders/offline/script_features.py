"""Script fragments that turn the columns into one member's feature matrices.

`make_features(options)` builds a member's matrices from the `features` options of its entry
in MEMBERS; the optional fragments (dates, text, ratios, target encoding) are only rendered
when some member uses them. Everything unsupervised is fitted on train and test together;
target encoding is learned inside each fold (`fold_matrices`), never on validation rows.
"""

from __future__ import annotations

CORE = """\

# Codes are what one-hot columns, native categorical splits and target means are built from.
ONEHOT_MAX_LEVELS = 20
NATIVE_MAX_LEVELS = 200


def category_codes(values):
    \"\"\"Codes by sorted value over train and test together; missing values stay NaN.\"\"\"
    text = values.astype(str).where(values.notna())
    levels = sorted(text.dropna().unique())
    mapping = {value: float(code) for code, value in enumerate(levels)}
    return text.map(mapping).astype(float), len(levels)


def encode_categories(columns, options):
    \"\"\"Adds each categorical column's encoding; returns the natively split and the
    target-encoded column names.\"\"\"
    native, targeted = [], []
    mode = options["categorical"]
    for col in categorical + ([] if options["dates"] else dates):
        if not options["encode"]:
            columns[col] = both[col]
            continue
        codes, levels = category_codes(both[col])
        if mode == "onehot" and levels <= ONEHOT_MAX_LEVELS:
            for code in range(levels):
                columns[f"{col}={code}"] = (codes == code).astype(float)
            continue
        columns[col] = codes
        if mode == "native" and levels <= NATIVE_MAX_LEVELS:
            native.append(col)
        else:
            columns[f"{col}_frequency"] = codes.map(codes.value_counts(normalize=True))
        if mode == "target":
            targeted.append(col)
    return native, targeted


def make_features(options):
    \"\"\"One member's matrices: X (train rows), X_te (test rows) and what the folds need.\"\"\"
    columns = {c: pd.to_numeric(both[c], errors="coerce").astype(float) for c in numeric}
    native, targeted = encode_categories(columns, options)
    for col in texts:
        words = both[col].fillna("").astype(str)
        columns[f"{col}_chars"] = words.str.len().astype(float)
        columns[f"{col}_words"] = words.str.split().str.len().astype(float)
    if options["missing_indicators"]:
        for col in missing:
            columns[f"{col}_missing"] = both[col].isna().astype(float)
    if options["row_stats"] and numeric:
        values = pd.DataFrame({c: columns[c] for c in numeric})
        columns["row_missing"] = both[features].isna().sum(axis=1).astype(float)
        for stat in ("mean", "std", "min", "max"):
            columns[f"row_{stat}"] = getattr(values, stat)(axis=1)
    if options["dates"]:
        for col in dates:
            columns.update(date_parts(col))
    if options["ratios"]:
        columns.update(ratio_features(columns))
    frame = pd.DataFrame(columns)
    if options["text"] and not options["sparse_text"]:
        frame = pd.concat([frame, text_components()], axis=1)
    # Columns with one value teach nothing; dropping them also keeps scaling well defined.
    frame = frame.loc[:, frame.nunique(dropna=False) > 1]
    codes = frame[[c for c in targeted if c in frame.columns]].to_numpy(dtype=float)
    if options["impute"]:
        frame = frame.fillna(frame.iloc[:N_TRAIN].median(numeric_only=True)).fillna(0.0)
    matrix = frame.to_numpy(dtype=float)
    if options["scale"]:
        mean = np.nanmean(matrix[:N_TRAIN], axis=0)
        std = np.nanstd(matrix[:N_TRAIN], axis=0)
        matrix = (matrix - mean) / np.where(std > 0, std, 1.0)
    if options["text"] and options["sparse_text"]:
        matrix = sparse.hstack([sparse.csr_matrix(matrix), text_matrices()]).tocsr()
    names = list(frame.columns)
    # Target means are appended inside each fold: one column per category column and class.
    means = [f"{c}_target{j}" for c in targeted if c in names
             for j in range(min(10, TARGET_SCORES.shape[1]))]
    return {
        "X": matrix[:N_TRAIN],
        "X_te": matrix[N_TRAIN:],
        "names": names + means,
        "native": [names.index(c) for c in native if c in names],
        "codes": codes,
    }


def fold_matrices(data, fit_rows, val_rows):
    \"\"\"The fold's fit, validation and test matrices, with target means learned on fit rows.\"\"\"
    X, X_te = data["X"], data["X_te"]
    X_fit, X_val = X[fit_rows], X[val_rows]
    if data["codes"].shape[1] == 0:
        return X_fit, X_val, X_te
    fit_means, val_means, test_means = target_encode(data["codes"], fit_rows, val_rows)
    return join(X_fit, fit_means), join(X_val, val_means), join(X_te, test_means)


def join(matrix, extra):
    if hasattr(matrix, "tocsr"):
        return sparse.hstack([matrix, sparse.csr_matrix(extra)]).tocsr()
    return np.hstack([matrix, extra])
"""

DATES = """\

EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def date_parts(col):
    \"\"\"Year, month, day, weekday, hour and days since 1970 of a date column.\"\"\"
    stamp = pd.to_datetime(both[col], errors="coerce", utc=True, format="mixed")
    return {
        f"{col}_year": stamp.dt.year.astype(float),
        f"{col}_month": stamp.dt.month.astype(float),
        f"{col}_day": stamp.dt.day.astype(float),
        f"{col}_weekday": stamp.dt.day_of_week.astype(float),
        f"{col}_hour": stamp.dt.hour.astype(float),
        f"{col}_days": ((stamp - EPOCH) / pd.Timedelta(days=1)).astype(float),
    }
"""

TEXT = """\

TFIDF_FEATURES = 20000
TEXT_COMPONENTS = 24


def text_matrix(col):
    \"\"\"TF-IDF of word unigrams and bigrams of one text column (train and test rows).\"\"\"
    docs = both[col].fillna("").astype(str)
    vectoriser = TfidfVectorizer(
        max_features=TFIDF_FEATURES, ngram_range=(1, 2), sublinear_tf=True,
        min_df=2 if len(docs) >= 1000 else 1, dtype=np.float32,
    )
    try:
        return vectoriser.fit_transform(docs)
    except ValueError:
        # Nothing but stop words or empty strings: no vocabulary to learn.
        return sparse.csr_matrix((len(docs), 0), dtype=np.float32)


def text_matrices():
    return sparse.hstack([text_matrix(col) for col in texts] or
                         [sparse.csr_matrix((len(both), 0))]).tocsr()


def text_components():
    \"\"\"TF-IDF reduced by truncated SVD: dense text features for tree models.\"\"\"
    parts = {}
    for col in texts:
        tfidf = text_matrix(col)
        n_components = min(TEXT_COMPONENTS, tfidf.shape[1] - 1, len(both) - 1)
        if n_components < 1:
            continue
        reduced = TruncatedSVD(n_components, random_state=SEED).fit_transform(tfidf)
        for i in range(n_components):
            parts[f"{col}_svd{i}"] = reduced[:, i]
    return pd.DataFrame(parts, index=both.index)
"""

RATIOS = """\

RATIO_COLUMNS = 4


def ratio_features(columns):
    \"\"\"Ratios and differences of the numeric columns most correlated with the target.\"\"\"
    strength = {}
    for col in numeric:
        values = columns[col].iloc[:N_TRAIN].to_numpy(dtype=float)
        values = np.where(np.isnan(values), np.nanmedian(values), values)
        if np.nanstd(values) == 0:
            continue
        ranks = pd.Series(values).rank().to_numpy()
        strength[col] = max(abs(np.corrcoef(ranks, score)[0, 1]) for score in TARGET_SCORES.T)
    chosen = sorted(strength, key=lambda c: -np.nan_to_num(strength[c]))[:RATIO_COLUMNS]
    made = {}
    for i, a in enumerate(chosen):
        for b in chosen[i + 1:]:
            # A zero denominator gives 0, not NaN: only missing inputs give a missing ratio.
            ratio = columns[a] / columns[b].where(columns[b] != 0)
            made[f"{a}_over_{b}"] = ratio.where(columns[b] != 0, 0.0)
            made[f"{a}_minus_{b}"] = columns[a] - columns[b]
    return made
"""

TARGET_ENCODING = """\

SMOOTHING = 20.0


def category_means(codes, scores, fit_rows, out_rows):
    \"\"\"Per code, the smoothed mean of each score column over fit rows, for out rows.\"\"\"
    levels = int(np.nanmax(codes)) + 2 if np.isfinite(codes).any() else 1
    index = np.where(np.isnan(codes), levels - 1, codes).astype(int)
    counts = np.bincount(index[fit_rows], minlength=levels)
    out = np.empty((len(out_rows), scores.shape[1]))
    for j in range(scores.shape[1]):
        prior = scores[fit_rows, j].mean()
        sums = np.bincount(index[fit_rows], weights=scores[fit_rows, j], minlength=levels)
        out[:, j] = ((sums + prior * SMOOTHING) / (counts + SMOOTHING))[index[out_rows]]
    return out


def target_encode(codes, fit_rows, val_rows):
    \"\"\"Target means per category for the fold's fit rows (out of 5 inner folds, so a row
    never sees its own target), its validation rows and the test rows (from all fit rows).\"\"\"
    # Many classes: the means of the 10 most frequent ones are enough.
    top = np.argsort(-TARGET_SCORES.sum(axis=0), kind="stable")[:10]
    scores = np.vstack([TARGET_SCORES[:, top], np.zeros((len(codes) - N_TRAIN, len(top)))])
    test_rows = np.arange(N_TRAIN, len(codes))

    def means(fit, out):
        return np.hstack([category_means(codes[:, c], scores, fit, out)
                          for c in range(codes.shape[1])])

    fit_part = np.zeros((len(fit_rows), codes.shape[1] * len(top)))
    inner = KFold(n_splits=5, shuffle=True, random_state=SEED)
    for inner_fit, inner_out in inner.split(fit_rows):
        fit_part[inner_out] = means(fit_rows[inner_fit], fit_rows[inner_out])
    return fit_part, means(fit_rows, val_rows), means(fit_rows, test_rows)
"""
