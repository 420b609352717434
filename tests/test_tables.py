"""Input tables: the protocol's aggregation of per-run fine-tunes, and validation."""

import statistics

import polars as pl
import pytest

from whichmodel.analysis.tables import load_finetune, load_scores
from whichmodel.core.errors import UserError


def test_per_run_table_keeps_best_val_lr_per_rep_then_median_test(tmp_path):
    runs = [
        # model, task, lr, rep, val_acc, test_acc
        ("a", "t", 0.1, 0, 0.80, 0.70),
        ("a", "t", 0.01, 0, 0.85, 0.75),  # rep 0 keeps lr 0.01 → 0.75
        ("a", "t", 0.1, 1, 0.90, 0.60),  # rep 1 keeps lr 0.1 → 0.60
        ("a", "t", 0.01, 1, 0.50, 0.99),
        ("a", "t", 0.1, 2, 0.70, 0.65),  # tie on val: the smaller lr, 0.01 → 0.72
        ("a", "t", 0.01, 2, 0.70, 0.72),
        ("b", "t", 0.1, 0, 0.5, 0.5),
    ]
    path = tmp_path / "ft.parquet"
    cols = ["model", "task", "lr", "rep", "val_acc", "test_acc"]
    pl.DataFrame(runs, schema=cols, orient="row").write_parquet(path)
    out = load_finetune(path).sort("model")
    assert out["test_acc"].to_list() == [statistics.median([0.75, 0.60, 0.72]), 0.5]


def _write_csv(tmp_path, text, name="ft.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("model,task,test_acc\na,t,1.5\n", "'a', task 't' is 1.5"),
        ("model,task,test_acc\na,t,NaN\n", "is missing"),
        ("model,task,test_acc\na,t,\n", "is missing"),
        ("model,task,test_acc\na,t,0.5\na,t,0.6\n", "duplicate rows for model 'a', task 't'"),
        ("model,task\na,t\n", "lacks column(s) test_acc"),
        ("model,task,test_acc,lr\na,t,0.5,0.1\n", "lacks rep, val_acc"),
        ("model,task,test_acc\n", "no rows"),
        ("model,task,test_acc\na,t,high\n", "column 'test_acc' is String"),
    ],
)
def test_bad_finetune_tables_name_file_and_entry(tmp_path, text, needle):
    path = _write_csv(tmp_path, text)
    with pytest.raises(UserError) as err:
        load_finetune(path)
    msg = str(err.value)
    assert str(path) in msg and needle in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("model,task,proxy,score\na,t,linear,NaN\n", "not a finite number"),
        ("model,task,proxy,score\na,t,linear,1\na,t,linear,2\n", "duplicate rows"),
        ("model,task,proxy,score\na,t,oracle,1\n", "proxy name 'oracle'"),
        ("model,task,proxy,score\na,t,hybrid_x,1\n", "proxy name 'hybrid_x'"),
        ("model,task,proxy,score\na,t,similar_tasks_x,1\n", "proxy name 'similar_tasks_x'"),
    ],
)
def test_bad_scores_tables(tmp_path, text, needle):
    path = _write_csv(tmp_path, text, "scores.csv")
    with pytest.raises(UserError, match="scores.csv") as err:
        load_scores(path)
    assert needle in str(err.value)


def test_null_score_means_not_applicable(tmp_path):
    path = _write_csv(tmp_path, "model,task,proxy,score\na,t,leep,\nb,t,leep,0.3\n", "s.csv")
    assert load_scores(path)["score"].to_list() == [None, 0.3]
