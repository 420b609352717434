"""Registries that also hold members from outside the package (docs/design.md, "Registries").

A ``Registry`` maps names to specs (``ProxySpec``, ``StrategySpec``): the built-in members, then
those registered by ``whichmodel.register_proxy`` / ``register_strategy`` and, loaded once when
the registry is first read, every Python entry point of its group (``whichmodel.proxies``,
``whichmodel.strategies``). An entry point names a module whose import registers its members
with the decorators, or a spec object itself; either way the member must carry the entry
point's name. A plugin that fails to import is left out with a warning naming it, so one broken
package does not stop every command; a name that would shadow a built-in member is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, MutableMapping
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from whichmodel.core.errors import UserError

log = logging.getLogger("whichmodel")

T = TypeVar("T")

# Prefixes that make strategy names out of a proxy name: a proxy may not start with one.
STRATEGY_PREFIXES = ("hybrid_", "similar_tasks_", "progressive_")


class Registry(MutableMapping[str, T], Generic[T]):
    """Name → spec (instances of ``spec_type``), built-ins first, then plugins (decorators, and
    entry points of ``group`` loaded on first read). ``kind`` names a member in messages."""

    def __init__(
        self,
        group: str,
        kind: str,
        spec_type: type,
        builtins: Iterable[tuple[str, T]],
        reserved_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.group, self.kind, self.spec_type = group, kind, spec_type
        self._items: dict[str, T] = dict(builtins)
        self._builtin = frozenset(self._items)
        self._prefixes = reserved_prefixes
        self._state = "new"  # new | loading | loaded
        self._entry_points: set[str] = set()  # members that came from an entry point

    # -- plugins

    def register(self, name: str, spec: T) -> None:
        """Add a plugin member; ``UserError`` for a name that is not an identifier, starts with
        a reserved prefix or is a built-in member's. A plugin's name may be registered again
        (the last one wins: rerunning a notebook cell)."""
        if not isinstance(name, str) or not name.isidentifier():
            raise UserError(f"{self.kind} name {name!r} must be a Python identifier")
        if name.startswith(self._prefixes):
            raise UserError(
                f"{self.kind} name {name!r} may not start with {', '.join(self._prefixes)}"
            )
        if name in self._builtin:
            raise UserError(f"{self.kind} {name!r} is built in; choose another name")
        if not isinstance(spec, self.spec_type) or getattr(spec, "name", name) != name:
            raise UserError(f"{self.kind} {name!r}: not a {self.spec_type.__name__} named so")
        self._items[name] = spec

    def is_builtin(self, name: str) -> bool:
        """Whether ``name`` is one of the package's own members."""
        return name in self._builtin

    def plugins(self) -> dict[str, T]:
        """The members registered from outside the package."""
        self._load()
        return {k: v for k, v in self._items.items() if k not in self._builtin}

    def registered_here(self, names: Iterable[str]) -> dict[str, T]:
        """Of ``names``, the members registered in this process by a decorator (not built in,
        not from an entry point, which every process of the environment loads itself): what a
        Ray worker must be sent to run them."""
        self._load()
        return {
            n: self._items[n]
            for n in names
            if n in self._items and n not in self._builtin and n not in self._entry_points
        }

    def _load(self) -> None:
        """Import the entry points of ``group``, once (a plugin importing whichmodel and reading
        the registry while it loads sees the members so far)."""
        if self._state != "new":
            return
        self._state = "loading"
        try:
            for ep in entry_points(group=self.group):
                try:
                    obj = ep.load()
                except Exception as exc:  # a broken plugin is named, not fatal
                    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    log.warning(
                        "%s plugin %r (%s, entry point group %s) not loaded: %s",
                        self.kind, ep.name, ep.value, self.group, first,
                    )  # fmt: skip
                    continue
                if isinstance(obj, self.spec_type) and ep.name not in self._items:
                    self.register(ep.name, obj)
                self._entry_points.add(ep.name)
                if ep.name not in self._items:
                    log.warning(
                        "%s plugin %r (%s): importing it registered no %s named %r",
                        self.kind, ep.name, ep.value, self.kind, ep.name,
                    )  # fmt: skip
        finally:
            self._state = "loaded"

    # -- the mapping (reads load the plugins first)

    def __getitem__(self, name: str) -> T:
        self._load()
        return self._items[name]

    def __setitem__(self, name: str, spec: T) -> None:
        self._items[name] = spec

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(self._items)

    def __len__(self) -> int:
        self._load()
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __repr__(self) -> str:
        return f"Registry({self.group!r}, {list(self._items)!r})"
