"""Competitions as `mlebench prepare` lays them out: known ids, odd file names, data that is not
a table, several scored columns, and the sample submission kept only in private/."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlmaster_daemon.errors import InvalidTaskDir
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.preview import data_preview
from mlmaster_daemon.tasks.registry import competitions, split_ids
from mlmaster_daemon.tasks.spec import Metric, TaskOverrides


def prepare(data_dir: Path, competition: str, public: dict[str, str],
            private: dict[str, str] | None = None) -> Path:
    """<data_dir>/<competition>/prepared/{public,private} with the given files."""
    root = data_dir / competition
    for side, files in (("public", public), ("private", private or {})):
        folder = root / "prepared" / side
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
    return root


def test_the_registry_knows_the_lite_22_the_full_75_and_the_dev_7() -> None:
    # experiments/splits in mle-bench 783b15a: low.txt 22, medium.txt 38, high.txt 15, dev.txt 7
    assert len(split_ids("lite")) == 22 and len(split_ids("dev")) == 7
    assert (len(split_ids("medium")), len(split_ids("high"))) == (38, 15)
    assert len(split_ids("full")) == 75 and set(split_ids("lite")) <= set(split_ids("full"))
    assert "spaceship-titanic" in split_ids("dev")
    assert competitions()["nomad2018-predict-transparent-conductors"].metric is Metric.RMSLE
    with pytest.raises(ValueError, match="unknown split"):
        split_ids("heavy")


def test_a_known_competition_needs_no_task_toml(tmp_path: Path) -> None:
    root = prepare(tmp_path, "spaceship-titanic", {
        "train.csv": "PassengerId,HomePlanet,Transported\n0001_01,Earth,True\n",
        "test.csv": "PassengerId,HomePlanet\n0002_01,Mars\n",
        "sample_submission.csv": "PassengerId,Transported\n0002_01,False\n",
        "description.md": "# Spaceship Titanic\n",
    })
    spec = load_task(root)
    assert (spec.metric, spec.lower_is_better) == (Metric.ACCURACY, False)
    assert (spec.id_column, spec.target, spec.competition_id) == (
        "PassengerId", "Transported", "spaceship-titanic")
    assert spec.description == "# Spaceship Titanic\n"


def test_the_public_folder_itself_resolves_to_the_known_competition(tmp_path: Path) -> None:
    root = prepare(tmp_path, "tabular-playground-series-dec-2021", {
        "train.csv": "Id,Elevation,Cover_Type\n1,3000,2\n",
        "test.csv": "Id,Elevation\n2,2900\n",
        "sample_submission.csv": "Id,Cover_Type\n2,2\n",
    })
    spec = load_task(root / "prepared" / "public")
    assert spec.competition_id == "tabular-playground-series-dec-2021"
    assert spec.root == root and spec.target == "Cover_Type"


def test_json_data_and_a_sampleSubmission_csv(tmp_path: Path) -> None:
    root = prepare(tmp_path, "random-acts-of-pizza", {
        "train.json": '[{"request_id": "t3_a", "requester_received_pizza": true}]',
        "test.json": '[{"request_id": "t3_b"}]',
        "sampleSubmission.csv": "request_id,requester_received_pizza\nt3_b,0\n",
    })
    spec = load_task(root)
    assert (spec.train_file, spec.test_file) == ("train.json", "test.json")
    assert spec.sample_submission_file == "sampleSubmission.csv"
    assert "No training table (train.json)" in data_preview(spec)


def test_a_training_file_that_is_not_train_csv(tmp_path: Path) -> None:
    root = prepare(tmp_path, "new-york-city-taxi-fare-prediction", {
        "labels.csv": "key,fare_amount,passenger_count\nk1,4.5,1\n",
        "test.csv": "key,passenger_count\nk2,2\n",
        "sample_submission.csv": "key,fare_amount\nk2,11.35\n",
    })
    spec = load_task(root)
    assert (spec.train_file, spec.metric, spec.lower_is_better) == ("labels.csv", Metric.RMSE,
                                                                    True)
    assert "labels.csv: 1 rows" in data_preview(spec)


def test_images_in_folders_and_no_test_table(tmp_path: Path) -> None:
    root = prepare(tmp_path, "aerial-cactus-identification", {
        "train.csv": "id,has_cactus\na.jpg,1\n",
        "train/a.jpg": "not really a jpeg",
        "test/b.jpg": "not really a jpeg",
        "sample_submission.csv": "id,has_cactus\nb.jpg,0.5\n",
    })
    spec = load_task(root)
    assert spec.test_file == "" and spec.metric is Metric.ROC_AUC
    assert "No test table" in data_preview(spec)


def test_several_scored_columns(tmp_path: Path) -> None:
    labels = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
    root = prepare(tmp_path, "jigsaw-toxic-comment-classification-challenge", {
        "train.csv": f"id,comment_text,{','.join(labels)}\na,hi,{','.join('0' * 6)}\n",
        "test.csv": "id,comment_text\nb,yo\n",
        "sample_submission.csv": f"id,{','.join(labels)}\nb,{','.join(['0.5'] * 6)}\n",
    })
    spec = load_task(root)
    assert spec.targets == tuple(labels) and spec.scored_columns == tuple(labels)
    assert spec.target == "toxic"


def test_a_sample_submission_kept_only_in_private(tmp_path: Path) -> None:
    root = prepare(tmp_path, "text-normalization-challenge-english-language", {
        "en_train.csv": "sentence_id,token_id,class,before,after\n0,0,PLAIN,a,a\n",
        "en_test_2.csv": "sentence_id,token_id,before\n1,0,b\n",
        "en_sample_submission_2.csv.zip": "PK",
    }, {"en_sample_submission_2.csv": "id,after\n1_0,b\n", "answers.csv": "id,after\n1_0,b\n"})
    spec = load_task(root)
    assert spec.sample_submission_file == "../private/en_sample_submission_2.csv"
    assert (spec.public_dir / spec.sample_submission_file).is_file()


def test_one_hot_log_loss_scores_the_class_columns_and_keeps_the_training_label(
        tmp_path: Path) -> None:
    root = prepare(tmp_path, "spooky-author-identification", {
        "train.csv": "id,text,author\nid1,It was,EAP\n",
        "test.csv": "id,text\nid2,The\n",
        "sample_submission.csv": "id,EAP,HPL,MWS\nid2,0.4,0.3,0.3\n",
    })
    spec = load_task(root)
    assert (spec.metric, spec.target) == (Metric.LOG_LOSS, "author")
    assert spec.scored_columns == ("EAP", "HPL", "MWS")


def test_detecting_insults_loads_with_rows_matched_by_comment(tmp_path: Path) -> None:
    root = prepare(tmp_path, "detecting-insults-in-social-commentary", {
        "train.csv": "Insult,Date,Comment\n1,2012,x\n",
        "test.csv": "Date,Comment\n2012,y\n",
        "sample_submission_null.csv": "Insult,Date,Comment\n0,2012,y\n",
    })
    spec = load_task(root)
    assert (spec.id_column, spec.target) == ("Comment", "Insult")


def test_a_competition_scored_by_its_own_metric_loads_with_the_competitions_direction(
        tmp_path: Path) -> None:
    root = prepare(tmp_path, "AI4Code", {
        "train_orders.csv": "id,cell_order\na,x y\n",
        "sample_submission.csv": "id,cell_order\nb,x y\n",
    })
    spec = load_task(root)
    assert spec.metric is Metric.COMPETITION and spec.lower_is_better is False
    with pytest.raises(InvalidTaskDir, match="contradicts AI4Code's own metric"):
        load_task(root, TaskOverrides(lower_is_better=True))


def test_the_competition_metric_needs_a_known_competition(tmp_path: Path) -> None:
    root = prepare(tmp_path, "my-comp", {
        "train.csv": "id,a,y\n1,0.1,1\n", "test.csv": "id,a\n2,0.2\n",
        "sample_submission.csv": "id,y\n2,0\n",
    })
    with pytest.raises(InvalidTaskDir, match="is not one"):
        load_task(root, TaskOverrides(metric="competition"))


def test_a_registry_entry_without_a_grader_or_a_reason_is_refused() -> None:
    from mlmaster_daemon.tasks.registry import _competition

    entry = {"id_column": "id", "split": "full", "modality": "text"}
    with pytest.raises(ValueError, match="names no grader"):
        _competition("x", {**entry, "split": "medium", "metric": "competition",
                           "lower_is_better": False})
    with pytest.raises(ValueError, match="needs lower_is_better"):
        _competition("x", {**entry, "split": "medium", "unsupported": "why"})


def test_task_toml_can_describe_an_unknown_competition_fully(tmp_path: Path) -> None:
    root = prepare(tmp_path, "my-comp", {
        "data.csv": "rid,a,y1,y2\n1,0.1,1,2\n",
        "sample_submission.csv": "rid,y1,y2\n9,0,0\n",
    })
    (root / "task.toml").write_text(
        'metric = "rmsle"\nid_column = "rid"\ntargets = ["y1", "y2"]\n'
        'train_file = "data.csv"\ntest_file = ""\n')
    spec = load_task(root)
    assert spec.targets == ("y1", "y2") and spec.train_file == "data.csv"
    assert spec.test_file == "" and spec.competition_id is None


def test_task_toml_targets_must_be_a_list_of_names(tmp_path: Path) -> None:
    root = prepare(tmp_path, "my-comp", {
        "train.csv": "id,a,y\n1,0.1,1\n", "test.csv": "id,a\n2,0.2\n",
        "sample_submission.csv": "id,y\n2,0\n",
    })
    (root / "task.toml").write_text('metric = "rmse"\ntargets = "y"\n')
    with pytest.raises(InvalidTaskDir, match="list of column names"):
        load_task(root)


def test_a_scored_column_missing_from_the_sample_is_named(tmp_path: Path) -> None:
    root = prepare(tmp_path, "nomad2018-predict-transparent-conductors", {
        "train.csv": "id,x,formation_energy_ev_natom,bandgap_energy_ev\n1,0,0.1,2\n",
        "test.csv": "id,x\n2,0\n",
        "sample_submission.csv": "id,formation_energy_ev_natom\n2,0.1\n",
    })
    with pytest.raises(InvalidTaskDir, match="'bandgap_energy_ev' is not a column"):
        load_task(root)


def _zip(path: Path, member: str, text: str) -> None:
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, text)


def test_training_data_kept_only_in_zip_archives_loads_and_previews(tmp_path: Path) -> None:
    root = prepare(tmp_path, "text-normalization-challenge-english-language", {}, {
        "answers.csv": "id,after\n1_0,b\n", "sample_submission.csv": "id,after\n1_0,b\n"})
    public = root / "prepared" / "public"
    _zip(public / "en_train.csv.zip", "en_train.csv",
         '"sentence_id","token_id","class","before","after"\n0,0,"PLAIN","a","a"\n'
         '0,1,"DATE","1999","nineteen ninety nine"\n')
    _zip(public / "en_test_2.csv.zip", "en_test_2.csv",
         '"sentence_id","token_id","before"\n1,0,"b"\n')
    _zip(public / "en_sample_submission_2.csv.zip", "en_sample_submission_2.csv",
         '"id","after"\n"1_0","b"\n')
    spec = load_task(root)
    assert (spec.train_file, spec.test_file) == ("en_train.csv.zip", "en_test_2.csv.zip")
    assert spec.sample_submission_file == "../private/sample_submission.csv"
    preview = data_preview(spec)
    assert "en_train.csv.zip: 2 rows x 5 columns" in preview
    assert "en_test_2.csv.zip: 1 rows x 3 columns" in preview
    assert "nineteen ninety nine" in preview


def test_a_tsv_inside_a_zip_is_read_with_tabs(tmp_path: Path) -> None:
    root = prepare(tmp_path, "movie-review-sentiment-analysis-kernels-only", {
        "sampleSubmission.csv": "PhraseId,Sentiment\n3,2\n",
    }, {"answers.csv": "PhraseId,SentenceId,Phrase,Sentiment\n3,1,good,3\n"})
    public = root / "prepared" / "public"
    _zip(public / "train.tsv.zip", "train.tsv",
         "PhraseId\tSentenceId\tPhrase\tSentiment\n1\t1\ta fine film\t3\n2\t1\tfine\t2\n")
    _zip(public / "test.tsv.zip", "test.tsv", "PhraseId\tSentenceId\tPhrase\n3\t1\tgood\n")
    spec = load_task(root)
    preview = data_preview(spec)
    assert "train.tsv.zip: 2 rows x 4 columns" in preview
    assert "Target Sentiment distribution (2 classes)" in preview


def test_invasive_species_loads_from_its_archives_and_the_private_sample(tmp_path: Path) -> None:
    root = prepare(tmp_path, "invasive-species-monitoring", {
        "train.7z": "7z, holding no images (an mle-bench bug)", "test.7z": "7z",
    }, {"answers.csv": "name,invasive\n3,1\n", "sample_submission.csv": "name,invasive\n3,0.5\n"})
    public = root / "prepared" / "public"
    _zip(public / "train_labels.csv.zip", "train_labels.csv", "name,invasive\n1,0\n2,1\n")
    _zip(public / "sample_submission.csv.zip", "sample_submission.csv", "name,invasive\n3,0.5\n")
    spec = load_task(root)
    assert spec.train_file == "train_labels.csv.zip"
    assert spec.sample_submission_file == "../private/sample_submission.csv"
    assert "train_labels.csv.zip: 2 rows x 2 columns" in data_preview(spec)


def test_an_archive_that_is_a_link_out_of_the_folder_is_never_read(tmp_path: Path) -> None:
    root = prepare(tmp_path, "movie-review-sentiment-analysis-kernels-only", {
        "sampleSubmission.csv": "PhraseId,Sentiment\n3,2\n",
    })
    secret = tmp_path / "elsewhere.zip"
    _zip(secret, "train.tsv", "PhraseId\tSecret\n1\thunter2\n")
    public = root / "prepared" / "public"
    (public / "train.tsv.zip").symlink_to(secret)
    _zip(public / "test.tsv.zip", "test.tsv", "PhraseId\tPhrase\n3\tgood\n")
    with pytest.raises(InvalidTaskDir, match=r"symbolic link leading out of .*copy the archive"
                       ) as caught:
        load_task(root)
    assert "hunter2" not in caught.value.message


def test_an_archive_linked_within_the_public_folder_is_read(tmp_path: Path) -> None:
    root = prepare(tmp_path, "movie-review-sentiment-analysis-kernels-only", {
        "sampleSubmission.csv": "PhraseId,Sentiment\n3,2\n",
    })
    public = root / "prepared" / "public"
    _zip(public / "raw" / "train.tsv.zip", "train.tsv", "PhraseId\tSentiment\n1\t2\n")
    (public / "train.tsv.zip").symlink_to(Path("raw") / "train.tsv.zip")
    _zip(public / "test.tsv.zip", "test.tsv", "PhraseId\tPhrase\n3\tgood\n")
    assert "train.tsv.zip: 1 rows x 2 columns" in data_preview(load_task(root))


@pytest.mark.parametrize("competition", sorted(competitions()), ids=str)
def test_every_registered_competition_loads_or_says_why_it_cannot_run(
        tmp_path: Path, competition: str) -> None:
    known = competitions()[competition]
    columns = [known.id_column, *(known.targets or ("prediction",))]
    sample = known.sample or "sample_submission.csv"
    root = prepare(tmp_path, competition, {
        "train.csv": ",".join(columns) + "\n" + ",".join("1" for _ in columns) + "\n",
        sample: ",".join(columns) + "\n" + ",".join("0" for _ in columns) + "\n",
        **{name: "x\n1\n" for name in (known.train_file, known.test_file)
           if name and not name.endswith(".zip")},
    })
    for name in (known.train_file, known.test_file):
        if name and name.endswith(".zip"):
            _zip(root / "prepared" / "public" / name, name.removesuffix(".zip"), "x\n1\n")
    if known.unsupported:
        with pytest.raises(InvalidTaskDir, match="cannot be run here yet"):
            load_task(root)
        return
    spec = load_task(root)
    assert (spec.metric, spec.id_column) == (known.metric, known.id_column)
    assert spec.scored_columns == known.targets and spec.competition_id == competition


def test_a_huge_table_in_an_archive_is_previewed_from_its_first_bytes_only(
        tmp_path: Path) -> None:
    import zipfile

    from mlmaster_daemon.tasks import archives

    root = prepare(tmp_path, "movie-review-sentiment-analysis-kernels-only", {
        "sampleSubmission.csv": "PhraseId,Sentiment\n3,2\n",
    })
    public = root / "prepared" / "public"
    # 200 MB of rows compress to well under 1 MB: only a bounded head is ever decompressed
    with zipfile.ZipFile(public / "train.tsv.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("train.tsv", "w") as member:
            member.write(b"PhraseId\tSentiment\n")
            row = b"1\t2\n" * 250_000
            for _ in range(200):
                member.write(row)
    _zip(public / "test.tsv.zip", "test.tsv", "PhraseId\tPhrase\n3\tgood\n")
    assert len(archives.read_head(public, "train.tsv.zip", 1000)) == 1001
    preview = data_preview(load_task(root))
    assert "train.tsv.zip: 50000000 rows x 2 columns (statistics from the first 20000 rows)" \
        in preview


def test_an_archive_holding_several_tables_says_which_it_wanted(tmp_path: Path) -> None:
    import zipfile

    root = prepare(tmp_path, "movie-review-sentiment-analysis-kernels-only", {
        "sampleSubmission.csv": "PhraseId,Sentiment\n3,2\n",
    })
    public = root / "prepared" / "public"
    with zipfile.ZipFile(public / "train.tsv.zip", "w") as archive:
        archive.writestr("a.tsv", "x\n1\n")
        archive.writestr("b.tsv", "x\n1\n")
    _zip(public / "test.tsv.zip", "test.tsv", "PhraseId\tPhrase\n3\tgood\n")
    with pytest.raises(InvalidTaskDir, match=r"holds 2 tables, not one named train\.tsv"):
        load_task(root)


def test_the_profile_counts_the_rows_and_features_of_a_zipped_table(tmp_path: Path) -> None:
    from mlmaster_daemon.tasks.profile import task_profile

    root = prepare(tmp_path, "movie-review-sentiment-analysis-kernels-only", {
        "sampleSubmission.csv": "PhraseId,Sentiment\n3,2\n",
    })
    public = root / "prepared" / "public"
    _zip(public / "train.tsv.zip", "train.tsv",
         "PhraseId\tSentenceId\tPhrase\tSentiment\n1\t1\ta fine film\t3\n2\t1\tfine\t2\n")
    _zip(public / "test.tsv.zip", "test.tsv", "PhraseId\tSentenceId\tPhrase\n3\t1\tgood\n")
    profile = task_profile(load_task(root))
    assert (profile.modality, profile.n_rows, profile.n_features) == ("text", 2, 2)
