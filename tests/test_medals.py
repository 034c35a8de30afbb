"""Medals, per-competition reports and their aggregate, as `mlebench grade` computes them."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.grading import grade_report
from mlmaster_daemon.tasks.medals import (
    LeaderboardError,
    Thresholds,
    find_leaderboard,
    medal_positions,
    read_leaderboard,
    thresholds,
)
from mlmaster_daemon.tasks.report import (
    LITE_COMPETITION_IDS,
    CompetitionReport,
    aggregate,
    in_split,
    write_aggregate,
)

REPORT_FIELDS = [
    "competition_id", "score", "gold_threshold", "silver_threshold", "bronze_threshold",
    "median_threshold", "any_medal", "gold_medal", "silver_medal", "bronze_medal",
    "above_median", "submission_exists", "valid_submission", "is_lower_better", "created_at",
    "submission_path",
]
# Answers of the tiny classification competition: ids 100..109, half of them 1.
LABELS = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0]
# 50 teams, best first: 0.99 down to 0.50. Gold at position 5 (0.95), silver at 10 (0.90),
# bronze at 20 (0.80); median 0.745.
ACCURACY_BOARD = [round(0.99 - i / 100, 2) for i in range(50)]
# 50 teams, best first, lower is better: 0.10 up to 0.59.
RMSE_BOARD = [round(0.10 + i / 100, 2) for i in range(50)]


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def build_competition(parent: Path, competition_id: str = "tiny-accuracy", *,
                      metric: str = "accuracy", board: list[float] | None = None,
                      leaderboard_in: str = "root") -> Path:
    """A competition in MLE-bench's prepared layout; returns its root (`<id>/`).

    accuracy: binary labels (LABELS); rmse: the target is the label times 2.5. The leaderboard
    goes beside `prepared/` ("root"), inside it ("prepared") or nowhere ("none").
    """
    root = parent / competition_id
    public, private = root / "prepared" / "public", root / "prepared" / "private"
    ids = list(range(100, 100 + len(LABELS)))
    values = [str(v) if metric == "accuracy" else str(v * 2.5) for v in LABELS]
    _csv(public / "train.csv", "id,x,label",
         [f"{i},{i % 7},{LABELS[i % len(LABELS)]}" for i in range(20)])
    _csv(public / "test.csv", "id,x", [f"{i},{i % 7}" for i in ids])
    _csv(public / "sample_submission.csv", "id,label", [f"{i},0" for i in ids])
    _csv(private / "test.csv", "id,label", [f"{i},{v}" for i, v in zip(ids, values, strict=True)])
    (root / "task.toml").write_text(f'metric = "{metric}"\ntarget = "label"\n', encoding="utf-8")
    scores = board if board is not None else (
        ACCURACY_BOARD if metric == "accuracy" else RMSE_BOARD)
    board_rows = [f"{n},{s}" for n, s in enumerate(scores)]
    if leaderboard_in == "root":
        _csv(root / "leaderboard.csv", "teamId,score", board_rows)
    elif leaderboard_in == "prepared":
        _csv(root / "prepared" / "leaderboard.csv", "teamId,score", board_rows)
    return root


def submission_with(path: Path, correct: int) -> Path:
    """A submission whose first `correct` labels are right and the rest wrong."""
    rows = [f"{100 + n},{label if n < correct else 1 - label}" for n, label in enumerate(LABELS)]
    return _csv(path, "id,label", rows)


def board_of(teams: int, *, lower_is_better: bool = False) -> list[float]:
    """Scores 1..teams, best first: descending, or ascending when lower is better."""
    scores = [float(n) for n in range(1, teams + 1)]
    return scores if lower_is_better else scores[::-1]


# Medal positions and thresholds


@pytest.mark.parametrize(("teams", "positions"), [
    (1, (1, 1, 1)), (5, (1, 1, 2)), (50, (5, 10, 20)), (99, (9, 19, 39)),
    (100, (10, 20, 40)), (150, (10, 30, 60)), (249, (10, 49, 99)),
    (250, (10, 50, 100)), (500, (11, 50, 100)), (999, (11, 50, 100)),
    (1000, (12, 50, 100)), (2000, (14, 100, 200)), (4321, (18, 216, 432)),
])
def test_medal_positions_follow_the_table(teams: int, positions: tuple[int, int, int]) -> None:
    assert medal_positions(teams) == positions


def test_medal_positions_equal_the_float_rule_for_every_size() -> None:
    for teams in range(1, 6000):
        if teams < 100:
            expected = (max(1, int(teams * 0.1)), max(1, int(teams * 0.2)),
                        max(1, int(teams * 0.4)))
        elif teams < 250:
            expected = (10, int(teams * 0.2), int(teams * 0.4))
        elif teams < 1000:
            expected = (10 + int(teams * 0.002), 50, 100)
        else:
            expected = (10 + int(teams * 0.002), int(teams * 0.05), int(teams * 0.1))
        assert medal_positions(teams) == expected, teams


def test_an_empty_leaderboard_sets_no_thresholds() -> None:
    with pytest.raises(LeaderboardError):
        thresholds([])


@pytest.mark.parametrize(("teams", "gold", "silver", "bronze"), [
    (50, 5, 10, 20), (150, 10, 30, 60), (500, 11, 50, 100), (2000, 14, 100, 200),
])
@pytest.mark.parametrize("lower_is_better", [False, True])
def test_thresholds_are_the_scores_at_the_medal_positions(
        teams: int, gold: int, silver: int, bronze: int, lower_is_better: bool) -> None:
    scores = board_of(teams, lower_is_better=lower_is_better)
    board = thresholds(scores)
    assert board.lower_is_better is lower_is_better
    assert (board.gold, board.silver, board.bronze) == (
        scores[gold - 1], scores[silver - 1], scores[bronze - 1])
    assert board.median == (teams + 1) / 2

    step = -0.5 if lower_is_better else 0.5  # half a place better
    assert board.rank(board.gold).gold
    assert board.rank(board.gold + step).gold
    assert board.rank(board.gold - step).silver
    assert board.rank(board.silver).silver
    assert board.rank(board.silver - step).bronze
    assert board.rank(board.bronze).bronze
    below = board.rank(board.bronze - step)
    assert not below.any and below.above_median


def test_medals_are_exclusive() -> None:
    medals = thresholds(board_of(50)).rank(1000.0)
    assert (medals.gold, medals.silver, medals.bronze, medals.any) == (True, False, False, True)


def test_the_median_itself_is_not_above_the_median() -> None:
    board = thresholds(board_of(51))  # median 26
    assert not board.rank(26.0).above_median
    assert board.rank(26.5).above_median
    lower = thresholds(board_of(51, lower_is_better=True))
    assert not lower.rank(26.0).above_median
    assert lower.rank(25.5).above_median


def test_ties_at_a_threshold_earn_the_medal() -> None:
    # 50 teams: gold at position 5, and positions 3-8 share 0.9.
    scores = [0.99, 0.95, *[0.9] * 6, *[0.5 - n / 1000 for n in range(42)]]
    board = thresholds(scores)
    assert board.gold == 0.9
    assert board.rank(0.9).gold


def test_ties_count_when_lower_is_better() -> None:
    scores = [0.1, 0.2, *[0.3] * 6, *[1.0 + n for n in range(42)]]
    board = thresholds(scores)
    assert board.lower_is_better and board.gold == 0.3
    assert board.rank(0.3).gold
    assert board.rank(0.30001).silver


def test_a_flat_leaderboard_counts_as_higher_is_better() -> None:
    assert thresholds([0.5] * 10).lower_is_better is False


def test_missing_scores_earn_nothing_and_are_left_out_of_the_median() -> None:
    board = thresholds([4.0, 3.0, math.nan, 1.0])
    assert board.median == 3.0
    assert board.rank(None) == board.rank(math.nan)
    assert not board.rank(math.nan).any and not board.rank(math.nan).above_median


# Finding and reading the leaderboard


def test_leaderboard_is_found_beside_prepared(tmp_path: Path) -> None:
    root = build_competition(tmp_path, leaderboard_in="root")
    assert find_leaderboard([root]) == root / "leaderboard.csv"


def test_leaderboard_is_found_inside_prepared(tmp_path: Path) -> None:
    root = build_competition(tmp_path, leaderboard_in="prepared")
    assert find_leaderboard([root]) == root / "prepared" / "leaderboard.csv"


def test_leaderboard_is_found_in_a_folder_given_first(tmp_path: Path) -> None:
    root = build_competition(tmp_path)
    elsewhere = _csv(tmp_path / "boards" / "leaderboard.csv", "score", ["1", "0"])
    assert find_leaderboard([elsewhere.parent, root]) == elsewhere


def test_a_missing_leaderboard_names_where_it_looked(tmp_path: Path) -> None:
    root = build_competition(tmp_path, leaderboard_in="none")
    with pytest.raises(LeaderboardError) as caught:
        find_leaderboard([root])
    assert str(root / "leaderboard.csv") in caught.value.message
    assert str(root / "prepared" / "leaderboard.csv") in caught.value.message


def test_leaderboard_reads_the_score_column_only(tmp_path: Path) -> None:
    path = _csv(tmp_path / "leaderboard.csv", "scoreNullable,teamId,hasTeamName,score,hasScore",
                ["0.9,1,False,0.91,True", ",2,False,,False", "0.5,3,True,0.5,True"])
    scores = read_leaderboard(path)
    assert scores[0] == 0.91 and math.isnan(scores[1]) and scores[2] == 0.5


def test_a_leaderboard_without_a_score_column_is_refused(tmp_path: Path) -> None:
    path = _csv(tmp_path / "leaderboard.csv", "teamId,points", ["1,0.5"])
    with pytest.raises(LeaderboardError, match="no 'score' column"):
        read_leaderboard(path)


# Per-competition reports


def test_the_answers_file_earns_gold(tmp_path: Path) -> None:
    root = build_competition(tmp_path)
    spec = load_task(root)
    report = grade_report(spec, root / "prepared" / "private" / "test.csv")
    assert report.score == 1.0 and report.gold_medal and report.any_medal
    assert report.valid_submission and report.submission_exists and report.above_median


def test_the_answers_file_earns_gold_when_lower_is_better(tmp_path: Path) -> None:
    root = build_competition(tmp_path, "tiny-rmse", metric="rmse")
    report = grade_report(load_task(root), root / "prepared" / "private" / "test.csv")
    assert report.is_lower_better and report.score == 0.0 and report.gold_medal


def test_the_sample_submission_earns_no_medal(tmp_path: Path) -> None:
    root = build_competition(tmp_path)
    spec = load_task(root)
    report = grade_report(spec, spec.public_dir / spec.sample_submission_file)
    assert report.score == 0.5 and report.valid_submission
    assert not report.any_medal and not report.above_median


@pytest.mark.parametrize(("correct", "medal"), [
    (10, "gold"), (9, "silver"), (8, "bronze"), (7, None),
])
def test_each_tier_is_earned_at_its_threshold(tmp_path: Path, correct: int,
                                              medal: str | None) -> None:
    root = build_competition(tmp_path)
    report = grade_report(load_task(root), submission_with(tmp_path / "s.csv", correct))
    assert report.score == correct / 10
    earned = [tier for tier in ("gold", "silver", "bronze")
              if getattr(report, f"{tier}_medal")]
    assert earned == ([medal] if medal else [])
    assert report.above_median is (correct / 10 > 0.745)


def test_report_has_mlebench_fields_in_order(tmp_path: Path) -> None:
    root = build_competition(tmp_path)
    submission = submission_with(tmp_path / "s.csv", 9)
    fields = grade_report(load_task(root), submission).to_dict()
    assert list(fields) == REPORT_FIELDS
    assert fields["competition_id"] == "tiny-accuracy"
    assert fields["submission_path"] == str(submission)
    assert (fields["gold_threshold"], fields["silver_threshold"], fields["bronze_threshold"],
            fields["median_threshold"]) == (0.95, 0.9, 0.8, 0.745)
    assert fields["is_lower_better"] is False
    assert datetime.fromisoformat(fields["created_at"])
    json.dumps(fields)


def test_an_invalid_submission_has_no_score(tmp_path: Path) -> None:
    root = build_competition(tmp_path)
    bad = _csv(tmp_path / "bad.csv", "id,prediction", [f"{100 + n},1" for n in range(10)])
    report = grade_report(load_task(root), bad)
    assert report.submission_exists and report.score is None
    assert not report.valid_submission and not report.any_medal and not report.above_median


def test_a_missing_submission_does_not_exist(tmp_path: Path) -> None:
    root = build_competition(tmp_path)
    report = grade_report(load_task(root), tmp_path / "nowhere.csv")
    assert not report.submission_exists and not report.valid_submission
    assert report.score is None and report.gold_threshold == 0.95


def test_a_submission_that_is_not_a_csv_does_not_exist(tmp_path: Path) -> None:
    root = build_competition(tmp_path)
    submission = submission_with(tmp_path / "s.csv", 10).rename(tmp_path / "s.txt")
    report = grade_report(load_task(root), submission)
    assert not report.submission_exists and report.score is None


def test_a_run_without_a_submission_is_reported(tmp_path: Path) -> None:
    root = build_competition(tmp_path)
    report = grade_report(load_task(root), None)
    assert not report.submission_exists and report.submission_path == ""


def test_no_private_answers_is_a_setup_error(tmp_path: Path) -> None:
    root = build_competition(tmp_path)
    (root / "prepared" / "private" / "test.csv").unlink()
    with pytest.raises(GradingError, match="no private answers"):
        grade_report(load_task(root), submission_with(tmp_path / "s.csv", 10))


def test_without_a_leaderboard_the_score_is_reported_with_null_medals_and_a_note(
        tmp_path: Path) -> None:
    root = build_competition(tmp_path, leaderboard_in="none")
    report = grade_report(load_task(root), submission_with(tmp_path / "s.csv", 9))
    assert report.score == 0.9 and report.valid_submission
    fields = report.to_dict()
    assert list(fields) == REPORT_FIELDS
    assert all(fields[key] is None for key in (
        "gold_threshold", "silver_threshold", "bronze_threshold", "median_threshold",
        "any_medal", "gold_medal", "silver_medal", "bronze_medal", "above_median"))
    assert fields["is_lower_better"] is False, "the metric's direction (accuracy)"
    assert any("leaderboard.csv" in note and "medals are null" in note for note in report.notes)
    assert aggregate([report])["total_medals"] == 0


def test_an_unreadable_leaderboard_is_still_a_setup_error(tmp_path: Path) -> None:
    root = build_competition(tmp_path, leaderboard_in="none")
    board = _csv(tmp_path / "board.csv", "team,points", ["a,1"])
    with pytest.raises(LeaderboardError, match="no 'score' column"):
        grade_report(load_task(root), submission_with(tmp_path / "s.csv", 10), leaderboard=board)


def test_a_given_leaderboard_wins(tmp_path: Path) -> None:
    root = build_competition(tmp_path)
    other = _csv(tmp_path / "other.csv", "score", ["0.2", "0.1"])
    report = grade_report(load_task(root), submission_with(tmp_path / "s.csv", 2),
                          leaderboard=other)
    assert report.gold_threshold == 0.2 and report.gold_medal


def test_score_is_rounded_to_five_decimals_before_ranking() -> None:
    board = Thresholds(gold=0.12346, silver=0.1, bronze=0.05, median=0.01, lower_is_better=False)
    report = CompetitionReport.ranked("c", 0.123456789, board, submission_exists=True,
                                      submission_path="s.csv")
    assert report.score == 0.12346 and report.gold_medal


def test_a_nan_score_is_valid_but_never_medals() -> None:
    board = thresholds(board_of(50))
    report = CompetitionReport.ranked("c", math.nan, board, submission_exists=True,
                                      submission_path="s.csv")
    assert report.valid_submission and report.score is not None and math.isnan(report.score)
    assert not report.any_medal and not report.above_median


# Aggregate report


def _report(competition_id: str, score: float | None, exists: bool = True) -> CompetitionReport:
    return CompetitionReport.ranked(competition_id, score, thresholds(board_of(50)),
                                    submission_exists=exists, submission_path="s.csv")


def test_aggregate_counts_runs_submissions_and_medals() -> None:
    reports = [
        _report("a", 50.0),             # gold
        _report("b", 41.0),             # silver (silver threshold 41)
        _report("c", 31.0),             # bronze (bronze threshold 31)
        _report("d", 30.0),             # above median only
        _report("e", 2.0),              # valid, nothing
        _report("f", None),             # invalid
        _report("g", None, exists=False),
    ]
    summary = aggregate(reports)
    assert list(summary) == [
        "total_runs", "total_runs_with_submissions", "total_valid_submissions", "total_medals",
        "total_gold_medals", "total_silver_medals", "total_bronze_medals", "total_above_median",
        "competition_reports"]
    assert {k: v for k, v in summary.items() if k != "competition_reports"} == {
        "total_runs": 7, "total_runs_with_submissions": 6, "total_valid_submissions": 5,
        "total_medals": 3, "total_gold_medals": 1, "total_silver_medals": 1,
        "total_bronze_medals": 1, "total_above_median": 4,
    }
    assert [r["competition_id"] for r in summary["competition_reports"]] == list("abcdefg")
    assert all(list(r) == REPORT_FIELDS for r in summary["competition_reports"])


def test_aggregate_is_written_with_a_timestamped_name(tmp_path: Path) -> None:
    summary = aggregate([_report("a", 50.0)])
    path = write_aggregate(summary, tmp_path / "out", now=datetime(2025, 1, 2, 3, 4, 5))
    assert path == tmp_path / "out" / "2025-01-02T03-04-05-GMT_grading_report.json"
    assert json.loads(path.read_text()) == summary


def test_the_aggregate_is_named_by_utc_time_as_mlebench_names_it(tmp_path: Path) -> None:
    # time.strftime("%Y-%m-%dT%H-%M-%S-%Z", time.gmtime()) in mlebench: UTC, zone "GMT"
    plus_two = timezone(timedelta(hours=2))
    path = write_aggregate(aggregate([]), tmp_path, now=datetime(2025, 1, 2, 3, 4, 5,
                                                                tzinfo=plus_two))
    assert path.name == "2025-01-02T01-04-05-GMT_grading_report.json"
    before = datetime.now(UTC).replace(microsecond=0)
    written = write_aggregate(aggregate([]), tmp_path / "now")
    stamp = datetime.strptime(written.name.split("-GMT")[0], "%Y-%m-%dT%H-%M-%S")
    assert abs((stamp.replace(tzinfo=UTC) - before).total_seconds()) < 60


def test_lite_split_is_the_22_competitions_of_mlebench_lite() -> None:
    assert len(LITE_COMPETITION_IDS) == 22
    assert in_split("spooky-author-identification", "lite")
    assert not in_split("spaceship-titanic", "lite")
    assert in_split("spaceship-titanic", None)


def test_a_leaderboard_that_is_a_link_is_never_followed(tmp_path: Path) -> None:
    elsewhere = _csv(tmp_path / "elsewhere.csv", "score", ["1", "0"])
    (tmp_path / "leaderboard.csv").symlink_to(elsewhere)
    with pytest.raises(LeaderboardError, match="symbolic link"):
        read_leaderboard(tmp_path / "leaderboard.csv")
