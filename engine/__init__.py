"""whichmodel: which pre-trained vision models to fine-tune, and the regret of each strategy.

The Python API (``whichmodel.api``, loaded on first use so that ``import whichmodel`` stays
light): ``analyze``, ``search``, ``benchmark``, ``embed``, ``probe``, ``finetune``, ``halving``,
and ``register_proxy`` / ``register_strategy`` for members from outside the package.

The package is in layers that import only downwards (checked by ``lint-imports``):
cli -> api -> apps (search, benchmark, demo) -> demo (the embedded pool) -> stages (store, embed,
probe, finetune, halving) -> analysis (tables, strategies, regret, curves, plots, report) ->
tasks -> cluster -> actors (code that runs in Ray workers) -> core (errors, names, schema,
catalog, presets, resources, outputs, registry)."""

from typing import TYPE_CHECKING, Any

API = (
    "analyze",
    "search",
    "benchmark",
    "embed",
    "probe",
    "finetune",
    "halving",
    "register_proxy",
    "register_strategy",
    "AnalysisResult",
    "SearchResult",
    "BenchmarkResult",
    "EmbedResult",
    "ProbeResult",
    "FinetuneResult",
    "HalvingResult",
)
__all__ = list(API)

if TYPE_CHECKING:
    from whichmodel.api import (  # noqa: F401
        AnalysisResult,
        BenchmarkResult,
        EmbedResult,
        FinetuneResult,
        HalvingResult,
        ProbeResult,
        SearchResult,
        analyze,
        benchmark,
        embed,
        finetune,
        halving,
        probe,
        register_proxy,
        register_strategy,
        search,
    )


def __getattr__(name: str) -> Any:
    """The API's names, imported from ``whichmodel.api`` on first use."""
    if name in API:
        from whichmodel import api

        return getattr(api, name)
    raise AttributeError(f"module 'whichmodel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
