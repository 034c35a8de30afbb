"""The hidden holdout in a task's search: the node scripts work on the holdout's view, every
working node is scored on the hidden rows, the search and its prompts never see those scores,
and the final submission is chosen by them (and averaged when that helps)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pandas as pd
import pytest

from mlmaster_daemon.bus import NodeStateChanged
from mlmaster_daemon.coders.llm.prompts import operator_messages
from mlmaster_daemon.coders.protocol import CodeRequest, CodeResponse
from mlmaster_daemon.config import load_config
from mlmaster_daemon.errors import InvalidTaskDir
from mlmaster_daemon.execution.sandbox import resolve_sandbox
from mlmaster_daemon.models import NodeState, Operator, TaskState
from mlmaster_daemon.scheduler import TaskSearch
from mlmaster_daemon.scheduler.holdout_stage import prepare
from mlmaster_daemon.store import NodeRecord, TaskRecord
from mlmaster_daemon.tasks import holdout
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.examples import build_example
from mlmaster_daemon.tasks.grading import grade
from mlmaster_daemon.tasks.validation import validate_submission
from tests.search_bench import Bench, new_task, open_bench

# A model on a few columns of the view's train table; its own validation metric is 3-fold CV
# unless VALIDATION names one (a planted, overconfident claim).
MODEL_SCRIPT = """import json, os
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
train, test = pd.read_csv("input/train.csv"), pd.read_csv("input/test.csv")
cols = COLUMNS
model = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=1000))
score = cross_val_score(model, train[cols], train["target"], cv=3, scoring="roc_auc").mean()
model.fit(train[cols], train["target"])
os.makedirs("submission", exist_ok=True)
pd.DataFrame({"id": test["id"], "target": model.predict_proba(test[cols])[:, 1]}).to_csv(
    "submission/submission.csv", index=False)
json.dump({"validation_metric": VALIDATION or float(score)}, open("metrics.json", "w"))
"""
# Random predictions that claim a near-perfect validation score: what an overfit (or a leak
# in its own validation) looks like from the outside.
OVERFIT_SCRIPT = """import json, os
import numpy as np, pandas as pd
test = pd.read_csv("input/test.csv")
os.makedirs("submission", exist_ok=True)
pd.DataFrame({"id": test["id"], "target": np.random.default_rng(7).random(len(test))}).to_csv(
    "submission/submission.csv", index=False)
json.dump({"validation_metric": 0.999}, open("metrics.json", "w"))
"""


def model_script(columns: list[str], validation: float | None = None) -> str:
    return MODEL_SCRIPT.replace("COLUMNS", repr(columns)).replace("VALIDATION", repr(validation))


class ScriptCoder:
    """Writes the given scripts in turn (the last again when they run out) and keeps every
    request, as a model endpoint would see them."""

    def __init__(self, scripts: list[str]) -> None:
        self.scripts = scripts
        self.requests: list[CodeRequest] = []

    async def generate(self, request: CodeRequest) -> CodeResponse:
        self.requests.append(request)
        code = self.scripts[min(len(self.requests), len(self.scripts)) - 1]
        return CodeResponse("A plan.", code, f"script {len(self.requests)}")

    async def wait_available(self) -> None:
        return None


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    # One node at a time: the scripts' order is the nodes' order.
    async for opened in open_bench(tmp_path, **{"search.parallel": 1, "llm.prefetch": 0}):
        yield opened


async def run_task(bench: Bench, task_dir: Path, scripts: list[str],
                   steps: int | None = None) -> tuple[TaskRecord, list[NodeRecord], ScriptCoder]:
    coder = ScriptCoder(scripts)
    bench.parts.coder = coder
    # The split is seeded by the task id: one id, one split, the same outcome every run.
    task = await new_task(bench, task_dir, steps=steps or len(scripts), id="tholdout0001")
    await TaskSearch(task, bench.parts).run()
    done = await bench.store.get_task(task.id)
    assert done.state is TaskState.FINISHED, done.error
    return done, await bench.store.list_nodes(task.id), coder


def task_dir(bench: Bench) -> Path:
    return bench.state_dir / "tasks"


async def test_nodes_work_on_the_view_and_the_holdout_scores_stay_out_of_every_prompt(
    bench: Bench, breast_cancer: Path,
) -> None:
    spec = load_task(breast_cancer)
    scripts = [model_script(["mean_radius", "mean_texture"]),
               model_script(["worst_area", "worst_concavity"]),
               model_script(["mean_smoothness"])]
    events: list[NodeStateChanged] = []
    bench.parts.bus.tap(lambda e: events.append(e) if isinstance(e, NodeStateChanged) else None)
    done, nodes, coder = await run_task(bench, breast_cancer, scripts)
    root = task_dir(bench) / done.id
    # People watching see each node's holdout score as it ends.
    assert {e.node_id: e.holdout_metric for e in events if e.state == "done"} == {
        n.id: n.holdout_metric for n in nodes}
    assert done.holdout is not None and done.holdout["state"] == "on"
    plan = holdout.load_plan(root / "holdout" / "private")
    assert plan is not None and done.holdout["rows"] == len(plan.rows) > 0
    view = root / "holdout" / "view"
    for node in nodes:
        assert node.state is NodeState.DONE and node.holdout_metric is not None
        ws = root / "nodes" / str(node.id)
        assert (ws / "input").resolve() == view.resolve()
        # What stays in the node's submission is the competition's part, the sample's ids in
        # order: a valid submission for the real test set, gradable on the hidden answers.
        kept = ws / "submission" / "submission.csv"
        assert validate_submission(spec, kept) is None
        assert pd.read_csv(kept)["id"].tolist() == pd.read_csv(
            spec.public_dir / "sample_submission.csv")["id"].tolist()
        assert 0.0 <= grade(spec, kept) <= 1.0
    held_out = pd.read_csv(spec.public_dir / "train.csv").iloc[list(plan.rows)]
    assert not set(held_out["id"]) & set(pd.read_csv(view / "train.csv")["id"])
    # The search saw the view and its own metrics only: no request, and no prompt built from
    # one, carries a holdout score or says there is a holdout.
    scores = [repr(n.holdout_metric) for n in nodes] + [
        f"{n.holdout_metric:.4f}" for n in nodes if n.holdout_metric is not None]
    for request in coder.requests:
        assert request.task.public_dir == view
        prompt = json.dumps(operator_messages(request, "a CPU"))
        assert "holdout" not in prompt.lower()
        assert not [s for s in scores if s in prompt]


async def test_a_planted_overfitting_node_is_not_chosen_by_the_holdout(
    bench: Bench, breast_cancer: Path,
) -> None:
    scripts = [OVERFIT_SCRIPT, model_script(["worst_area", "worst_concavity"], 0.95)]
    done, nodes, _ = await run_task(bench, breast_cancer, scripts)
    overfit, honest = nodes
    assert overfit.metric == 0.999 and honest.metric == 0.95
    assert overfit.holdout_metric is not None and honest.holdout_metric is not None
    assert honest.holdout_metric > overfit.holdout_metric + 0.2
    assert done.selection is not None
    assert done.selection["node_id"] == honest.id == done.best_node_id
    assert f"node {overfit.id}, best by validation" in done.selection["reason"]
    best = task_dir(bench) / done.id / "best"
    assert json.loads((best / "node.json").read_text())["node_id"] == honest.id


async def test_choosing_by_validation_takes_the_overfitting_node(
    bench: Bench, breast_cancer: Path,
) -> None:
    bench.set("holdout.selection", "validation")
    scripts = [OVERFIT_SCRIPT, model_script(["worst_area", "worst_concavity"], 0.95)]
    done, nodes, _ = await run_task(bench, breast_cancer, scripts)
    assert done.selection is not None and done.selection["rule"] == "validation"
    assert done.best_node_id == nodes[0].id == done.selection["node_id"]
    # No ensemble under the validation rule: it would be chosen by the holdout.
    assert "ensemble" not in done.selection


async def test_the_average_of_the_best_nodes_is_kept_only_when_it_beats_the_best_one(
    bench: Bench, breast_cancer: Path,
) -> None:
    spec = load_task(breast_cancer)
    # Models on different columns: their rank average scores higher than any of them.
    scripts = [model_script(["mean_radius", "mean_texture"]),
               model_script(["worst_concavity", "worst_smoothness"]),
               model_script(["mean_concave_points", "worst_texture"])]
    done, nodes, _ = await run_task(bench, breast_cancer, scripts)
    assert done.selection is not None
    ensemble = done.selection["ensemble"]
    single = max(n.holdout_metric or 0.0 for n in nodes)
    assert ensemble["kept"] is True, ensemble
    assert ensemble["method"] == "rank-mean" and ensemble["holdout_metric"] > single
    assert sorted(ensemble["members"]) == [n.id for n in nodes]
    best = task_dir(bench) / done.id / "best"
    assert json.loads((best / "ensemble.json").read_text())["members"] == ensemble["members"]
    assert validate_submission(spec, best / "submission.csv") is None
    assert 0.0 <= grade(spec, best / "submission.csv") <= 1.0


async def test_an_average_of_identical_nodes_is_not_kept(
    bench: Bench, breast_cancer: Path,
) -> None:
    script = model_script(["worst_area", "worst_concavity"])
    done, _, _ = await run_task(bench, breast_cancer, [script, script])
    assert done.selection is not None
    ensemble = done.selection["ensemble"]
    assert ensemble["kept"] is False and "no better than node" in ensemble["reason"]
    best = task_dir(bench) / done.id / "best"
    assert not (best / "ensemble.json").exists()
    chosen = done.selection["node_id"]
    assert (best / "submission.csv").read_bytes() == (
        task_dir(bench) / done.id / "nodes" / str(chosen) / "submission" /
        "submission.csv").read_bytes()


async def test_a_task_folder_can_turn_the_holdout_off_and_the_task_says_so(
    bench: Bench, tmp_path: Path,
) -> None:
    folder = build_example("breast_cancer", tmp_path / "bc")
    with (folder / "task.toml").open("a") as toml:
        toml.write("[holdout]\nenabled = false\n")
    done, nodes, coder = await run_task(bench, folder, [model_script(["worst_area"])])
    assert done.holdout == {"state": "off",
                            "reason": "turned off by task.toml's [holdout] enabled = false"}
    assert nodes[0].holdout_metric is None
    assert coder.requests[0].task.public_dir == load_task(folder).public_dir
    assert done.selection is not None and done.selection["node_id"] == nodes[0].id


def test_the_split_is_kept_across_restarts_whatever_the_config_says_later(
    tmp_path: Path, breast_cancer: Path,
) -> None:
    spec = load_task(breast_cancer)
    config = load_config(None, environ={}).holdout
    first, note = prepare(spec, tmp_path / "task", "t1", config, seed=0)
    assert first is not None and note["fraction"] == 0.1
    train_bytes = (first.view.public_dir / "train.csv").read_bytes()
    # A restart under another fraction, with the view lost: the saved plan is used again and
    # the view is rebuilt byte for byte.
    for name in ("train.csv", "test.csv"):
        (first.view.public_dir / name).unlink()
    (first.view.public_dir / "train.csv").parent.rename(tmp_path / "task" / "gone")
    again, _ = prepare(spec, tmp_path / "task", "t1", config.model_copy(update={"fraction": 0.3}),
                       seed=0)
    assert again is not None and again.plan == first.plan
    assert (again.view.public_dir / "train.csv").read_bytes() == train_bytes
    # Another task gets another split.
    other, _ = prepare(spec, tmp_path / "other", "t2", config, seed=0)
    assert other is not None and other.plan.rows != first.plan.rows


def test_too_few_rows_turn_the_holdout_off_saying_why(tmp_path: Path) -> None:
    folder = build_example("breast_cancer", tmp_path / "bc")
    train = load_task(folder).public_dir / "train.csv"
    lines = train.read_text().splitlines()
    train.write_text("\n".join(lines[:120]) + "\n")
    config = load_config(None, environ={}).holdout
    active, note = prepare(load_task(folder), tmp_path / "task", "t1", config, seed=0)
    assert active is None and note["state"] == "off"
    assert "labelled rows are too few" in note["reason"]


def test_a_group_column_the_train_table_lacks_is_refused_at_submit(tmp_path: Path) -> None:
    folder = build_example("breast_cancer", tmp_path / "bc")
    settings = (folder / "task.toml").read_text()
    (folder / "task.toml").write_text(settings + '[holdout]\ngroup_column = "patient"\n')
    with pytest.raises(InvalidTaskDir, match="group_column 'patient' is not a column"):
        load_task(folder)
    (folder / "task.toml").write_text(settings + "[holdout]\nfraction = 0.7\n")
    with pytest.raises(InvalidTaskDir, match=r"holdout\.fraction"):
        load_task(folder)


# A node script that looks for the holdout's answers everywhere it could be: beside its input
# (the view is a folder of the daemon's state), at the state folder's path, and by walking up
# from its own workspace. It submits the sample and reports what it could open.
SNOOP_SCRIPT = """import json, os, shutil
found = []
view = os.path.realpath("input")
guesses = [os.path.join(view, "..", "private", "holdout_answers.csv"),
           os.path.join(STATE, "tasks", TASK, "holdout", "private", "holdout_answers.csv")]
for guess in guesses:
    try:
        found.append(open(guess).read()[:50])
    except OSError as exc:
        pass
for top in (os.path.dirname(view), STATE):
    for folder, _, files in os.walk(top):
        found += [os.path.join(folder, f) for f in files if "answers" in f or "holdout" in f]
os.makedirs("submission", exist_ok=True)
shutil.copyfile("input/sample_submission.csv", "submission/submission.csv")
json.dump({"validation_metric": 0.5, "found": found}, open("metrics.json", "w"))
"""


@pytest.fixture
async def sandboxed(var_tmp_path: Path) -> AsyncIterator[Bench]:
    # Outside /tmp: the sandbox's /tmp is its own, which would hide the state whatever else.
    async for opened in open_bench(var_tmp_path, **{"execution.sandbox": "bwrap"}):
        yield opened


@pytest.mark.skipif(resolve_sandbox("auto") != "bwrap",
                    reason="bubblewrap missing or not working here")
async def test_a_sandboxed_script_cannot_find_the_holdout_answers(
    sandboxed: Bench, breast_cancer: Path,
) -> None:
    bench = sandboxed
    task = await new_task(bench, breast_cancer, steps=1)
    script = SNOOP_SCRIPT.replace("STATE", repr(str(bench.state_dir))).replace(
        "TASK", repr(task.id))
    bench.parts.coder = ScriptCoder([script])
    await TaskSearch(task, bench.parts).run()
    private = bench.state_dir / "tasks" / task.id / "holdout" / "private"
    assert (private / "holdout_answers.csv").is_file()
    ws = bench.state_dir / "tasks" / task.id / "nodes" / "1"
    assert json.loads((ws / "metrics.json").read_text())["found"] == []
    done = await bench.store.get_task(task.id)
    assert done.holdout is not None and "warning" not in done.holdout


async def test_a_task_keeps_what_its_first_start_decided_about_the_holdout(
    bench: Bench, breast_cancer: Path,
) -> None:
    # Off at its first start: turning the holdout on later does not split a running task.
    task = await new_task(bench, breast_cancer, steps=1)
    await bench.store.update_task(task.id, holdout={"state": "off", "reason": "said so"})
    coder = ScriptCoder([model_script(["worst_area"])])
    bench.parts.coder = coder
    await TaskSearch(task, bench.parts).run()
    done = await bench.store.get_task(task.id)
    assert done.holdout == {"state": "off", "reason": "said so"}
    assert coder.requests[0].task.public_dir == load_task(breast_cancer).public_dir
    assert (await bench.store.list_nodes(task.id))[0].holdout_metric is None


async def test_a_task_from_before_holdouts_resumes_without_one(
    bench: Bench, breast_cancer: Path,
) -> None:
    task = await new_task(bench, breast_cancer, steps=2)
    await bench.store.insert_node(NodeRecord(task_id=task.id, id=1, parent_id=None,
                                             operator=Operator.DRAFT, state=NodeState.FAILED,
                                             created_at=0.0, error="from before"))
    bench.parts.coder = ScriptCoder([model_script(["worst_area"])])
    await TaskSearch(task, bench.parts).run()
    done = await bench.store.get_task(task.id)
    assert done.holdout is not None and done.holdout["state"] == "off"
    assert "started before this daemon kept holdouts" in done.holdout["reason"]
    assert not (task_dir(bench) / task.id / "holdout").exists()


def test_a_started_holdout_stays_on_and_a_lost_split_is_not_drawn_again(
    tmp_path: Path, breast_cancer: Path,
) -> None:
    spec = load_task(breast_cancer)
    config = load_config(None, environ={}).holdout
    first, _ = prepare(spec, tmp_path / "task", "t1", config, seed=0)
    assert first is not None
    off = config.model_copy(update={"enabled": False})
    kept, note = prepare(spec, tmp_path / "task", "t1", off, seed=0, started=True)
    assert kept is not None and kept.plan == first.plan and note["state"] == "on"
    (first.private_dir / "holdout_plan.json").unlink()
    lost, note = prepare(spec, tmp_path / "task", "t1", config, seed=0, started=True)
    assert lost is None and "saved split" in note["reason"]
