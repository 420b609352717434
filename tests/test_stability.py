"""Oracle stability across fine-tune repetitions (whichmodel.analysis.stability, issue 19),
worked out by hand on a constructed per-run table, and `analyze` writing it."""

from pathlib import Path

import polars as pl
import pytest

from whichmodel import cli
from whichmodel.analysis.stability import fraction_changed, oracle_stability
from whichmodel.core import schema

ROOT = Path(__file__).resolve().parents[1]
VTAB_CATALOG = ROOT / "pools" / "vtab.toml"
MODELS = ["sup-100", "sup-rotation-100", "sup-exemplar-100"]


def runs_table() -> pl.DataFrame:
    """Per (task, rep) the test accuracy of each model at its better-validation lr; the other lr
    has a higher test accuracy but lower validation, so it must not count."""
    best = {  # task -> the best model of each of 3 repetitions
        "Caltech101": ["sup-100", "sup-100", "sup-100"],  # stable
        "DTD": ["sup-100", "sup-rotation-100", "sup-100"],  # changes in rep 1
        "Pets": ["sup-100", "sup-rotation-100", "sup-exemplar-100"],  # changes every time
    }
    rows = []
    for task, winners in best.items():
        for rep, winner in enumerate(winners):
            for m in MODELS:
                acc = 0.8 if m == winner else 0.6 + 0.01 * MODELS.index(m)
                rows.append((m, task, 0.01, rep, 0.9, acc))
                rows.append((m, task, 0.1, rep, 0.5, 0.99))  # worse validation: ignored
    return pl.DataFrame(
        rows, schema=["model", "task", "lr", "rep", "val_acc", "test_acc"], orient="row"
    )


def test_best_model_changes_between_repetitions_by_hand(tmp_path):
    from whichmodel.analysis.tables import load_finetune_repetitions

    path = tmp_path / "runs.csv"
    runs_table().write_csv(path)
    got = oracle_stability(load_finetune_repetitions(path))
    assert got.schema == pl.Schema(schema.ORACLE_STABILITY)
    rows = {r["task"]: r for r in got.iter_rows(named=True)}
    assert rows["Caltech101"]["frac_rep_pairs_differ"] == 0.0
    assert rows["DTD"]["frac_rep_pairs_differ"] == pytest.approx(2 / 3)  # (0,1), (1,2) differ
    assert rows["Pets"]["frac_rep_pairs_differ"] == 1.0
    assert rows["DTD"]["best_per_rep"] == "sup-100 | sup-rotation-100 | sup-100"
    # median over reps: DTD sup-100 0.8 (2 of 3); Pets: each 0.8 once, median of the rest
    assert rows["DTD"]["oracle_best"] == "sup-100"
    assert rows["DTD"]["reps_agreeing_with_oracle"] == 2
    assert rows["Pets"]["oracle_best"] == "sup-exemplar-100"  # medians 0.60, 0.61, 0.62
    assert rows["Pets"]["reps_agreeing_with_oracle"] == 1
    assert [rows[t]["changes"] for t in ("Caltech101", "DTD", "Pets")] == [False, True, True]
    assert fraction_changed(got) == pytest.approx(2 / 3)


def test_analyze_writes_oracle_stability_for_several_repetitions(tmp_path):
    path = tmp_path / "runs.csv"
    runs_table().write_csv(path)
    argv = ["analyze", "--catalog", str(VTAB_CATALOG), "--finetune", str(path), "--pools", "All"]
    assert cli.main([*argv, "--out", str(tmp_path / "out"), "--bootstrap", "0"]) == 0
    table = pl.read_csv(tmp_path / "out" / "oracle_stability.csv")
    assert table["frac_rep_pairs_differ"].to_list() == pytest.approx([0.0, 2 / 3, 1.0])


def test_the_report_says_how_often_the_oracle_changes_or_that_it_cannot_tell(tmp_path):
    from whichmodel.analysis.analyze import analyze
    from whichmodel.analysis.report import ReportData, render
    from whichmodel.analysis.tables import load_finetune, load_finetune_repetitions
    from whichmodel.core.catalog import load_catalogue

    path = tmp_path / "runs.csv"
    runs_table().write_csv(path)
    a = analyze(load_catalogue(VTAB_CATALOG), load_finetune(path), pool_names=["All"],
                bootstrap=0)  # fmt: skip
    stability = oracle_stability(load_finetune_repetitions(path))
    page = render(ReportData(title="t", config_text="", analysis=a, stability=stability))
    assert "changes between fine-tune repetitions on 2 of 3 task(s)" in page
    assert "DTD: sup-100 | sup-rotation-100 | sup-100" in page
    note = "Measured: at 24 steps it changed on 4 of 6 tasks."
    page = render(ReportData(title="t", config_text="", analysis=a, oracle_note=note))
    assert "is one fine-tune repetition per model and task" in page and note in page


def test_a_preset_oracle_note_is_text(tmp_path):
    from whichmodel.core.errors import UserError
    from whichmodel.core.presets import PRESETS_FILE, load_preset

    assert "changed on 3 of the 6 tasks" in load_preset("demo")["oracle_note"]
    text = PRESETS_FILE.read_text()
    bad = text[text.index("[demo]") :].replace('oracle_note = """', 'oracle_note = 3\nx = """')
    (tmp_path / "p.toml").write_text(bad)
    with pytest.raises(UserError, match="oracle_note must be text"):
        load_preset(f"{tmp_path / 'p.toml'}:demo")
