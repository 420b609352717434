"""Catalogue loading, pool evaluation and validation; the reference catalogues and tables."""

from __future__ import annotations

import csv
from pathlib import Path

import polars as pl
import pytest

from whichmodel.core.catalog import Catalogue, load_catalogue
from whichmodel.core.errors import UserError
from whichmodel.core.schema import CATALOGUE

POOLS = Path(__file__).resolve().parents[1] / "pools"
DATA = POOLS / "data"


def _csv_rows(name: str) -> list[dict[str, str]]:
    with (DATA / name).open(newline="") as fh:
        return list(csv.DictReader(fh))


PAPER_ROWS = _csv_rows("paper_models_46.csv")


@pytest.fixture(scope="module")
def paper() -> Catalogue:
    return load_catalogue(POOLS / "paper.toml")


@pytest.fixture(scope="module")
def vtab() -> Catalogue:
    return load_catalogue(POOLS / "vtab.toml")


# ---------------------------------------------------------------------------------------------
# reference catalogues


def test_paper_catalogue_has_46_models_with_schema_dtypes(paper: Catalogue) -> None:
    assert paper.models.height == 46
    assert paper.models.schema == pl.Schema(CATALOGUE)
    assert paper.models["model"].to_list() == [r["model"] for r in PAPER_ROWS]  # file order
    assert paper.pool_names() == ["All", "ResNet-50", "Dim2048", "Expert", "ImNetAccuracies"]


def test_paper_catalogue_values_match_csv(paper: Catalogue) -> None:
    for row, raw in zip(paper.models.iter_rows(named=True), PAPER_ROWS, strict=True):
        assert row["family"] == raw["group"]
        assert row["params"] == int(raw["params"])
        assert row["dim"] == int(raw["dim"])
        top1 = float(raw["imagenet_top1"]) if raw["imagenet_top1"] else None
        assert row["imagenet_top1"] == top1
        if raw["tfhub_handle"].startswith("https://"):
            assert row["source"] == raw["tfhub_handle"]
        if raw["group"] == "expert":
            assert row["upstream_dataset"].startswith("jft")
            assert (row["upstream_size"] is None) == (raw["model"] != "Full JFT")
        else:
            assert (row["upstream_dataset"], row["upstream_size"]) == ("imagenet", 1281167)


RESNET50_V2 = next(int(r["params"]) for r in PAPER_ROWS if r["model"] == "resnet_v2_50")
PAPER_POOL_RULES = {
    "All": lambda r: True,
    "ResNet-50": lambda r: int(r["params"]) <= RESNET50_V2,
    "Dim2048": lambda r: int(r["dim"]) <= 2048,
    "Expert": lambda r: r["group"] == "expert",
    "ImNetAccuracies": lambda r: r["imagenet_top1"] != "",
}


@pytest.mark.parametrize("name", list(PAPER_POOL_RULES))
def test_paper_pools_match_independent_computation(paper: Catalogue, name: str) -> None:
    expected = [r["model"] for r in PAPER_ROWS if PAPER_POOL_RULES[name](r)]
    members = paper.pool(name)
    assert members["model"].to_list() == expected
    assert members.schema == paper.models.schema


def test_paper_pool_sizes(paper: Catalogue) -> None:
    sizes = {name: paper.pool(name).height for name in paper.pool_names()}
    assert sizes == {"All": 46, "ResNet-50": 17, "Dim2048": 44, "Expert": 16, "ImNetAccuracies": 15}


def test_vtab_catalogue(paper: Catalogue, vtab: Catalogue) -> None:
    assert vtab.models.height == 15
    assert vtab.models.schema == pl.Schema(CATALOGUE)
    assert vtab.pool_names() == ["All", "Dim2048", "ResNet-50"]
    same = paper.models.filter(pl.col("family") == "vtab")
    assert vtab.models.equals(same)  # same names and metadata, same order
    assert vtab.pool("Dim2048").height == 15
    assert vtab.pool("ResNet-50")["model"].to_list() == [
        r["model"] for r in PAPER_ROWS if r["group"] == "vtab" and int(r["params"]) <= RESNET50_V2
    ]


def test_vtab_finetune_table_matches_raw_csv(vtab: Catalogue) -> None:
    table = _csv_rows("vtab1k_finetune.csv")
    assert len(table) == 285
    assert list(table[0]) == ["model", "task", "category", "test_acc"]
    names = set(vtab.models["model"])
    assert {r["model"] for r in table} == names
    assert len({(r["model"], r["task"]) for r in table}) == 285
    tasks = {r["task"] for r in table}
    assert len(tasks) == 19
    categories = {(r["task"], r["category"]) for r in table}
    assert len(categories) == 19  # one category per task
    counts = {c: sum(1 for _, cat in categories if cat == c) for c in {c for _, c in categories}}
    assert counts == {"natural": 7, "specialized": 4, "structured": 8}

    name_by_hub = {r["tfhub_handle"]: r["model"] for r in PAPER_ROWS}
    raw = {
        (name_by_hub[r["hub"]], r["dataset"]): float(r["finetune_test_acc"])
        for r in _csv_rows("vtab1k_official_finetune.csv")
        if r["model"] != "From-Scratch"
    }
    assert {(r["model"], r["task"]): float(r["test_acc"]) for r in table} == raw


def test_vtab_finetune_reads_with_polars() -> None:
    df = pl.read_csv(DATA / "vtab1k_finetune.csv")
    assert df.schema == pl.Schema(
        {"model": pl.String, "task": pl.String, "category": pl.String, "test_acc": pl.Float64}
    )


# ---------------------------------------------------------------------------------------------
# small catalogues written here

MODEL_A = """
[[models]]
model = "a"
family = "imagenet"
source = "timm:a"
upstream_dataset = "imagenet"
upstream_size = 1281167
imagenet_top1 = 0.75
params = 100
dim = 2048
"""
MODEL_B = """
[[models]]
model = "b"
family = "expert"
source = "file:b.safetensors"
upstream_dataset = "fashion-mnist"
params = 50
dim = 512
"""
MODEL_C = """
[[models]]
model = "c"
family = "expert"
source = "file:c.safetensors"
upstream_dataset = "mnist"
upstream_size = 5000
params = 300
dim = 4096
"""
GOOD = MODEL_A + MODEL_B + MODEL_C


def _write(tmp_path: Path, text: str, name: str = "bad.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_small_catalogue_keeps_file_order_and_nulls(tmp_path: Path) -> None:
    text = MODEL_C + MODEL_A + MODEL_B + '[pools]\nAll = "true"\nSmall = "dim <= 2048"\n'
    cat = load_catalogue(_write(tmp_path, text, "ok.toml"))
    assert cat.models["model"].to_list() == ["c", "a", "b"]
    assert cat.models.columns == list(CATALOGUE)
    b = cat.models.row(2, named=True)
    assert b["upstream_size"] is None and b["imagenet_top1"] is None
    assert cat.pool("Small")["model"].to_list() == ["a", "b"]
    assert cat.pool("All")["model"].to_list() == ["c", "a", "b"]


def test_member_list_pool_is_in_catalogue_order(tmp_path: Path) -> None:
    text = GOOD + '[pools]\nPicked = ["c", "a"]\nOne = ["b"]\n'
    cat = load_catalogue(_write(tmp_path, text, "ok.toml"))
    assert cat.pools == {"Picked": ["c", "a"], "One": ["b"]}
    assert cat.pool("Picked")["model"].to_list() == ["a", "c"]
    assert cat.pool("One")["model"].to_list() == ["b"]


def test_predicates_null_does_not_select(tmp_path: Path) -> None:
    text = GOOD + (
        "[pools]\n"
        'Acc = "imagenet_top1 > 0.5"\n'
        'Big = "upstream_size > 1000 OR upstream_size IS NULL"\n'
        "Experts = \"family = 'expert' AND model LIKE 'b%'\"\n"
    )
    cat = load_catalogue(_write(tmp_path, text, "ok.toml"))
    assert cat.pool("Acc")["model"].to_list() == ["a"]
    assert cat.pool("Big")["model"].to_list() == ["a", "b", "c"]
    assert cat.pool("Experts")["model"].to_list() == ["b"]


def test_no_pools_table_is_allowed(tmp_path: Path) -> None:
    cat = load_catalogue(_write(tmp_path, GOOD, "ok.toml"))
    assert cat.pool_names() == []
    assert cat.models.height == 3


def test_unknown_pool_lists_available(tmp_path: Path) -> None:
    cat = load_catalogue(_write(tmp_path, GOOD + '[pools]\nAll = "true"\n', "ok.toml"))
    with pytest.raises(UserError, match=r"ok\.toml.*'Nope'.*'All'"):
        cat.pool("Nope")


def _replace(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


BAD_CASES = {
    # name: (toml text, entry the message must name, other text it must contain)
    "not toml": ("[[models]\nmodel = ", "bad.toml", "not valid TOML"),
    "no models": ('[pools]\nAll = "true"\n', "bad.toml", "no [[models]]"),
    "models not tables": ('models = ["a"]\n', "bad.toml", "array of tables"),
    "unknown top-level": (GOOD + "[pool]\nAll = 'true'\n", "'pool'", "unknown top-level"),
    "unknown column": (_replace(GOOD, 'model = "b"', 'model = "b"\nsize = 3'), "'b'", "'size'"),
    "missing required": (_replace(GOOD, "params = 50\n", ""), "'b'", "'params'"),
    "missing model": (_replace(GOOD, 'model = "b"\n', ""), "#2", "'model'"),
    "empty model name": (_replace(GOOD, 'model = "b"', 'model = ""'), "#2", "non-empty"),
    "model name not str": (_replace(GOOD, 'model = "b"', "model = 7"), "#2", "non-empty"),
    "params string": (_replace(GOOD, "params = 50", 'params = "50"'), "'b'", "'params'"),
    "params negative": (_replace(GOOD, "params = 50", "params = -5"), "'b'", "'params'"),
    "dim zero": (_replace(GOOD, "dim = 512", "dim = 0"), "'b'", "'dim'"),
    "dim float": (_replace(GOOD, "dim = 512", "dim = 512.0"), "'b'", "'dim'"),
    "dim bool": (_replace(GOOD, "dim = 512", "dim = true"), "'b'", "'dim'"),
    "size negative": (
        _replace(GOOD, "upstream_size = 5000", "upstream_size = -1"),
        "'c'",
        "'upstream_size'",
    ),
    "top1 percent": (
        _replace(GOOD, "imagenet_top1 = 0.75", "imagenet_top1 = 75.0"),
        "'a'",
        "[0, 1]",
    ),
    "top1 nan": (_replace(GOOD, "imagenet_top1 = 0.75", "imagenet_top1 = nan"), "'a'", "[0, 1]"),
    "top1 string": (
        _replace(GOOD, "imagenet_top1 = 0.75", 'imagenet_top1 = "0.75"'),
        "'a'",
        "imagenet_top1",
    ),
    "family not str": (_replace(GOOD, 'family = "expert"', "family = 1"), "'b'", "'family'"),
    "duplicate model": (GOOD + MODEL_A, "'a'", "duplicate"),
    "pool parse error": (GOOD + '[pools]\nP = "dim <="\n', "'P'", "dim <="),
    "pool unknown column": (GOOD + '[pools]\nP = "depth > 3"\n', "'P'", "depth"),
    "pool not boolean": (GOOD + '[pools]\nP = "dim + 1"\n', "'P'", "boolean"),
    "pool null predicate": (GOOD + '[pools]\nP = "NULL"\n', "'P'", "boolean"),
    "pool subquery": (GOOD + '[pools]\nP = "SELECT 1"\n', "'P'", "SELECT 1"),
    "pool empty predicate": (GOOD + '[pools]\nP = " "\n', "'P'", "empty predicate"),
    "pool selects none": (GOOD + '[pools]\nP = "dim > 99999"\n', "'P'", "selects no model"),
    "pool empty list": (GOOD + "[pools]\nP = []\n", "'P'", "selects no model"),
    "pool unknown member": (GOOD + '[pools]\nP = ["a", "zz"]\n', "'P'", "'zz'"),
    "pool duplicate member": (GOOD + '[pools]\nP = ["a", "a"]\n', "'P'", "twice"),
    "pool bad value": (GOOD + "[pools]\nP = 3\n", "'P'", "list of model names"),
    "pool list of ints": (GOOD + "[pools]\nP = [1, 2]\n", "'P'", "list of model names"),
    "pools not table": (
        GOOD.replace("[[models]]", "pools = 1\n[[models]]", 1),
        "bad.toml",
        "[pools]",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_validation_errors_name_file_and_entry(tmp_path: Path, case: str) -> None:
    text, entry, detail = BAD_CASES[case]
    path = _write(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_catalogue(path)
    message = str(info.value)
    assert "bad.toml" in message
    assert entry in message
    assert detail in message
    assert "\n" not in message


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"missing\.toml.*not found"):
        load_catalogue(tmp_path / "missing.toml")
    with pytest.raises(UserError, match="directory"):
        load_catalogue(tmp_path)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[[models]]\nmodel = "\xff"\n')
    with pytest.raises(UserError, match=r"bad\.toml.*not valid TOML"):
        load_catalogue(path)


def test_single_model_integer_top1(tmp_path: Path) -> None:
    text = (
        _replace(MODEL_A, "imagenet_top1 = 0.75", "imagenet_top1 = 1") + '[pools]\nAll = "true"\n'
    )
    cat = load_catalogue(_write(tmp_path, text, "ok.toml"))
    assert cat.models.schema == pl.Schema(CATALOGUE)
    assert cat.models["imagenet_top1"].to_list() == [1.0]
    assert cat.pool("All")["model"].to_list() == ["a"]
