"""Model catalogue and pools, loaded from a TOML file (docs/design.md §1 "Pools", §2).

A catalogue file lists models as ``[[models]]`` tables whose keys are the columns of
``whichmodel.core.schema.CATALOGUE``, and defines pools in a ``[pools]`` table. A pool is data,
never
code:
either a Polars SQL predicate over the catalogue columns (``Dim2048 = "dim <= 2048"``) or an
explicit list of model names (``Expert = ["Mode of transport", "Full JFT"]``).

Rows keep the file's order everywhere (the catalogue frame and every pool), so later code can
break ties by catalogue order. Every problem in the file raises ``UserError`` with a one-line
message naming the file and the entry (model or pool) at fault; pools are evaluated at load time
so that a bad predicate surfaces there, not halfway through a study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from whichmodel.core.errors import UserError
from whichmodel.core.files import read_toml
from whichmodel.core.names import check_name
from whichmodel.core.schema import CATALOGUE, CATALOGUE_REQUIRED

PoolSpec = str | list[str]

_TOP_LEVEL_KEYS = ("models", "pools")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Integer columns and the smallest value each may take (a random-init control has no upstream
# data, so upstream_size 0 is allowed; a model always has parameters and an embedding).
_INT_MINIMUM = {"upstream_size": 0, "params": 1, "dim": 1}


@dataclass(frozen=True)
class Catalogue:
    """A loaded catalogue: the model table (schema ``CATALOGUE``, file order) and its pools."""

    path: Path
    models: pl.DataFrame
    pools: dict[str, PoolSpec]

    def pool_names(self) -> list[str]:
        """The pool names, in file order."""
        return list(self.pools)

    def pool(self, name: str) -> pl.DataFrame:
        """The member rows of pool ``name``, in catalogue (file) order."""
        if name not in self.pools:
            known = ", ".join(repr(p) for p in self.pools) or "none"
            raise UserError(f"{self.path}: unknown pool {name!r} (available: {known})")
        return self.models.filter(_pool_mask(self.path, self.models, name, self.pools[name]))


def load_catalogue(path: str | Path) -> Catalogue:
    """Read and validate a catalogue TOML file; evaluate every pool once to surface errors."""
    path = Path(path)
    doc = read_toml(path, "catalogue")
    unknown = [k for k in doc if k not in _TOP_LEVEL_KEYS]
    if unknown:
        raise UserError(
            f"{path}: unknown top-level key {unknown[0]!r} (expected [[models]] and [pools])"
        )
    rows = _check_models(path, doc.get("models"))
    models = pl.DataFrame(
        {col: [row.get(col) for row in rows] for col in CATALOGUE}, schema=CATALOGUE
    )
    pools = _check_pools(path, doc.get("pools", {}))
    for name, spec in pools.items():
        _pool_mask(path, models, name, spec)
    return Catalogue(path=path, models=models, pools=pools)


def _one_line(text: str) -> str:
    """Collapse whitespace (Polars errors span several lines) so a message stays on one line."""
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------
# models


def _check_models(path: Path, entries: Any) -> list[dict[str, Any]]:
    """Validate the ``[[models]]`` array; return its tables in file order."""
    if entries is None or (isinstance(entries, list) and not entries):
        raise UserError(f"{path}: no [[models]] entries")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{path}: 'models' must be an array of tables ([[models]])")
    seen: set[str] = set()
    for i, entry in enumerate(entries, start=1):
        name = _check_model_name(path, i, entry)
        if name in seen:
            raise UserError(f"{path}: model {name!r}: duplicate model name")
        seen.add(name)
        _check_model_entry(path, name, entry)
    return entries


def _check_model_name(path: Path, index: int, entry: dict[str, Any]) -> str:
    name = entry.get("model")
    if name is None:
        raise UserError(f"{path}: [[models]] entry #{index}: missing required column 'model'")
    if not isinstance(name, str) or not name.strip():
        raise UserError(
            f"{path}: [[models]] entry #{index}: 'model' must be a non-empty string, got {name!r}"
        )
    return check_name("model", name, str(path))


def _check_model_entry(path: Path, name: str, entry: dict[str, Any]) -> None:
    where = f"{path}: model {name!r}"
    for key in entry:
        if key not in CATALOGUE:
            known = ", ".join(CATALOGUE)
            raise UserError(f"{where}: unknown column {key!r} (known: {known})")
    for key in CATALOGUE_REQUIRED:
        if key not in entry:
            raise UserError(f"{where}: missing required column {key!r}")
    for key, value in entry.items():
        _check_value(where, key, value)


def _check_value(where: str, key: str, value: Any) -> None:
    dtype = CATALOGUE[key]
    if dtype == pl.String:
        if not isinstance(value, str):
            raise UserError(f"{where}: column {key!r} must be a string, got {value!r}")
    elif dtype == pl.Int64:
        lo = _INT_MINIMUM.get(key, _INT64_MIN)
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: column {key!r} must be an integer, got {value!r}")
        if not lo <= value <= _INT64_MAX:
            raise UserError(f"{where}: column {key!r} must be an integer >= {lo}, got {value!r}")
    elif dtype == pl.Float64:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{where}: column {key!r} must be a number, got {value!r}")
        if key == "imagenet_top1" and not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise UserError(
                f"{where}: column {key!r} must be a fraction in [0, 1] (e.g. 0.756), got {value!r}"
            )
    else:  # a column type the schema gained without a check here
        raise AssertionError(f"no check for catalogue dtype {dtype} of column {key!r}")


# ---------------------------------------------------------------------------------------------
# pools


def _check_pools(path: Path, table: Any) -> dict[str, PoolSpec]:
    """Validate the shape of ``[pools]``: each value a predicate string or a list of names."""
    if not isinstance(table, dict):
        raise UserError(f"{path}: 'pools' must be a table ([pools]), got {table!r}")
    pools: dict[str, PoolSpec] = {}
    for name, spec in table.items():
        where = f"{path}: pool {name!r}"
        if not name.strip():
            raise UserError(f"{path}: pool names must be non-empty, got {name!r}")
        if isinstance(spec, str):
            if not spec.strip():
                raise UserError(f'{where}: empty predicate (use "true" for every model)')
            pools[name] = spec
        elif isinstance(spec, list) and all(isinstance(m, str) for m in spec):
            pools[name] = list(spec)
        else:
            raise UserError(
                f"{where}: must be a SQL predicate string or a list of model names, got {spec!r}"
            )
    return pools


def _pool_mask(path: Path, models: pl.DataFrame, name: str, spec: PoolSpec) -> pl.Series:
    """Boolean mask of the pool's members over ``models``; raise if it selects none."""
    if isinstance(spec, str):
        mask = _predicate_mask(path, models, name, spec)
    else:
        mask = _member_mask(path, models, name, spec)
    if not mask.any():
        raise UserError(f"{path}: pool {name!r}: selects no model ({_describe(spec)})")
    return mask


def _predicate_mask(path: Path, models: pl.DataFrame, name: str, pred: str) -> pl.Series:
    where = f"{path}: pool {name!r}: predicate {_one_line(pred)!r}"
    try:
        result = models.select(pl.sql_expr(pred).alias("__selected")).to_series()
    except Exception as exc:  # Polars raises several types (SQL syntax, column not found, ...)
        raise UserError(f"{where}: {_one_line(str(exc))}") from None
    if result.dtype != pl.Boolean:
        raise UserError(f"{where}: is not a boolean condition (it gives {result.dtype})")
    if result.len() == 1 and models.height != 1:  # a constant such as "true" broadcasts
        result = pl.repeat(result[0], models.height, eager=True, dtype=pl.Boolean)
    return result.fill_null(False)  # SQL WHERE semantics: NULL does not select


def _member_mask(path: Path, models: pl.DataFrame, name: str, members: list[str]) -> pl.Series:
    known = set(models["model"].to_list())
    seen: set[str] = set()
    for member in members:
        if member not in known:
            raise UserError(f"{path}: pool {name!r}: lists unknown model {member!r}")
        if member in seen:
            raise UserError(f"{path}: pool {name!r}: lists model {member!r} twice")
        seen.add(member)
    return models["model"].is_in(members)


def _describe(spec: PoolSpec) -> str:
    if isinstance(spec, str):
        return f"predicate {_one_line(spec)!r}"
    return "empty member list"
