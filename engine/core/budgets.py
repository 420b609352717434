"""Budgets as users write them: one parser for the command line and run configs."""

from typing import Any

from whichmodel.core.errors import UserError


def parse_budgets(value: Any, where: str) -> list[int]:
    """``"1-3"``, ``"1,2,5"``, ``"1-3,10"``, ``2`` or ``[1, 2, 5]`` → sorted distinct budgets,
    each at least 1; ``UserError`` starting with ``where`` (the flag, or the file and key)."""
    out: set[int] = set()
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            out.add(value)
        elif isinstance(value, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ValueError
            out.update(value)
        elif isinstance(value, str):
            for part in value.split(","):
                lo, _, hi = part.strip().partition("-")
                out.update(range(int(lo), int(hi or lo) + 1))
        else:
            raise ValueError
    except ValueError:
        raise UserError(
            f'{where} must look like "1-3", "1,2,5" or [1, 2] (expected numbers), got {value!r}'
        ) from None
    if not out:
        raise UserError(f"{where}: no budget given in {value!r}")
    if min(out) < 1:
        raise UserError(
            f"{where}: budget {min(out)} is not allowed: every budget must be at least 1"
        )
    return sorted(out)
