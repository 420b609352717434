"""Model and task names become path components: unsafe names are refused where the catalogue and
the tasks file are loaded, with an error naming the file, the kind and the name (exit code 2 on
the command line), and nothing is written."""

import json
from pathlib import Path

import pytest

from whichmodel import cli
from whichmodel.core.catalog import load_catalogue
from whichmodel.core.errors import UserError
from whichmodel.tasks.loader import load_tasks

UNSAFE = {
    "parent": "..",
    "dot": ".",
    "escape": "../../escape",
    "slash": "a/b",
    "backslash": "a\\b",
    "absolute": "/etc/passwd",
    "hidden": ".hidden",
    "drive": "C:evil",
    "nul": "nul\x00byte",
    "newline": "two\nlines",
    "blank": "   ",
    "empty": "",
    "long": "x" * 201,
}
SAFE = ["Mode of transport", "Home & garden", "resnet50.a1_in1k", "v1..2", "Blümchen", "x" * 200]


def _toml(value: str) -> str:
    """A TOML basic string for ``value`` (JSON escapes are valid TOML escapes)."""
    return json.dumps(value, ensure_ascii=False)


def write_catalogue(folder: Path, name: str) -> Path:
    path = folder / "catalog.toml"
    path.write_text(
        "[[models]]\n"
        f"model = {_toml(name)}\n"
        'family = "f"\nsource = "timm:resnet10t@random"\nupstream_dataset = "d"\n'
        "params = 1\ndim = 1\n"
        '[pools]\nAll = "true"\n',
        encoding="utf-8",
    )
    return path


def write_tasks(folder: Path, name: str) -> Path:
    path = folder / "tasks.toml"
    text = f'[[tasks]]\nname = {_toml(name)}\nsource = "folder"\nroot = "images"\n'
    path.write_text(text, encoding="utf-8")
    return path


KINDS = {"model": (write_catalogue, load_catalogue), "task": (write_tasks, load_tasks)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", UNSAFE.values(), ids=UNSAFE.keys())
def test_unsafe_name_is_refused_naming_file_kind_and_name(tmp_path, kind, name):
    write, load = KINDS[kind]
    path = write(tmp_path, name)
    with pytest.raises(UserError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message and repr(name) in message and kind in message


def test_hidden_task_name_is_refused_by_the_path_rule(tmp_path):
    # one rule for models, tasks and the store (whichmodel.core.names)
    with pytest.raises(UserError, match=r"task name '\.hidden': must not start with '\.'"):
        load_tasks(write_tasks(tmp_path, ".hidden"))


@pytest.mark.parametrize("name", SAFE)
def test_safe_model_names_load(tmp_path, name):
    catalogue = load_catalogue(write_catalogue(tmp_path, name))
    assert catalogue.models["model"].to_list() == [name]


@pytest.mark.parametrize("name", ["flowers", "vtab.dtd", "a-b_c", "x" * 200, *SAFE])
def test_safe_task_names_load(tmp_path, name):
    assert [s.name for s in load_tasks(write_tasks(tmp_path, name))] == [name]


def test_cli_exits_2_and_writes_nothing_for_an_escaping_model_name(tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    catalogue = write_catalogue(work, "../../escape")
    tasks = write_tasks(work, "shapes")
    store = work / "store"
    argv = ["embed", "--catalog", str(catalogue), "--pool", "All", "--tasks", str(tasks)]
    assert cli.main([*argv, "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("whichmodel: error: ") and "\n" not in err
    assert str(catalogue) in err and "'../../escape'" in err
    assert not store.exists() and not (tmp_path / "escape").exists()
    assert sorted(p.name for p in work.iterdir()) == ["catalog.toml", "tasks.toml"]


def test_names_the_loaders_accept_embed_into_the_store(tmp_path, ray_session):
    """One name rule: a model and a task named as pools/paper.toml names them ('Home & garden')
    load, embed into the store under those names, and read back."""
    from imageworld import write_folder

    from whichmodel.stages.embed import EmbedConfig, embed
    from whichmodel.stages.store import read_partition, stored_pairs

    n = write_folder(tmp_path / "images", per_split=(2, 1, 1))
    catalogue = load_catalogue(write_catalogue(tmp_path, "Home & garden"))
    tasks = load_tasks(write_tasks(tmp_path, "Mode of transport"))
    embed(catalogue, "All", tasks, tmp_path / "store", EmbedConfig(image_size=32, batch_size=8))
    pairs = stored_pairs(tmp_path / "store")
    assert list(pairs) == [("Home & garden", "Mode of transport")]
    rows = sum(
        len(read_partition(p)["index"])
        for p in pairs["Home & garden", "Mode of transport"].values()
    )
    assert rows == n
