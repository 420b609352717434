"""Presets as data (engine/core/presets.toml): the numbers of each stage, validated on load.

A user's own presets live in a TOML file of the same layout (``[NAME.section]`` tables), passed
as ``FILE.toml`` (the file must hold exactly one preset) or ``FILE.toml:NAME``. The
``[NAME.resources]`` table (what trials, actors and tasks ask Ray for) is optional, and so is each
of its fields: ``whichmodel.core.resources`` has the defaults.
"""

from pathlib import Path
from typing import Any

from whichmodel.core.errors import UserError
from whichmodel.core.files import read_toml
from whichmodel.core.resources import Resources, parse_resources, with_options

PRESETS_FILE = Path(__file__).with_name("presets.toml")

# Every preset must give every field of every section here (types are checked).
FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "embed": {"image_size": int, "batch_size": int},
    "linear": {"lrs": list, "steps": int, "batch_size": int, "reps": int},
    "knn": {"k": int, "metric": str},
    "finetune": {
        "image_size": int,
        "lrs": list,
        "steps": int,
        "batch_size": int,
        "reps": int,
        "head_steps": int,
        "head_lr": (int, float),
        "checkpoint_every": int,
        "augment": bool,
        "precision": str,
    },
}


PRECISIONS = ("bf16", "fp16", "fp32")  # whichmodel.actors.finetune.PRECISIONS
METRICS = ("euclidean", "cosine")  # whichmodel.actors.proxies.knn


def _positive(value: Any) -> bool:
    return value > 0


def _lrs(value: list) -> bool:
    return bool(value) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in value
    )


_POSITIVE = (_positive, "a positive integer")
_AT_LEAST_0 = (lambda v: v >= 0, "an integer >= 0")
_LRS = (_lrs, "a non-empty list of positive numbers")
# What each value must satisfy beyond its type (checked after FIELDS): (test, rule in words).
VALUES: dict[str, dict[str, tuple[Any, str]]] = {
    "embed": {
        "image_size": (lambda v: v >= 0, "an integer >= 0 (0: each model's own)"),
        "batch_size": _POSITIVE,
    },
    "linear": {"lrs": _LRS, "steps": _POSITIVE, "batch_size": _POSITIVE, "reps": _POSITIVE},
    "knn": {"k": _POSITIVE, "metric": (lambda v: v in METRICS, f"one of {', '.join(METRICS)}")},
    "finetune": {
        "image_size": (lambda v: v >= 0, "an integer >= 0 (0: each model's own)"),
        "lrs": _LRS,
        "steps": _POSITIVE,
        "batch_size": _POSITIVE,
        "reps": _POSITIVE,
        "head_steps": _AT_LEAST_0,
        "head_lr": (_positive, "a positive number"),
        "checkpoint_every": (lambda v: v >= 0, "an integer >= 0 (0: never)"),
        "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    },
}


def load_preset(name: str, path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The named preset's sections, checked against ``FIELDS``.

    ``name`` is a preset of ``path`` (default: the shipped presets), or names a user's presets
    file: ``FILE.toml`` (holding one preset) or ``FILE.toml:NAME``.
    """
    if path is None:
        path, name = _split_preset_file(name)
    path = Path(path) if path else PRESETS_FILE
    presets = read_toml(path, "presets")
    if name is None:
        if len(presets) != 1:
            raise UserError(
                f"{path}: holds {len(presets)} presets ({', '.join(presets) or 'none'}); "
                f"name one as {path}:NAME"
            )
        name = next(iter(presets))
    if name not in presets:
        raise UserError(f"{path}: unknown preset {name!r} (available: {', '.join(presets)})")
    preset = presets[name]
    if not isinstance(preset, dict):
        raise UserError(f"{path}: preset {name!r} is not a table")
    for section, fields in FIELDS.items():
        values = preset.get(section)
        if not isinstance(values, dict):
            raise UserError(f"{path}: preset {name!r} lacks section [{name}.{section}]")
        for field, kind in fields.items():
            if field not in values:
                raise UserError(f"{path}: preset {name!r} lacks field {section}.{field}")
            value = values[field]
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                names = kind.__name__ if isinstance(kind, type) else "number"
                raise UserError(
                    f"{path}: preset {name!r} field {section}.{field} must be {names}, "
                    f"got {value!r}"
                )
    for section, checks in VALUES.items():
        for field, (ok, rule) in checks.items():
            value = preset[section][field]
            if not ok(value):
                raise UserError(
                    f"{path}: preset {name!r} field {section}.{field} must be {rule}, got {value!r}"
                )
    note = preset.get("oracle_note", "")
    if not isinstance(note, str):
        raise UserError(f"{path}: preset {name!r} field oracle_note must be text, got {note!r}")
    parse_resources(preset.get("resources"), f"{path}: preset {name!r}")
    return preset


def preset_resources(preset: dict[str, Any]) -> Resources:
    """The resource requests of a loaded preset (defaults for what it leaves out), with the
    command line's ``--accelerator`` / ``--max-gpus`` / ``--max-nodes`` /
    ``--wait-for-resources`` on top."""
    return with_options(parse_resources(preset.get("resources")))


def preset_path(spec: str) -> Path | None:
    """The user's presets file a preset spec names (``FILE.toml[:NAME]``), resolved; None for a
    shipped preset."""
    path, _ = _split_preset_file(spec)
    return None if path is None else Path(path).expanduser().resolve()


def _split_preset_file(spec: str) -> tuple[Path | None, str | None]:
    """``NAME`` -> (None, NAME); ``FILE.toml`` -> (FILE.toml, None); ``FILE.toml:NAME``."""
    head, sep, tail = spec.rpartition(".toml:")
    if sep and tail:
        return Path(head + ".toml"), tail
    if spec.endswith(".toml"):
        return Path(spec), None
    return None, spec
