"""Progressive proxies (issue 15.1): successive halving over data and models.

``progressive_rank`` scores every model of a pool with a proxy on a small, class-stratified slice
of each task's train and val rows, keeps the best ``1/eta`` of them (and any tied with the last
kept), and moves on to a larger slice, up to the whole of train and val at the last rung: the
full data is embedded for a few models only. The final ranking orders models by the last rung
they reached, then by their score there (ties by the task-agnostic order, as every ranking of
the engine).

Slices: per task and split one seeded, class-stratified order of the rows (the j-th of a class's
``n_c`` rows gets the key ``(j + 0.5) / n_c``, ties broken at random), so every prefix keeps the
class proportions; the slice at fraction ``f`` is the first ``ceil(f * n)`` rows of that order,
hence a prefix of the next one.

Store: ``STORE/slices/model=M/task=T/<key>/<chunk>.parquet`` (``key`` as the store's partitions:
weights, preprocessing and task fingerprints). A chunk holds rows embedded once (``index``,
``label``, ``split``, ``embedding``, ``probs``); a rung embeds only the slice rows that no chunk
and no full-data partition of the ordinary store holds, so nothing is embedded twice. Next to
the chunks, ``scores/<proxy>-<hash>.json`` keeps each proxy result of a rung (the hash covers
the proxy's options, the seed and the slice's rows per split), so an interrupted or repeated
run computes only the results it has not got.

The ranking becomes the proxy ``progressive_<proxy>`` of a scores table (schema
``SCORES_DETAIL``): its score is ``rung reached + the dense rank of the model's score within that
rung / (models scored there + 1)``, so ranking by it (``task_aware``, ``hybrid_``) gives exactly
the progressive ranking; ``reason`` says the rung and the proxy's own score there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from whichmodel.actors.embedder import emb_column, probs_column, seconds_column
from whichmodel.actors.proxies import PROXIES, ProxyResult, pool_scores
from whichmodel.analysis.strategies import HYBRID_PREFIX, task_agnostic_order
from whichmodel.cluster import interrupts
from whichmodel.core import schema
from whichmodel.core.catalog import Catalogue
from whichmodel.core.errors import UserError
from whichmodel.core.outputs import atomic_text
from whichmodel.core.progress import StageProgress
from whichmodel.stages.embed import (
    EmbedConfig,
    ModelPlan,
    _load_tasks,
    _partitions,
    chunk_folder,
    embed_rows,
    plan_model,
)
from whichmodel.stages.probe import proxy_options, run_trials
from whichmodel.stages.store import read_chunks, read_partition, record_run, write_chunk
from whichmodel.tasks.loader import TaskData, TaskSpec

log = logging.getLogger("whichmodel")

PREFIX = "progressive_"
DEFAULT_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
SLICED = ("train", "val")


@dataclass(frozen=True)
class ProgressiveConfig:
    """Rungs of the halving: ``fractions`` of train/val (increasing, the last 1) and ``eta``
    (keep the best ``ceil(n / eta)`` at each rung, never fewer than ``keep_at_least``, and with
    ``keep_ties`` every model whose score equals the last kept one's: on a small validation
    slice accuracies tie often, and cutting a tie by the task-agnostic order is arbitrary);
    ``seed`` of the slice order; ``scale_steps``: a proxy with a ``steps`` option (linear)
    trains ``ceil(steps * f)`` steps on the slice at fraction ``f`` (the same epochs)."""

    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    eta: int = 3  # Hyperband's default; measured: eta 2 misses the cost goal
    keep_at_least: int = 1
    keep_ties: bool = True
    seed: int = 0
    scale_steps: bool = True


@dataclass
class ProgressiveResult:
    """A progressive ranking of a pool per task, its per-rung scores and what it cost."""

    proxy: str
    models: list[str]
    ranking: dict[str, list[str]]  # task -> models, best first
    rungs: pl.DataFrame  # one row per (task, rung, model scored there)
    scores: pl.DataFrame  # SCORES_DETAIL rows of proxy progressive_<proxy>
    embed_seconds: float = 0.0  # device-seconds of the forward passes in this call
    probe_seconds: float = 0.0  # device-seconds of the proxy in this call
    rows_embedded: dict[str, int] = field(default_factory=dict)  # model -> rows embedded
    wall_seconds: float = 0.0
    scored: int = 0  # (task, model, rung) proxy results computed by this call
    reused: int = 0  # ... read from the slice store (an earlier call scored the same slice)


# ---------------------------------------------------------------------------------------------
# inputs


def check_config(cfg: ProgressiveConfig) -> None:
    """``UserError`` on a bad eta or fractions (before any work)."""
    eta = cfg.eta
    if isinstance(eta, bool) or not isinstance(eta, int) or eta < 2:
        raise UserError(f"--eta {eta!r}: must be an integer >= 2")
    fr = cfg.fractions
    if not fr:
        raise UserError("--fractions: no fraction given")
    for f in fr:
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f <= 1:
            raise UserError(f"--fractions: {f!r} is not in (0, 1]")
    if any(b <= a for a, b in zip(fr, fr[1:], strict=False)):
        raise UserError(f"--fractions {_show(fr)}: must be strictly increasing")
    if fr[-1] != 1:
        raise UserError(f"--fractions {_show(fr)}: must end at 1 (the whole train/val data)")
    if not isinstance(cfg.keep_at_least, int) or cfg.keep_at_least < 1:
        raise UserError(f"keep_at_least {cfg.keep_at_least!r}: must be an integer >= 1")


def _show(fractions: tuple[float, ...]) -> str:
    return ",".join(f"{f:g}" for f in fractions)


def parse_fractions(text: str) -> tuple[float, ...]:
    """``"1/8,1/4,1/2,1"`` or ``"0.125,0.5,1"`` as floats; ``UserError`` on anything else (the
    order and range are checked by ``check_config``)."""
    out = []
    for item in text.split(","):
        try:
            out.append(float(Fraction(item.strip())))
        except (ValueError, ZeroDivisionError):
            raise UserError(f"--fractions {text!r}: {item.strip()!r} is not a number") from None
    return tuple(out)


def progressive_base(name: str) -> str | None:
    """The proxy of a ``progressive_<proxy>`` or ``hybrid_progressive_<proxy>`` name (or the
    proxy name ``progressive_<proxy>`` itself); None for any other name; ``UserError`` for an
    unknown proxy."""
    bare = name.removeprefix(HYBRID_PREFIX)
    if not bare.startswith(PREFIX):
        return None
    proxy = bare.removeprefix(PREFIX)
    if proxy not in PROXIES:
        raise UserError(
            f"strategy {name!r}: unknown proxy {proxy!r} after {PREFIX!r} "
            f"(available: {', '.join(PROXIES)})"
        )
    return proxy


def progressive_names() -> list[str]:
    """``progressive_<proxy>`` for every proxy of the registry (the proxies of such rankings)."""
    return [PREFIX + p for p in PROXIES]


# ---------------------------------------------------------------------------------------------
# slices


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Positions of ``labels`` in an order whose every prefix keeps the class proportions."""
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels))
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        keys[rows] = (np.arange(len(rows)) + 0.5) / len(rows)
    return np.lexsort((rng.random(len(labels)), keys))


def slice_orders(data: TaskData, seed: int) -> dict[str, np.ndarray]:
    """Per split of ``SLICED``, the task's row indices (``index`` column) in slice order."""
    table = data.table
    index = table["index"].to_numpy()
    split = table["split"].to_numpy(zero_copy_only=False)
    label = table["label"].to_numpy()
    out = {}
    for s in SLICED:
        rows = np.flatnonzero(split == s)
        rows = rows[np.argsort(index[rows], kind="stable")]
        out[s] = index[rows][stratified_order(label[rows], seed)]
    return out


def slice_size(n: int, fraction: float) -> int:
    """Rows of a split of ``n`` in the slice at ``fraction`` (at least 1)."""
    return min(n, max(1, math.ceil(fraction * n - 1e-9)))


def slice_indices(orders: dict[str, np.ndarray], fraction: float) -> dict[str, np.ndarray]:
    return {s: o[: slice_size(len(o), fraction)] for s, o in orders.items()}


# ---------------------------------------------------------------------------------------------
# the slice store


class _Rows:
    """The embedded rows of one (model, task) the run knows of: chunks, plus the ordinary
    store's full-data train/val partitions when they exist. Embeddings are read only when a
    proxy needs them (a rung whose results are all saved reads none)."""

    def __init__(self, store: Path, plan: ModelPlan, task: str, task_fp: str):
        self.folder = chunk_folder(store, plan, task, task_fp)
        full = {p.split: p for p in _partitions(store, plan, task, task_fp)}
        self.full = [full[s] for s in SLICED] if all(full[s].exists() for s in SLICED) else []
        self._parts: list[dict[str, np.ndarray]] | None = None
        self._have: np.ndarray | None = None  # chunk row indices, read once, then kept by add()

    @property
    def parts(self) -> list[dict[str, np.ndarray]]:
        if self._parts is None:
            self._parts = []
            for split, partition in zip(SLICED, self.full, strict=False):
                part = read_partition(partition)
                part["split"] = np.full(len(part["index"]), split, dtype=object)
                self._parts.append(part)
            chunks = read_chunks(self.folder)
            if chunks is not None:
                self._parts.append(chunks)
        return self._parts

    def missing(self, need: np.ndarray) -> tuple[int, ...]:
        """The rows of ``need`` (train/val indices) that no chunk or full partition holds."""
        if self.full:
            return ()
        if self._have is None:
            files = sorted(self.folder.glob("*.parquet"))
            known = [pq.read_table(f, columns=["index"])["index"].to_numpy() for f in files]
            self._have = np.concatenate(known) if known else np.zeros(0, np.int64)
        return tuple(int(i) for i in np.sort(need[~np.isin(need, self._have)]))

    def add(self, cols: dict[str, np.ndarray]) -> None:
        write_chunk(self.folder, cols)
        if self._parts is not None:  # else the chunk is read with the others when needed
            self._parts.append(cols)
        if self._have is not None:
            self._have = np.concatenate([self._have, np.asarray(cols["index"], np.int64)])

    def saved_score(self, key: str) -> ProxyResult | None:
        """The proxy result saved under ``key`` by an earlier call (None if there is none)."""
        path = self.folder / "scores" / f"{key}.json"
        if not path.exists():
            return None
        doc = json.loads(path.read_text())
        return ProxyResult(doc["score"], doc["reason"], doc["runs"], doc["seconds"])

    def save_score(self, key: str, result: ProxyResult) -> None:
        doc = {"score": result.score, "reason": result.reason, "runs": result.runs}
        doc["seconds"] = result.seconds
        text = json.dumps(doc, default=float)
        atomic_text(self.folder / "scores" / f"{key}.json", text)

    def arrays(self, wanted: dict[str, np.ndarray], num_classes: int) -> dict:
        """The ``proxy_input`` arrays of the slice ``wanted`` (row indices per split)."""
        cols = {k: np.concatenate([p[k] for p in self.parts]) for k in ("index", "label")}
        emb = np.concatenate([p["embedding"] for p in self.parts])
        has_probs = all("probs" in p and p["probs"] is not None for p in self.parts)
        probs = np.concatenate([p["probs"] for p in self.parts]) if has_probs else None
        where = {int(i): k for k, i in enumerate(cols["index"])}
        out: dict = {"num_classes": num_classes}
        for s, idx in wanted.items():
            rows = np.array([where[int(i)] for i in idx], dtype=np.int64)
            out[s] = {"label": cols["label"][rows], "embedding": emb[rows]}
            if probs is not None:
                out[s]["probs"] = probs[rows]
        return out


# ---------------------------------------------------------------------------------------------
# ranking


def final_order(reached: np.ndarray, last_scores: np.ndarray, agnostic: np.ndarray) -> np.ndarray:
    """Model positions best first: by the last rung reached (higher first), then the score there
    (higher first, NaN last), then the task-agnostic order ``agnostic`` (positions, best
    first)."""
    tie = np.empty(len(agnostic), dtype=np.int64)
    tie[agnostic] = np.arange(len(agnostic))
    score = np.where(np.isnan(last_scores), np.inf, -last_scores)
    return np.lexsort((tie, score, -reached))


def encoded_scores(reached: np.ndarray, last_scores: np.ndarray) -> np.ndarray:
    """The scores-table value of each model: rung reached + its dense rank among the finite
    scores of that rung / (their count + 1); a NaN score counts 0; never scored: NaN."""
    out = np.full(len(reached), np.nan)
    for r in np.unique(reached):
        here = reached == r
        vals = last_scores[here]
        finite = np.unique(vals[~np.isnan(vals)])
        frac = np.where(
            np.isnan(vals), 0.0, (np.searchsorted(finite, vals) + 1) / (len(finite) + 1)
        )
        out[here] = r + frac
    return out


def _proxy_options(proxy: str, preset: dict, fraction: float, scale: bool) -> dict:
    opts = dict(proxy_options(preset, [proxy]).get(proxy, {}))
    if scale and "steps" in opts:
        opts["steps"] = max(1, math.ceil(int(opts["steps"]) * fraction))
    return opts


# ---------------------------------------------------------------------------------------------
# the stage


@dataclass
class _Halving:
    """Where successive halving stands, per task: the models still in (indices), the last rung
    each reached and its score there, the per-rung rows, and the seconds spent."""

    alive: dict[str, list[int]]
    reached: dict[str, np.ndarray]
    last: dict[str, np.ndarray]
    rows: list[dict] = field(default_factory=list)
    embedded: dict[str, int] = field(default_factory=dict)
    embed_s: float = 0.0
    probe_s: float = 0.0  # computed in this call (saved results not counted)
    scored: int = 0  # (task, model, rung) results computed in this call
    reused: int = 0  # ... read from the slice store

    @classmethod
    def start(cls, tasks: list[str], models: list[str]) -> _Halving:
        n = len(models)
        return cls(
            alive={t: list(range(n)) for t in tasks},
            reached={t: np.zeros(n) for t in tasks},
            last={t: np.full(n, np.nan) for t in tasks},
            embedded=dict.fromkeys(models, 0),
        )


def progressive_rank(
    catalogue: Catalogue,
    pool: str,
    tasks: Sequence[TaskSpec | TaskData],
    proxy: str,
    store: str | Path,
    preset: dict,
    embed_cfg: EmbedConfig,
    cfg: ProgressiveConfig | None = None,
) -> ProgressiveResult:
    """Rank ``pool``'s models for every task by successive halving over slices of the data,
    scored with ``proxy`` (options from ``preset``), embedding into ``store``'s slice chunks
    only the rows no chunk or full partition holds yet. ``tasks``: loaded tasks (an app loads
    each once and hands it to every stage) or specs (loaded here)."""
    cfg = cfg or ProgressiveConfig()
    check_config(cfg)
    if proxy not in PROXIES:
        raise UserError(f"unknown proxy {proxy!r} (available: {', '.join(PROXIES)})")
    start = time.perf_counter()
    store = Path(store).resolve()
    meta = catalogue.pool(pool)
    models = meta["model"].to_list()
    agnostic = task_agnostic_order(meta)
    plans = {
        name: plan_model(name, source, catalogue.path.parent, embed_cfg)
        for name, source in meta.select("model", "source").iter_rows()
    }
    data, fps, task_meta = _load_tasks(tasks)
    display = None
    orders = {t: slice_orders(d, cfg.seed) for t, d in data.items()}
    stored = {(m, t): _Rows(store, plans[m], t, fps[t]) for m in models for t in data}
    state = _Halving.start(list(data), models)
    for r, fraction in enumerate(cfg.fractions):
        rung_start = time.monotonic()
        interrupts.progress("progressive ranking", r, len(cfg.fractions), "rungs")
        wanted = {t: slice_indices(orders[t], fraction) for t in data}
        seconds = _embed_rung(
            plans, models, data, wanted, state.alive, stored, embed_cfg, state.embedded
        )
        state.embed_s += sum(seconds.values())
        options = _proxy_options(proxy, preset, fraction, cfg.scale_steps)
        results = _score_rung(
            store, preset, proxy, options, cfg.seed, state, stored, models, data, wanted, fraction
        )
        _promote(state, r, fraction, results, wanted, seconds, models, agnostic, cfg, proxy)
        if display is None and (seconds or state.scored):  # shown once there is work
            # the rungs before this one were reused: counted as done, not in the rate
            stage = f"progressive {proxy} ({pool})"
            display = StageProgress(stage, len(cfg.fractions), "rungs", initial=r, start=rung_start)
        if display is not None:
            display.update(1)
    if display is not None:
        display.close()
    ranking, scores = _ranking_and_scores(state, models, agnostic, proxy, cfg)
    result = ProgressiveResult(
        proxy=proxy,
        models=models,
        ranking=ranking,
        rungs=pl.DataFrame(state.rows, schema=RUNGS),
        scores=scores,
        embed_seconds=state.embed_s,
        probe_seconds=state.probe_s,
        rows_embedded=state.embedded,
        wall_seconds=time.perf_counter() - start,
        scored=state.scored,
        reused=state.reused,
    )
    run = {"stage": "progressive", "pool": pool, "proxy": proxy, "eta": cfg.eta}
    run |= {"fractions": list(cfg.fractions), "rows_embedded": state.embedded}
    record_run(
        store, {}, task_meta, run | {"embed_seconds": state.embed_s, "probe_seconds": state.probe_s}
    )
    return result


def _score_rung(
    store: Path,
    preset: dict,
    proxy: str,
    options: dict,
    seed: int,
    state: _Halving,
    stored: dict[tuple[str, str], _Rows],
    models: list[str],
    data: dict[str, TaskData],
    wanted: dict[str, dict[str, np.ndarray]],
    fraction: float,
) -> dict[tuple[str, int], ProxyResult]:
    """The proxy's result for every surviving (task, model) on this rung's slice: read from the
    slice store where an earlier call scored the same slice with the same options, else
    computed by the probe stage's trials (``whichmodel.stages.probe.run_trials``: one Tune trial
    per pair, its experiment under ``STORE/probes/``) and saved, so an interrupted or repeated
    run resumes; the experiment is removed once every result is saved (a second copy of them).
    Ray starts only when some result is not in the store."""
    results, keys, todo = {}, {}, {}
    for t in data:
        n_rows = {s: len(v) for s, v in wanted[t].items()}
        for m in state.alive[t]:
            rows = stored[models[m], t]
            keys[t, m] = score_key(proxy, options, seed, n_rows)
            cached = rows.saved_score(keys[t, m])
            if cached is not None:
                results[t, m] = cached
                state.reused += 1
                continue
            todo[models[m], t] = m
    if not todo:
        return results

    def load(model: str, task: str) -> dict:
        return stored[model, task].arrays(wanted[task], len(data[task].classes))

    named = sorted(
        f"{stored[p].folder.relative_to(store)}/{keys[p[1], m]}" for p, m in todo.items()
    )
    digest = hashlib.sha256(json.dumps([named, options]).encode()).hexdigest()[:16]
    path = store / "probes" / f"progressive-{digest}"
    try:
        trials = run_trials(
            list(todo), load, [proxy], {proxy: options}, preset, path, PREFIX[:-1], nested=True
        )
    except UserError as exc:
        raise UserError(f"proxy {proxy} on {fraction:.1%} of train/val: {exc}") from None
    for row in sorted(trials.rows, key=lambda r: (r["task"], todo[r["model"], r["task"]])):
        t, m = row["task"], todo[row["model"], row["task"]]
        out = ProxyResult(row["score"], row["reason"], json.loads(row["runs"]), row["seconds"])
        stored[models[m], t].save_score(keys[t, m], out)  # saved at once: a later failure
        state.probe_s += out.seconds  # leaves the finished results for the next call
        state.scored += 1
        results[t, m] = out
    shutil.rmtree(path, ignore_errors=True)  # every result is in its JSON now
    return results


def score_key(proxy: str, options: dict, seed: int, n_rows: dict[str, int]) -> str:
    """The name of a saved proxy result: the proxy, its options and the slice (seed and rows
    per split; the task's content is in the folder's key)."""
    spec = {"proxy": proxy, "options": options, "seed": seed, "rows": n_rows}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return f"{proxy}-{digest}"


def _promote(
    state: _Halving,
    r: int,
    fraction: float,
    results: dict,
    wanted: dict,
    seconds: dict,
    models: list[str],
    agnostic: np.ndarray,
    cfg: ProgressiveConfig,
    proxy: str,
) -> None:
    """Record rung ``r``'s scores, its rows, and keep each task's survivors. The models scored
    at the rung are its pool: ``pool_scores`` combines their scores (NCTI, ETran: min-max
    across them), and the combined score is what ranks, is kept and is recorded."""
    last_rung = r == len(cfg.fractions) - 1
    for t in state.alive:
        outs = [results[t, m] for m in state.alive[t]]
        pooled = pool_scores(proxy, [o.score for o in outs], [o.runs for o in outs])
        for m, score in zip(state.alive[t], pooled, strict=True):
            state.reached[t][m] = r
            state.last[t][m] = score
        keep = _survivors(state.alive[t], state.last[t], agnostic, cfg, last_rung)
        for m in state.alive[t]:
            out = results[t, m]
            state.rows.append(
                {
                    "task": t,
                    "rung": r,
                    "fraction": float(fraction),
                    "train_rows": len(wanted[t]["train"]),
                    "val_rows": len(wanted[t]["val"]),
                    "model": models[m],
                    "score": _num(state.last[t][m]),
                    "reason": out.reason,
                    "kept": m in keep,
                    "embed_seconds": seconds.get((models[m], t), 0.0),
                    "probe_seconds": out.seconds,
                }
            )
        state.alive[t] = keep


def _ranking_and_scores(
    state: _Halving, models: list[str], agnostic: np.ndarray, proxy: str, cfg: ProgressiveConfig
) -> tuple[dict[str, list[str]], pl.DataFrame]:
    """Per task the final ranking, and the scores table (proxy ``progressive_<proxy>``) whose
    scores rank exactly that way."""
    ranking, score_rows = {}, []
    n_rungs = len(cfg.fractions)
    probe_s: dict[tuple[str, str], float] = {}
    for row in state.rows:
        key = (row["model"], row["task"])
        probe_s[key] = probe_s.get(key, 0.0) + row["probe_seconds"]
    for t, reached in state.reached.items():
        last = state.last[t]
        ranking[t] = [models[m] for m in final_order(reached, last, agnostic)]
        enc = encoded_scores(reached, last)
        for m, name in enumerate(models):
            raw, rung = last[m], int(reached[m])
            frac = cfg.fractions[rung]
            raw_text = "not applicable" if np.isnan(raw) else f"{PROXIES[proxy].label} {raw:.4f}"
            score_rows.append(
                {
                    "model": name,
                    "task": t,
                    "proxy": PREFIX + proxy,
                    "score": None if np.isnan(enc[m]) else float(enc[m]),
                    "reason": f"rung {rung + 1}/{n_rungs} ({frac:.1%} of train/val): {raw_text}",
                    "seconds": probe_s.get((name, t), 0.0),
                    "runs": json.dumps({"rung": rung, "fraction": frac, "score": _num(raw)}),
                }
            )
    return ranking, pl.DataFrame(score_rows, schema=schema.SCORES_DETAIL)


RUNGS = schema.PROGRESSIVE_RUNG


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _survivors(
    alive: list[int], scores: np.ndarray, agnostic: np.ndarray, cfg: ProgressiveConfig, last: bool
) -> list[int]:
    """The models of ``alive`` that go on to the next rung (all of them after the last)."""
    if last:
        return list(alive)
    keep = min(len(alive), max(math.ceil(len(alive) / cfg.eta), cfg.keep_at_least))
    reached = np.zeros(len(scores))
    reached[alive] = 1
    order = final_order(reached, scores, agnostic)
    if cfg.keep_ties and not np.isnan(scores[order[keep - 1]]):
        while keep < len(alive) and scores[order[keep]] == scores[order[keep - 1]]:
            keep += 1  # a tie at the cut carries no evidence: the tied go on together
    return sorted(int(m) for m in order[:keep])


def _embed_rung(
    plans: dict[str, ModelPlan],
    models: list[str],
    data: dict[str, TaskData],
    wanted: dict[str, dict[str, np.ndarray]],
    alive: dict[str, list[int]],
    stored: dict[tuple[str, str], _Rows],
    cfg: EmbedConfig,
    embedded: dict[str, int],
) -> dict[tuple[str, str], float]:
    """Embed, for every surviving (model, task), the slice rows it has not got; models that
    miss the same rows of a task share one pseudo-task (decoded once). Device-seconds per pair."""
    groups: dict[tuple[str, tuple[int, ...]], list[str]] = {}
    for t in data:
        need = np.concatenate([wanted[t][s] for s in SLICED])
        for m in alive[t]:
            missing = stored[models[m], t].missing(need)
            if missing:
                groups.setdefault((t, missing), []).append(models[m])
    if not groups:
        return {}
    pseudo: dict[str, tuple[str, list[str]]] = {}
    tables = []
    for k, ((t, missing), names) in enumerate(groups.items()):
        name = f"{t}#{k}"
        pseudo[name] = (t, names)
        table = data[t].table
        take = np.flatnonzero(np.isin(table["index"].to_numpy(), np.array(missing)))
        tables.append(TaskData(name, data[t].classes, table.take(take)))
    work = [plans[m] for m in models if any(m in n for _, n in pseudo.values())]
    needs = {p.name: [k for k, (_, n) in pseudo.items() if p.name in n] for p in work}
    seconds: dict[tuple[str, str], float] = {}
    for name, cols in embed_rows(tables, work, needs, cfg):
        task, names = pseudo[name]
        for i, plan in enumerate(work):
            if plan.name not in names:
                continue
            probs = cols.get(probs_column(i))
            stored[plan.name, task].add(
                {
                    "index": cols["index"],
                    "label": cols["label"],
                    "split": np.asarray(cols["split"], dtype=object),
                    "embedding": cols[emb_column(i)],
                    "probs": probs,
                }
            )
            embedded[plan.name] += len(cols["index"])
            seconds[plan.name, task] = float(cols[seconds_column(i)].sum())
    return seconds
