"""Unit checks of the offline coder's recipes, operator choices and diagnoses (no subprocesses)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlmaster_daemon.coders.offline.changes import CHANGE_FIELDS
from mlmaster_daemon.coders.offline.coder import OfflineCoder
from mlmaster_daemon.coders.offline.drafts import DRAFT_STYLES
from mlmaster_daemon.coders.offline.improve import Evidence, applicable_changes
from mlmaster_daemon.coders.offline.recipe import (
    ALL_FAMILIES,
    CATEGORICAL_MODES,
    HEADER_PREFIX,
    Recipe,
    default_recipe,
    families_for,
    format_summary,
    parse_recipe,
    parse_summary,
    safe_baseline,
    summary_family,
)
from mlmaster_daemon.coders.offline.render import render
from mlmaster_daemon.coders.protocol import CodeRequest
from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.memory import MemoryItem
from mlmaster_daemon.tasks.spec import PROJECT_METRICS, Metric, TaskSpec


def _task(metric: Metric = Metric.ROC_AUC) -> TaskSpec:
    root = Path("/nonexistent/task")
    return TaskSpec(
        name="unit",
        root=root,
        public_dir=root / "public",
        private_dir=None,
        description="",
        metric=metric,
        lower_is_better=metric.lower_is_better,
        target="label",
        id_column="row_id",
    )


def _request(operator: Operator, **fields: Any) -> CodeRequest:
    base = CodeRequest(operator=operator, task=_task(), node_id=5, data_preview="")
    return replace(base, **fields)


def _recipes(partners: st.SearchStrategy[tuple[Recipe, ...]]) -> st.SearchStrategy[Recipe]:
    return st.builds(
        Recipe,
        family=st.sampled_from(sorted(ALL_FAMILIES)),
        n_estimators=st.integers(1, 5000),
        learning_rate=st.floats(0.001, 1.0),
        max_depth=st.none() | st.integers(1, 30),
        min_samples_leaf=st.integers(1, 50),
        reg_strength=st.floats(0.0, 100.0),
        n_neighbors=st.integers(1, 100),
        num_leaves=st.integers(2, 256),
        feature_fraction=st.floats(0.1, 1.0),
        bagging_fraction=st.floats(0.1, 1.0),
        encode_categoricals=st.booleans(),
        categorical=st.sampled_from(CATEGORICAL_MODES),
        impute=st.booleans(),
        missing_indicators=st.booleans(),
        scale=st.booleans(),
        feature_engineering=st.booleans(),
        dates=st.booleans(),
        text=st.booleans(),
        ratios=st.booleans(),
        class_weight=st.booleans(),
        partners=partners,
        changes=st.lists(st.sampled_from(sorted(CHANGE_FIELDS)), max_size=3).map(tuple),
        seed=st.integers(0, 2**31),
    )


recipes = _recipes(st.lists(_recipes(st.just(())), max_size=2).map(tuple))


@settings(max_examples=60, deadline=None)
@given(recipe=recipes, metric=st.sampled_from(PROJECT_METRICS))
def test_parse_recipe_round_trips_through_a_rendered_script(recipe: Recipe, metric: Metric) -> None:
    code = render(recipe, _task(metric))
    assert code.splitlines()[0] == recipe.header()
    assert parse_recipe(code) == recipe
    compile(code, "solution.py", "exec")


@pytest.mark.parametrize(
    "code",
    [
        "import pandas as pd\n",
        "",
        HEADER_PREFIX + "{not json\n",
        HEADER_PREFIX + '{"family": "xgboost"}\n',
        HEADER_PREFIX + '{"family": "knn", "n_estimators": "many"}\n',
        HEADER_PREFIX + '{"family": "knn", "categorical": "hashing"}\n',
        HEADER_PREFIX + '{"family": "knn", "partners": [{"family": "xgboost"}]}\n',
        HEADER_PREFIX + '["knn"]\n',
        "import os\n" + default_recipe("knn", 1).header() + "\n",
    ],
)
def test_parse_recipe_rejects_missing_or_malformed_headers(code: str) -> None:
    assert parse_recipe(code) is None


def test_old_headers_still_parse_with_their_partner_family_as_a_partner_recipe() -> None:
    # Written before the task gave the folds: cv_folds is ignored, ensemble_with becomes a
    # partner with that family's defaults and the main recipe's data handling.
    old = (HEADER_PREFIX + '{"cv_folds":5,"encode_categoricals":true,"ensemble_with":"knn",'
           '"family":"lightgbm","feature_engineering":true,"impute":true,"learning_rate":0.05,'
           '"max_depth":null,"min_samples_leaf":1,"missing_indicators":false,'
           '"n_estimators":300,"n_neighbors":15,"reg_strength":0.0,"scale":false,"seed":4}\n')
    recipe = parse_recipe(old)
    assert recipe is not None
    assert (recipe.family, recipe.n_estimators, recipe.impute) == ("lightgbm", 300, True)
    assert recipe.models == ("lightgbm", "knn")
    partner = recipe.partners[0]
    assert partner.impute and partner.feature_engineering and partner.partners == ()


def test_summary_is_machine_readable() -> None:
    partner = default_recipe("knn", 4)
    recipe = replace(default_recipe("lightgbm", 3), dates=True, text=True, partners=(partner,))
    pairs = parse_summary(format_summary(recipe, "improve", change="ensemble"))
    assert pairs["model"] == "lightgbm"
    assert pairs["cat"] == "native"
    assert pairs["features"] == "dates+text"
    assert pairs["ensemble"] == "knn"
    assert (pairs["op"], pairs["change"]) == ("improve", "ensemble")
    assert summary_family("An LLM wrote a random_forest with 500 trees") == "random_forest"


@pytest.mark.parametrize("metric", [Metric.ACCURACY, Metric.MAE])
async def test_drafts_given_sibling_memory_pick_different_styles(metric: Metric) -> None:
    coder = OfflineCoder(seed=2)
    task = _task(metric)
    memory: list[MemoryItem] = []
    for node_id in range(1, len(DRAFT_STYLES) + 1):
        request = CodeRequest(Operator.DRAFT, task, node_id, "", memory=tuple(memory))
        response = await coder.generate(request)
        memory.append(MemoryItem(node_id, Operator.DRAFT, response.summary, None, False))
    drafted = [parse_summary(item.summary)["draft"] for item in memory]
    assert sorted(drafted) == sorted(DRAFT_STYLES)
    # The strong and mutually different ones come first.
    assert set(drafted[:3]) == {"lightgbm", "linear", "extra_trees"}
    families = {parse_summary(item.summary)["model"] for item in memory}
    assert families == set(families_for(metric.is_regression))


async def test_the_first_draft_is_lightgbm_without_imputation_on_the_task_folds() -> None:
    request = _request(Operator.DRAFT, node_id=1, cv_folds=4, cv_seed=321)
    response = await OfflineCoder().generate(request)
    recipe = parse_recipe(response.code)
    assert recipe is not None
    assert (recipe.family, recipe.impute, recipe.encode_categoricals) == ("lightgbm", False, True)
    assert recipe.partners == ()
    assert "CV_FOLDS = 4\n" in response.code and "CV_SEED = 321\n" in response.code
    assert 3 <= response.plan.count(". ") + 1 <= 6


async def test_drafts_made_at_once_without_memory_of_each_other_differ() -> None:
    coder = OfflineCoder(seed=3)
    drafted = [
        parse_summary((await coder.generate(_request(Operator.DRAFT, node_id=n))).summary)
        for n in (1, 2)
    ]
    assert [pairs["model"] for pairs in drafted] == ["lightgbm", "logistic_regression"]
    third = await coder.generate(_request(Operator.DRAFT, node_id=3))
    assert parse_summary(third.summary)["draft"] == "extra_trees"
    # A later draft takes the first style memory shows unused.
    memory = tuple(MemoryItem(n, Operator.DRAFT, f"model=x; draft={style}", None, False)
                   for n, style in ((1, "lightgbm"), (2, "extra_trees")))
    later = await coder.generate(_request(Operator.DRAFT, node_id=9, memory=memory))
    assert parse_summary(later.summary)["draft"] == "linear"


@pytest.mark.parametrize(("missing", "imputed"), [(0, False), (12, True)])
async def test_a_draft_imputes_when_the_preview_shows_missing_values(
    missing: int, imputed: bool
) -> None:
    preview = (f"train.csv: 400 rows x 3 columns\nColumns:\n  row_id: int64, missing 0, "
               f"unique 400\n  x: float64, missing {missing}, unique 380\n")
    memory = (MemoryItem(1, Operator.DRAFT, "model=lightgbm; op=draft", 0.7, False),)
    request = _request(Operator.DRAFT, node_id=2, data_preview=preview, memory=memory)
    recipe = parse_recipe((await OfflineCoder().generate(request)).code)
    assert recipe is not None and recipe.family == "logistic_regression"
    assert recipe.impute is imputed


async def test_same_seed_and_request_give_the_same_code() -> None:
    memory = (MemoryItem(1, Operator.DRAFT, "model=knn; op=draft", 0.7, False),)
    request = _request(Operator.DRAFT, memory=memory)
    first = await OfflineCoder(seed=9).generate(request)
    again = await OfflineCoder(seed=9).generate(request)
    assert first == again
    assert (await OfflineCoder(seed=10).generate(request)).code != first.code
    assert (await OfflineCoder(seed=9).generate(replace(request, node_id=6))).code != first.code


async def test_improve_prefers_changes_siblings_have_not_tried() -> None:
    parent = default_recipe("logistic_regression", 4)
    coder = OfflineCoder(seed=1)
    memory: list[MemoryItem] = []
    applicable = applicable_changes(parent, Evidence(Metric.ROC_AUC))
    for node_id in range(len(applicable)):
        request = _request(
            Operator.IMPROVE,
            node_id=node_id,
            parent_code=render(parent, _task()),
            memory=tuple(memory),
        )
        response = await coder.generate(request)
        memory.append(MemoryItem(node_id, Operator.IMPROVE, response.summary, 0.8, False))
    changes = [parse_summary(item.summary)["change"] for item in memory]
    assert sorted(changes) == sorted(applicable)
    assert set(changes) <= set(CHANGE_FIELDS)


async def test_improve_without_a_recipe_header_writes_a_fresh_recipe() -> None:
    request = _request(Operator.IMPROVE, parent_code="import sklearn\nprint('llm code')\n")
    response = await OfflineCoder().generate(request)
    assert parse_summary(response.summary)["change"] == "fresh_recipe"
    assert "no offline recipe header" in response.plan
    assert parse_recipe(response.code) is not None


@pytest.mark.parametrize(
    ("parent", "output", "error", "fix"),
    [
        (
            default_recipe("lightgbm", 1),
            "ModuleNotFoundError: No module named 'lightgbm'",
            "exit code 1",
            "drop_lightgbm",
        ),
        (
            default_recipe("random_forest", 1),
            "random_forest fold 1/5: roc_auc 0.9",
            "killed after 600 s timeout",
            "shrink_for_timeout",
        ),
        (default_recipe("extra_trees", 1), "MemoryError", "exit code 1", "shrink_for_memory"),
        (
            default_recipe("ridge", 1),
            "ValueError: Input X contains NaN.",
            "metrics.json missing",
            "impute_nan",
        ),
        (
            replace(default_recipe("knn", 1), encode_categoricals=False),
            "ValueError: could not convert string to float: 'red'",
            "exit code 1",
            "encode_categoricals",
        ),
        (
            default_recipe("knn", 1),
            "done",
            "submission invalid: missing column(s) target",
            "rerender_contract",
        ),
    ],
)
async def test_debug_recognises_the_failure_and_repairs_it(
    parent: Recipe, output: str, error: str, fix: str
) -> None:
    # The parent's code is its header plus a hand edit, so re-rendering differs from it.
    request = _request(
        Operator.DEBUG,
        parent_code=parent.header() + "\nraise SystemExit(1)\n",
        parent_output=output,
        parent_error=error,
    )
    response = await OfflineCoder().generate(request)
    assert parse_summary(response.summary)["fix"] == fix
    assert "recognised" in response.plan
    repaired = parse_recipe(response.code)
    assert repaired is not None
    # Only the contract fix keeps the recipe; it re-renders a script that honours the contract.
    assert (repaired == parent) == (fix == "rerender_contract")
    assert "lightgbm" not in repaired.models or fix != "drop_lightgbm"


async def test_debug_without_a_recipe_header_falls_back_to_the_safe_baseline() -> None:
    request = _request(
        Operator.DEBUG,
        parent_code="print('hi')\n",
        parent_output="KeyError: 'x'",
        parent_error="exit code 1",
    )
    response = await OfflineCoder().generate(request)
    recipe = parse_recipe(response.code)
    assert recipe is not None and recipe == safe_baseline(recipe.seed)
    assert parse_summary(response.summary)["fix"] == "safe_baseline"
