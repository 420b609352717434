"""Every user-facing bad input through the real CLI (``whichmodel.cli.main``): exit code 2, one line
on stderr naming the offending flag, file, field, model or task, and nothing written.

The inputs are real files (PNG images, TOML catalogue/tasks/presets/run configs, Parquet and CSV
tables); every case here fails before Ray starts or any model is built.
"""

import io
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from whichmodel import cli
from whichmodel.core.presets import PRESETS_FILE

CATALOG = """\
[[models]]
model = "rand_a"
family = "f"
source = "timm:resnet10t@random"
upstream_dataset = "d"
params = 2
dim = 512

[[models]]
model = "rand_b"
family = "f"
source = "timm:mobilenetv3_small_050@random:1"
upstream_dataset = "d"
params = 1
dim = 1024

[pools]
Two = ["rand_a", "rand_b"]
"""


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def preset_with(section: str, field: str, value) -> str:
    """The shipped ``quick`` preset as a one-preset file, with one field replaced."""
    quick = tomllib.loads(PRESETS_FILE.read_text())["quick"]
    quick[section][field] = value
    lines = []
    for name, body in quick.items():
        if isinstance(body, dict):
            lines.append(f"[mine.{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def run_config(**override) -> str:
    """A RUN.toml over the module's catalogue and tasks, with keys replaced (None: removed)."""
    run = {
        "name": "bad",
        "out": "runs/bad",
        "catalog": "catalog.toml",
        "tasks": "tasks.toml",
        "preset": "quick",
        "budgets": "1-2",
    }
    run.update(override)
    body = "".join(f"{k} = {_toml_value(v)}\n" for k, v in run.items() if v is not None)
    return "[run]\n" + body


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Real input files shared by every case (never written to by the cases)."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / "imgs" / c).mkdir(parents=True)
        for k in range(4):
            pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "imgs" / c / f"{k}.png")
    (root / "tasks.toml").write_text(
        '[[tasks]]\nname = "shapes"\ncategory = "natural"\nsource = "folder"\nroot = "imgs"\n'
        "train = 6\nval = 3\n"
    )
    (root / "catalog.toml").write_text(CATALOG)
    pl.DataFrame(
        {"model": ["rand_a", "rand_b"], "task": ["shapes"] * 2, "test_acc": [0.5, 0.6]}
    ).write_csv(root / "finetune.csv")
    pl.DataFrame(
        {"model": ["rand_a"], "task": ["shapes"], "proxy": ["linear"], "score": [0.3]}
    ).write_parquet(root / "scores_partial.parquet")
    pl.DataFrame(
        {"model": ["rand_a", "rand_b"], "task": ["SHAPES"] * 2, "proxy": ["linear"] * 2},
        schema={"model": pl.String, "task": pl.String, "proxy": pl.String},
    ).with_columns(score=pl.lit(0.5)).write_parquet(root / "scores_other_tasks.parquet")
    (root / "not_a_dir").write_text("a file")
    write_corrupt_parquet(root / "corrupt.parquet")
    for name in ("a/0.png", "a/1.png", "b/0.png"):  # 3 images in all
        (root / "three" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "three" / name)
    (root / "ptasks.toml").write_text(
        '[[tasks]]\nname = "table"\nsource = "parquet"\npath = "corrupt.parquet"\n'
    )
    return root


def write_corrupt_parquet(path: Path) -> None:
    """A Parquet task (3 classes x 4 images, every split) whose rows 2 and 4 hold bytes that
    are not a decodable image: a truncated PNG and text."""
    rng = np.random.default_rng(1)
    images = []
    for _ in range(12):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(buf, "PNG")
        images.append(buf.getvalue())
    images[2] = images[2][: len(images[2]) // 2]
    images[4] = b"not an image at all"
    pl.DataFrame(
        {
            "image": images,
            "label": ["a", "b", "c"] * 4,
            "split": ["train"] * 6 + ["val"] * 3 + ["test"] * 3,
        }
    ).write_parquet(path)


# (argv with {in} = the inputs folder, {out} = this case's output path; files to write into the
# case's folder {case} first; a needle the one-line message must contain)
Case = tuple[list[str], dict[str, str], str]

ANALYZE = ["analyze", "--catalog", "{in}/catalog.toml", "--finetune", "{in}/finetune.csv"]
ANALYZE_OUT = [*ANALYZE, "--out", "{out}"]
EMBED = ["embed", "--catalog", "{in}/catalog.toml", "--pool", "Two", "--tasks", "{in}/tasks.toml"]
EMBED_OUT = [*EMBED, "--store", "{out}"]
PROBE = ["probe", "--store", "{in}/no_store"]
FT = ["finetune", "--catalog", "{in}/catalog.toml", "--pool", "Two", "--tasks", "{in}/tasks.toml"]
FT_OUT = [*FT, "--out", "{out}"]
SEARCH = ["search", "{in}/imgs", "--catalog", "{in}/catalog.toml", "--out", "{out}"]
BENCH = ["benchmark", "--config", "{case}/run.toml", "--out", "{out}"]

PRESET_CASES: list[tuple[str, str, object, str]] = [
    ("finetune", "lrs", [], "finetune.lrs must be a non-empty list of positive numbers"),
    ("finetune", "lrs", [0.1, -0.01], "finetune.lrs must be a non-empty list"),
    ("finetune", "lrs", ["x"], "finetune.lrs must be a non-empty list"),
    ("finetune", "reps", 0, "finetune.reps must be a positive integer"),
    ("finetune", "steps", 0, "finetune.steps must be a positive integer"),
    ("finetune", "batch_size", -1, "finetune.batch_size must be a positive integer"),
    ("finetune", "image_size", -64, "finetune.image_size must be an integer >= 0"),
    ("finetune", "head_steps", -1, "finetune.head_steps must be an integer >= 0"),
    ("finetune", "head_lr", 0, "finetune.head_lr must be a positive number"),
    ("finetune", "checkpoint_every", -5, "finetune.checkpoint_every must be an integer >= 0"),
    ("finetune", "precision", "fp8", "finetune.precision must be one of bf16, fp16, fp32"),
    ("finetune", "augment", "no", "finetune.augment must be bool"),
    ("linear", "lrs", [], "linear.lrs must be a non-empty list"),
    ("linear", "reps", 0, "linear.reps must be a positive integer"),
    ("linear", "steps", -3, "linear.steps must be a positive integer"),
    ("linear", "batch_size", 0, "linear.batch_size must be a positive integer"),
    ("knn", "k", 0, "knn.k must be a positive integer"),
    ("knn", "metric", "manhattan", "knn.metric must be one of euclidean, cosine"),
    ("embed", "batch_size", 0, "embed.batch_size must be a positive integer"),
    ("embed", "image_size", -1, "embed.image_size must be an integer >= 0"),
    ("embed", "batch_size", 1.5, "embed.batch_size must be int"),
]

RUN_CASES: list[tuple[dict, str]] = [
    ({"budgets": "0"}, "every budget must be at least 1"),
    ({"budgets": "3"}, "[run] budgets: none is within pool 'Two' (2 models)"),
    ({"budgets": [3, 5]}, "none is within pool 'Two'"),
    ({"budgets": "x"}, "[run] budgets must look like"),
    ({"pools": ["Nope"]}, "'Nope'"),
    ({"proxies": ["magic"]}, "unknown proxy 'magic'"),
    ({"preset": "nonesuch"}, "unknown preset 'nonesuch'"),
    ({"catalog": "missing.toml"}, "[run] catalog: file not found"),
    ({"tasks": None}, "lacks the required key 'tasks'"),
    ({"name": ""}, "[run] name must be a non-empty string"),
    ({"log_odds": "yes"}, "[run] log_odds must be true or false"),
    ({"colour": "red"}, "[run] unknown key 'colour'"),
    ({"out": "ftp://host/run"}, "unknown URI scheme 'ftp'"),
]

CASES: dict[str, Case] = {
    # analyze
    "analyze --budgets 0": ([*ANALYZE_OUT, "--budgets", "0"], {}, "budget 0 is not allowed"),
    "analyze --budgets 3 > pool": (
        [*ANALYZE_OUT, "--budgets", "3"],
        {},
        "budget 3 is larger than pool Two (2 models)",
    ),
    "analyze --budgets x": ([*ANALYZE_OUT, "--budgets", "x"], {}, "--budgets must look like"),
    "analyze --pools Nope": ([*ANALYZE_OUT, "--pools", "Nope"], {}, "unknown pool 'Nope'"),
    "analyze --compare foo:bar": (
        [*ANALYZE_OUT, "--compare", "foo:bar"],
        {},
        "--compare foo:bar: unknown strategy 'foo'",
    ),
    "analyze --compare linear without scores": (
        [*ANALYZE_OUT, "--compare", "hybrid_linear:linear"],
        {},
        "unknown strategy 'hybrid_linear'",
    ),
    "analyze --compare a": ([*ANALYZE_OUT, "--compare", "a"], {}, "expected STRATEGY_A:STRATEGY_B"),
    "analyze --scores partial": (
        [*ANALYZE_OUT, "--scores", "{in}/scores_partial.parquet"],
        {},
        "proxy 'linear' has no row for (model, task) ('rand_b', 'shapes') of pool Two",
    ),
    "analyze --scores other task names": (
        [*ANALYZE_OUT, "--scores", "{in}/scores_other_tasks.parquet"],
        {},
        "its tasks 'SHAPES' are not the pool's",
    ),
    "analyze --scores missing file": (
        [*ANALYZE_OUT, "--scores", "{in}/nope.parquet"],
        {},
        "nope.parquet: no such file",
    ),
    "analyze --finetune bad accuracy": (
        [*ANALYZE, "--finetune", "{case}/ft.csv", "--out", "{out}"],
        {"ft.csv": "model,task,test_acc\nrand_a,shapes,1.5\n"},
        "must be fractions in [0, 1]",
    ),
    "analyze --out is a file": (
        [*ANALYZE, "--out", "{in}/not_a_dir"],
        {},
        "--out {in}/not_a_dir: exists and is not a directory",
    ),
    # embed
    "embed --batch-size 0": ([*EMBED_OUT, "--batch-size", "0"], {}, "--batch-size: '0'"),
    "embed --batch-size x": ([*EMBED_OUT, "--batch-size", "x"], {}, "'x' is not an integer"),
    "embed --image-size -1": ([*EMBED_OUT, "--image-size", "-1"], {}, "--image-size: '-1'"),
    "embed --pool Nope": (
        [*EMBED[:4], "Nope", *EMBED[5:], "--store", "{out}"],
        {},
        "unknown pool 'Nope'",
    ),
    "embed --tasks missing": (
        [*EMBED[:6], "{in}/nope.toml", "--store", "{out}"],
        {},
        "nope.toml",
    ),
    "embed --store is a file": (
        [*EMBED, "--store", "{in}/not_a_dir"],
        {},
        "--store {in}/not_a_dir: exists and is not a directory",
    ),
    # probe
    "probe --out x.txt": ([*PROBE, "--out", "{out}.txt"], {}, "must end in .parquet or .csv"),
    "probe --proxies magic": (
        [*PROBE, "--out", "{out}.parquet", "--proxies", "linear,magic"],
        {},
        "unknown proxy 'magic'",
    ),
    "probe --proxies empty": (
        [*PROBE, "--out", "{out}.parquet", "--proxies", ","],
        {},
        "--proxies ',': no proxy given",
    ),
    "probe --preset nonesuch": (
        [*PROBE, "--out", "{out}.parquet", "--preset", "nonesuch"],
        {},
        "unknown preset 'nonesuch'",
    ),
    "probe empty store": ([*PROBE, "--out", "{out}.parquet"], {}, "no_store"),
    # finetune
    "finetune --budget 0": ([*FT_OUT, "--select", "task_agnostic", "--budget", "0"], {}, "'0'"),
    "finetune --budget 3 > pool": (
        [*FT_OUT, "--select", "task_agnostic", "--budget", "3"],
        {},
        "budget 3 is not in 1..2",
    ),
    "finetune --select without --budget": (
        [*FT_OUT, "--select", "task_agnostic"],
        {},
        "--select needs --budget",
    ),
    "finetune --select magic": (
        [*FT_OUT, "--select", "magic", "--budget", "1"],
        {},
        "unknown strategy 'magic'",
    ),
    "finetune --select linear, partial scores": (
        [*FT_OUT, "--select", "linear", "--budget", "1", "--scores", "{in}/scores_partial.parquet"],
        {},
        "('rand_b', 'shapes')",
    ),
    "finetune --top-k 0": (
        [*FT_OUT, "--halving", "--top-k", "0", "--total-steps", "10"],
        {},
        "--top-k: '0'",
    ),
    "finetune --total-steps -1": (
        [*FT_OUT, "--halving", "--top-k", "1", "--total-steps", "-1"],
        {},
        "--total-steps: '-1'",
    ),
    "finetune --eta 1": (
        [*FT_OUT, "--halving", "--eta", "1"],
        {},
        "--eta: '1': must be at least 2",
    ),
    "finetune --grace 0": ([*FT_OUT, "--halving", "--grace", "0"], {}, "--grace: '0'"),
    "finetune --top-k without --halving": (
        [*FT_OUT, "--all", "--top-k", "2"],
        {},
        "--top-k applies to --halving only",
    ),
    "finetune --out is a file": (
        [*FT, "--out", "{in}/not_a_dir", "--all"],
        {},
        "exists and is not a directory",
    ),
    # search
    "search --budget 0": ([*SEARCH, "--budget", "0"], {}, "--budget: '0'"),
    "search --budget 3 > pool": (
        [*SEARCH, "--budget", "3"],
        {},
        "budget 3 is not in 1..2 (pool Two",
    ),
    "search --budget 99 > demo pool": (
        ["search", "{in}/imgs", "--out", "{out}", "--budget", "99"],
        {},
        "budget 99 is not in 1..10 (pool All of the demo)",
    ),
    "search --strategy magic": (
        [*SEARCH, "--budget", "1", "--strategy", "magic"],
        {},
        "unknown strategy 'magic'",
    ),
    "search --preset nonesuch": (
        [*SEARCH, "--budget", "1", "--preset", "nonesuch"],
        {},
        "unknown preset 'nonesuch'",
    ),
    "search --pool Nope": ([*SEARCH, "--budget", "1", "--pool", "Nope"], {}, "'Nope'"),
    "search DATA missing": (
        ["search", "{in}/nothing", "--catalog", "{in}/catalog.toml", "--budget", "1"],
        {},
        "nothing: no such image folder",
    ),
    # benchmark
    "benchmark --config missing": (
        ["benchmark", "--config", "{in}/nope.toml", "--out", "{out}"],
        {},
        "nope.toml: config file not found",
    ),
    "benchmark --out ftp://": (
        ["benchmark", "--config", "{case}/run.toml", "--out", "ftp://host/x"],
        {"run.toml": run_config()},
        "--out ftp://host/x: unknown URI scheme 'ftp'",
    ),
    # demo
    "demo --out ftp://": (["demo", "--out", "ftp://host/x"], {}, "unknown URI scheme 'ftp'"),
    "demo --out is a file": (["demo", "--out", "{in}/not_a_dir"], {}, "exists and is not a dir"),
    "demo --cache is a file": (
        ["demo", "--out", "{out}", "--cache", "{in}/not_a_dir"],
        {},
        "--cache {in}/not_a_dir: exists and is not a directory",
    ),
    # any subcommand
    "unknown option": ([*ANALYZE_OUT, "--frobnicate"], {}, "unrecognized arguments: --frobnicate"),
}

# issue 21: a user's own folder as --out (the marker rule on the whole --out), and output paths
# that cannot be written (below a file, a file), refused before any work, nothing written
USERS = {"scores.parquet": "the user's own table", "notes.txt": "the user's notes"}
NOT_OURS = "not empty and not a previous whichmodel output (no .whichmodel-output)"
BELOW = "cannot be created below {in}/not_a_dir, which is a file"
OUTPUT_CASES: dict[str, Case] = {
    "search --out a user's folder": (
        [*SEARCH[:-1], "{case}", "--budget", "1"],
        USERS,
        f"--out {{case}}: {NOT_OURS}; pass --force",
    ),
    "search --out with the default (demo) pool, a user's folder": (
        ["search", "{in}/imgs", "--out", "{case}", "--budget", "1"],
        USERS,
        f"--out {{case}}: {NOT_OURS}",
    ),
    "finetune --out a user's folder": ([*FT, "--out", "{case}", "--all"], USERS, NOT_OURS),
    "benchmark --out a user's folder": (
        ["benchmark", "--config", "{case}/run.toml", "--out", "{case}"],
        {"run.toml": run_config(), **USERS},
        f"run directory {{case}}: {NOT_OURS}",
    ),
    "benchmark [run] out a user's folder": (
        ["benchmark", "--config", "{case}/run.toml"],
        {"run.toml": run_config(out="."), **USERS},
        f"run directory {{case}}: {NOT_OURS}",
    ),
    "demo --out a user's folder": (
        ["demo", "--out", "{case}"],
        USERS,
        f"--out {{case}}: {NOT_OURS}",
    ),
    "search --out below a file": ([*SEARCH[:-1], "{in}/not_a_dir/w", "--budget", "1"], {}, BELOW),
    "analyze --out below a file": ([*ANALYZE, "--out", "{in}/not_a_dir/x"], {}, BELOW),
    "finetune --out below a file": ([*FT, "--out", "{in}/not_a_dir/x", "--all"], {}, BELOW),
    "benchmark --out below a file": (
        ["benchmark", "--config", "{case}/run.toml", "--out", "{in}/not_a_dir/x"],
        {"run.toml": run_config()},
        BELOW,
    ),
    "benchmark [run] store below a file": (
        BENCH,
        {"run.toml": run_config(store="afile/store"), "afile": "a file"},
        "store {case}/afile/store: cannot be created below {case}/afile, which is a file",
    ),
    "demo --out below a file": (["demo", "--out", "{in}/not_a_dir/x"], {}, BELOW),
    "demo --cache below a file": (
        ["demo", "--out", "{out}", "--cache", "{in}/not_a_dir/c"],
        {},
        BELOW,
    ),
    "embed --store below a file": ([*EMBED, "--store", "{in}/not_a_dir/s"], {}, BELOW),
    "probe --out below a file": (
        [*PROBE, "--out", "{in}/not_a_dir/s.parquet"],
        {},
        "--out {in}/not_a_dir/s.parquet: its folder {in}/not_a_dir: exists and is not a dir",
    ),
    "probe --out is a folder": (
        [*PROBE, "--out", "{case}/t.parquet"],
        {"t.parquet/x": "a folder named like a table"},
        "--out {case}/t.parquet: is a directory, not a scores table file",
    ),
    "search --out is a file": (
        [*SEARCH[:-1], "{in}/not_a_dir", "--budget", "1"],
        {},
        "--out {in}/not_a_dir: exists and is not a directory",
    ),
}
CASES |= OUTPUT_CASES
# issue 21.6: the tool's own split of 3 images cannot give every class train and val images
CASES["search 3 images in all"] = (
    ["search", "{in}/three", "--catalog", "{in}/catalog.toml", "--out", "{out}", "--budget", "1"],
    {},
    "the split of its 3 images (1 train / 1 val / 1 test) leaves class 'a' without training "
    "images (class 'a': 2 image(s), 0 train / 1 val / 1 test)",
)
# issue 21.5: a Parquet table's image bytes are all checked before any work, like a folder's
ROWS = "2 unreadable image row(s) in {in}/corrupt.parquet: row 2 ("
CASES |= {
    "search a Parquet table with corrupt images": (
        ["search", "{in}/corrupt.parquet", "--catalog", "{in}/catalog.toml", "--out", "{out}"]
        + ["--budget", "1"],
        {},
        ROWS,
    ),
    "embed a Parquet task with corrupt images": (
        [*EMBED[:6], "{in}/ptasks.toml", "--store", "{out}"],
        {},
        "), row 4 (not a known image format); pass --skip-unreadable (skip_unreadable = true",
    ),
}
for _section, _field, _value, _needle in PRESET_CASES:
    CASES[f"preset {_section}.{_field} = {_value!r}"] = (
        [*FT_OUT, "--all", "--preset", "{case}/mine.toml"],
        {"mine.toml": preset_with(_section, _field, _value)},
        f"preset 'mine' field {_needle}",
    )
for _override, _needle in RUN_CASES:
    CASES[f"run config {_override}"] = (BENCH, {"run.toml": run_config(**_override)}, _needle)


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    case: str, inputs: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    argv, files, needle = CASES[case]
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    for name, text in files.items():
        (case_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (case_dir / name).write_text(text)
    # run configs name the shared catalogue and tasks relative to themselves
    for name in ("catalog.toml", "tasks.toml"):
        (case_dir / name).write_text((inputs / name).read_text())
    (case_dir / "imgs").symlink_to(inputs / "imgs")
    fill: Callable[[str], str] = lambda a: a.format(  # noqa: E731
        **{"in": inputs, "out": tmp_path / "out", "case": case_dir}
    )
    monkeypatch.chdir(tmp_path)  # default outputs (./whichmodel-search) would land here
    monkeypatch.setenv("WHICHMODEL_CACHE", str(tmp_path / "cache"))
    before_inputs, before = _files(inputs), _files(tmp_path)
    rc = cli.main([fill(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("whichmodel: error: ") and err.count("\n") == 1, err
    assert fill(needle) in err, err
    assert _files(tmp_path) == before  # nothing written: no output, no cache, no temporary
    assert _files(inputs) == before_inputs


def test_every_subcommand_is_covered() -> None:
    commands = {argv[0] for argv, _, _ in CASES.values()}
    assert commands >= {"analyze", "embed", "probe", "finetune", "search", "benchmark", "demo"}
    fields = {(s, f) for s, f, _, _ in PRESET_CASES}
    from whichmodel.core.presets import FIELDS

    assert fields == {(s, f) for s, fs in FIELDS.items() for f in fs}  # every preset field
