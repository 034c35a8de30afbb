"""Script fragments that validate on the task's folds, blend the members and write the results.

Every node of a task splits the labelled rows the same way (CV_FOLDS, CV_SEED), so their scores
compare like with like. Each member gets an equal share of the time left; within it each fold
gets an equal share of what is left (past the budget, the least work its model allows), and
folds stop only when one more would risk the node's own limit. With fewer than
REFIT_BELOW_ROWS labelled rows each member is also refitted on every row (one more share of
its time), and that model predicts the test rows. The blend of several members keeps a mix
only when its out-of-fold score beats the best member alone.
"""

from __future__ import annotations

FOLDS = """\

def plan_folds():
    \"\"\"The task's validation plan: the same folds for every node of the task.\"\"\"
    rows = np.arange(N_TRAIN)
    if CV_FOLDS < 2:
        stratify = y if can_stratify(y, 2) else None
        fit_rows, val_rows = train_test_split(
            rows, test_size=0.2, random_state=CV_SEED, stratify=stratify
        )
        return [(np.sort(fit_rows), np.sort(val_rows))]
    if can_stratify(y, CV_FOLDS):
        splitter = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=CV_SEED)
    else:
        splitter = KFold(n_splits=CV_FOLDS, shuffle=True, random_state=CV_SEED)
    return list(splitter.split(rows, y))


FOLDS = plan_folds()
# Which fold's validation part each labelled row is in, for anyone checking the plan.
fold_of_row = np.full(N_TRAIN, -1)
for k, (_, val_rows) in enumerate(FOLDS):
    fold_of_row[val_rows] = k
np.save(os.path.join("working", "folds.npy"), fold_of_row)
Y_MODEL = y if N_CLASSES else to_model_space(y)
# Below this many labelled rows a fifth more rows changes a model more than averaging the
# fold models does, so the test predictions come from a refit on every row.
REFIT_BELOW_ROWS = 2000
REFIT = len(FOLDS) > 1 and N_TRAIN < REFIT_BELOW_ROWS
print(f"validation: {len(FOLDS)} fold(s) of the task's plan (seed {CV_SEED}); "
      f"time budget {TIME_BUDGET:.0f}s")


def run_member(number, member, deadline):
    \"\"\"Fit one member on every fold there is time for: its out-of-fold predictions, its
    test predictions averaged over the fitted folds, and what each fold did.\"\"\"
    began = time.time()
    name = member["family"]
    data = make_features(member["features"])
    print(f"member {number}: {name} on {data['X'].shape[1]} features")
    with open(os.path.join("working", f"features_{number}.json"), "w") as handle:
        json.dump(data["names"], handle)
    oof, test_sum, done, reports, seconds = None, 0.0, [], [], []
    for k, (fit_rows, val_rows) in enumerate(FOLDS):
        now = time.time()
        left = deadline - now
        # Past the budget a fold still runs, with the least work its model allows, so that
        # the score covers every fold; only the node's own limit stops the folds.
        if k > 0 and now - STARTED + max(seconds) > HARD_STOP:
            print(f"time budget: {name} stopped early after {k} of {len(FOLDS)} folds")
            reports.append({"stopped": "time"})
            break
        stop_at = now + max(left, 0.0) / (len(FOLDS) - k + int(REFIT))
        X_fit, X_val, X_out = fold_matrices(data, fit_rows, val_rows)
        predict, report = fit_member(
            member, X_fit, Y_MODEL[fit_rows], X_val, Y_MODEL[val_rows], data["native"], stop_at
        )
        val_pred = predict(X_val)
        if oof is None:
            oof = np.zeros((N_TRAIN,) + val_pred.shape[1:])
        oof[val_rows] = val_pred
        test_sum = test_sum + predict(X_out)
        done.append(k)
        reports.append(report)
        seconds.append(time.time() - now)
        detail = ", ".join(f"{key} {value}" for key, value in report.items())
        score = evaluate(y[val_rows], val_pred)
        print(f"{name} fold {k + 1}/{len(FOLDS)}: {METRIC} {score:.6f} "
              f"({detail}, {seconds[-1]:.1f}s)")
        if report["stopped"] == "time":
            print(f"time budget: {name} stopped adding rounds in fold {k + 1}")
    test = test_sum / len(done)
    if REFIT and len(done) == len(FOLDS):
        refitted = refit_member(name, member, data, reports, deadline, max(seconds))
        test = test if refitted is None else refitted
    result = {"name": name, "oof": oof, "test": test, "done": done}
    rows = np.concatenate([FOLDS[k][1] for k in done])
    stops = [report["stopped"] for report in reports]
    stopped = next((s for s in ("time", "cap", "patience") if s in stops), stops[0])
    line = (f"member={number} family={name} oof={evaluate(y[rows], oof[rows]):.6f} "
            f"folds={len(done)}/{len(FOLDS)} stopped={stopped} seconds={time.time() - began:.1f}")
    if "rounds" in reports[0]:
        rounds = [report["rounds"] for report in reports if "rounds" in report]
        line += f" best_iteration={int(np.mean(rounds))} rounds_cap={member['rounds']}"
    FACTS.append(line)
    print(line)
    return result


def refit_member(name, member, data, reports, deadline, fold_seconds):
    \"\"\"Test predictions of `member` refitted on every labelled row (LightGBM: the folds' mean
    best round count, a tenth more for the extra rows), or None when there is no time.\"\"\"
    began = time.time()
    if began - STARTED + 1.5 * fold_seconds > HARD_STOP:
        print(f"refit: {name} skipped, too little time left; the test predictions are the "
              f"fold models' average")
        return None
    fixed = dict(member)
    rounds = [report["rounds"] for report in reports if "rounds" in report]
    if rounds:
        fixed["rounds"] = max(1, int(np.mean(rounds) * 1.1))
    X_all, _, X_out = fold_matrices(data, np.arange(N_TRAIN), np.arange(0))
    predict, report = fit_member(fixed, X_all, Y_MODEL, None, None, data["native"],
                                 max(deadline, began + fold_seconds))
    detail = ", ".join(f"{key} {value}" for key, value in report.items())
    print(f"refit: {name} on all {N_TRAIN} rows ({detail}, {time.time() - began:.1f}s); its "
          f"test predictions replace the fold models' average")
    return predict(X_out)
"""

BLEND = """\

BLEND_WEIGHTS = np.round(np.arange(0.1, 1.0, 0.1), 1)


def better(score, than):
    return score > than + 1e-12 if HIGHER_IS_BETTER else score < than - 1e-12


def blend(results):
    \"\"\"Weights for the members and the folds they share. Starts from the best member alone
    and mixes in each other member at the grid weight that improves the out-of-fold score
    most; a member that improves nothing gets weight 0.\"\"\"
    folds = sorted(set.intersection(*(set(result["done"]) for result in results)))
    rows = np.concatenate([FOLDS[k][1] for k in folds])
    alone = [evaluate(y[rows], result["oof"][rows]) for result in results]
    order = sorted(range(len(results)), key=lambda i: alone[i], reverse=HIGHER_IS_BETTER)
    weights = np.zeros(len(results))
    weights[order[0]] = 1.0
    mixed, best = results[order[0]]["oof"][rows], alone[order[0]]
    for i in order[1:]:
        chosen = None
        for weight in BLEND_WEIGHTS:
            candidate = (1.0 - weight) * mixed + weight * results[i]["oof"][rows]
            score = evaluate(y[rows], candidate)
            if better(score, best):
                chosen, best = weight, score
        if chosen is not None:
            mixed = (1.0 - chosen) * mixed + chosen * results[i]["oof"][rows]
            weights = weights * (1.0 - chosen)
            weights[i] = chosen
    if len(results) > 1:
        lead = results[order[0]]["name"]
        if np.count_nonzero(weights) > 1:
            parts = " + ".join(f"{r['name']} {w:.2f}" for r, w in zip(results, weights) if w)
            print(f"blend: kept ({parts}): out-of-fold {METRIC} {best:.6f} beats the best "
                  f"member alone ({lead} {alone[order[0]]:.6f})")
        else:
            print(f"blend: not kept, no mix beat {lead} alone ({alone[order[0]]:.6f}); "
                  f"submitting {lead}'s predictions")
    return weights, folds
"""

MAIN = """
END = DEADLINE - min(5.0, 0.05 * TIME_BUDGET)
results = []
for number, member in enumerate(MEMBERS, start=1):
    share = (END - time.time()) / (len(MEMBERS) - number + 1)
    results.append(run_member(number, member, time.time() + share))
weights, folds = blend(results)
oof = sum(w * r["oof"] for r, w in zip(results, weights) if w)
test_pred = sum(w * r["test"] for r, w in zip(results, weights) if w)
fold_scores = [evaluate(y[FOLDS[k][1]], oof[FOLDS[k][1]]) for k in folds]
rows = np.concatenate([FOLDS[k][1] for k in folds])
score = evaluate(y[rows], oof[rows])
print("fold scores: " + ", ".join(f"{s:.6f}" for s in fold_scores))
print(f"validation {METRIC}: {score:.6f} on {len(folds)} of {len(FOLDS)} folds")
np.save(os.path.join("working", "oof_predictions.npy"), oof)
"""

SUBMISSION_TAIL = """\
submission = submission[list(sample.columns)]
# The facts again, so that the end of the log holds them all.
print("\\n".join(FACTS))
submission.to_csv(os.path.join("submission", "submission.csv"), index=False)
with open("metrics.json", "w") as handle:
    json.dump({"validation_metric": float(score), "fold_metrics": fold_scores}, handle)
print(f"wrote {len(submission)} submission rows; time used {time.time() - STARTED:.1f}s "
      f"of a {TIME_BUDGET:.0f}s budget")
print(f"validation_metric={score:.6f}")
"""
