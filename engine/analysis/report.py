"""The benchmark's HTML report: one self-contained file (inline CSS, PNGs as data URIs, no
script, nothing fetched) with findings, a regret table and the figures per pool, compute per
stage, the tasks, the models and the run's configuration.

Every number in a pool table is the mean over the pool's tasks of the regret table's
``abs_regret`` and ``rel_regret`` at that (strategy, budget); each cell carries the exact values
in ``data-abs`` / ``data-rel`` so that a reader (or a test) can check them against the table.
"""

from __future__ import annotations

import base64
import html
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from whichmodel.analysis.analyze import Analysis
from whichmodel.analysis.bootstrap import UNDECIDED, interval, verdict
from whichmodel.analysis.quality import BASELINE_PARAMS, BASELINE_TASK_AGNOSTIC, BASELINES
from whichmodel.analysis.strategies import HYBRID_PREFIX, PoolData
from whichmodel.core.outputs import atomic_text

EPS = 1e-12
# Reference strategies that see the fine-tune results: never "best" in a table.
REFERENCES = ("oracle", "task_agnostic_oracle")
SMALL_BUDGETS = (2, 3)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:72rem;
 padding:0 1rem;color:#1b1b1b;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ccc;padding-bottom:.2rem;
 margin-top:2.2rem}h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}
th,td{border:1px solid #d0d0d0;padding:.25rem .5rem;text-align:right;vertical-align:top}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
td.best{font-weight:bold;background:#eef7ee}
pre{background:#f7f7f7;border:1px solid #ddd;padding:.7rem;overflow-x:auto;font-size:.82rem}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}
.verdict-beats{color:#1a7f37}.verdict-loses{color:#b42318}.verdict-ties{color:#8a6d00}
.significance-better{color:#1a7f37}.significance-worse{color:#b42318}
.note{color:#555;font-size:.9rem}
"""


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows. ``plots`` maps a pool name to its PNG files; ``compute`` is
    the benchmark's compute record (see whichmodel.apps.benchmark) or None."""

    title: str
    config_text: str
    analysis: Analysis
    plots: dict[str, list[Path]] = field(default_factory=dict)
    compute: dict | None = None
    tasks: pl.DataFrame | None = None
    models: pl.DataFrame | None = None
    config_path: str = ""
    progressive: pl.DataFrame | None = None  # schema.PROGRESSIVE_COST; None: no such proxies
    # schema.ORACLE_STABILITY of a finetune table with several repetitions; None: one repetition
    stability: pl.DataFrame | None = None
    oracle_note: str = ""  # the preset's ``oracle_note``: what is known of its oracle's noise


@dataclass(frozen=True)
class Finding:
    """One comparison of a hybrid with its two parts at one budget (mean relative regret)."""

    pool: str
    proxy: str
    budget: int
    hybrid: float
    agnostic: float
    aware: float
    # 95 % paired-bootstrap intervals of hybrid - task_agnostic and hybrid - <proxy> (None: off)
    ci_agnostic: tuple[float, float] | None = None
    ci_aware: tuple[float, float] | None = None

    @property
    def significance(self) -> str | None:
        """``better`` (below both parts at 95 %), ``worse`` (above one of them at 95 %), else
        ``not distinguishable at 95 %``; None without intervals."""
        if self.ci_agnostic is None or self.ci_aware is None:
            return None
        parts = [verdict(*self.ci_agnostic), verdict(*self.ci_aware)]
        if "worse" in parts:
            return "worse"
        return "better" if parts == ["better", "better"] else UNDECIDED

    @property
    def verdict(self) -> str:
        """``beats`` (both parts), ``ties`` (the better part), or ``loses`` (to one of them)."""
        best = min(self.agnostic, self.aware)
        if self.hybrid < best - EPS:
            return "beats"
        return "ties" if self.hybrid <= best + EPS else "loses"


def mean_regret(regret: pl.DataFrame, pool: str) -> pl.DataFrame:
    """Per (strategy, budget) of ``pool``: the mean absolute and relative regret over tasks."""
    return (
        regret.filter(pl.col("pool") == pool)
        .group_by("strategy", "budget", maintain_order=True)
        .agg(pl.col("abs_regret").mean(), pl.col("rel_regret").mean())
    )


def findings(analysis: Analysis) -> tuple[list[Finding], list[str]]:
    """Hybrid against task-agnostic and task-aware alone at small budgets, per pool and proxy;
    and a note for each pool where no such comparison is possible."""
    out, notes = [], []
    for pool in analysis.pools:
        means = mean_regret(analysis.regret, pool.name)
        rel = {(s, b): r for s, b, r in means.select("strategy", "budget", "rel_regret").rows()}
        strategies = set(means["strategy"])
        proxies = [
            s[len(HYBRID_PREFIX) :]
            for s in means["strategy"].unique(maintain_order=True)
            if s.startswith(HYBRID_PREFIX) and s[len(HYBRID_PREFIX) :] in strategies
        ]
        budgets = sorted(b for b in set(means["budget"]) if b in SMALL_BUDGETS and b < pool.size)
        if not proxies:
            notes.append(f"pool {pool.name}: no task-aware proxy ran, so there is no hybrid.")
            continue
        if not budgets:
            notes.append(
                f"pool {pool.name} ({pool.size} models): no budget B with 2 ≤ B ≤ 3 and B < "
                f"{pool.size} was analysed, so hybrid cannot be told apart: at B=1 it is "
                f"task-agnostic by definition, and at B ≥ {pool.size} every strategy picks the "
                "whole pool."
            )
            continue
        means = analysis.boot_means.get(pool.name)
        for proxy in proxies:
            for b in budgets:
                cis = [None, None]
                if means is not None:
                    hyb = means[HYBRID_PREFIX + proxy][:, b - 1]
                    for k, other in enumerate(("task_agnostic", proxy)):
                        low, high = interval(hyb - means[other][:, b - 1])
                        cis[k] = (float(low), float(high))
                out.append(
                    Finding(
                        pool.name,
                        proxy,
                        b,
                        rel[(HYBRID_PREFIX + proxy, b)],
                        rel[("task_agnostic", b)],
                        rel[(proxy, b)],
                        *cis,
                    )
                )
    return out, notes


def headline(items: list[Finding], analysis: Analysis) -> str:
    """One plain sentence on the paper's phenomenon, from the findings."""
    if not items:
        return (
            "No comparison of hybrid with task-agnostic and task-aware alone was possible in "
            "this run (see the notes below)."
        )
    n = len(items)
    beats = sum(f.verdict == "beats" for f in items)
    ties = sum(f.verdict == "ties" for f in items)
    loses = n - beats - ties
    n_tasks = max(len(p.tasks) for p in analysis.pools)
    if beats == n:
        verdict = "holds in every comparison"
    elif beats == 0:
        verdict = "does not hold in any comparison"
    else:
        verdict = f"holds in {beats} of {n} comparisons"
    text = (
        "The paper's phenomenon — the hybrid strategy beating both task-agnostic and task-aware "
        f"alone at small budgets (mean relative regret over tasks, B = 2, 3) — {verdict} here"
    )
    parts = []
    if ties:
        parts.append(f"hybrid ties the better of the two in {ties}")
    if loses:
        parts.append(f"does worse than one of them in {loses}")
    text += (": " + " and ".join(parts) + ".") if parts else "."
    sig = [f.significance for f in items if f.significance is not None]
    if sig:
        text += (
            f" At 95 % ({bootstrap_words(analysis)}) hybrid is "
            f"better than both parts in {sig.count('better')}, worse than one of them in "
            f"{sig.count('worse')} and {UNDECIDED} from them in "
            f"{sig.count(UNDECIDED)} of {len(sig)} comparisons."
        )
    if n_tasks < 5:
        text += f" With {n_tasks} task(s) these means are anecdotes, not evidence."
    return text


def oracle_text(stability: pl.DataFrame | None, note: str = "") -> str:
    """How far the oracle's best model can be trusted: with several fine-tune repetitions, on
    how many tasks it changes between them; with one, that this run cannot tell (and ``note``)."""
    if stability is None or stability.height == 0:
        text = (
            "The oracle is one fine-tune repetition per model and task, so this run cannot tell "
            "how often its best model would change with another fine-tune seed."
        )
        return f"{text} {note}" if note else text
    changed = stability.filter(pl.col("changes"))
    text = (
        f"The oracle's best model changes between fine-tune repetitions on {changed.height} of "
        f"{stability.height} task(s) (table oracle_stability)"
    )
    if changed.height:
        text += ": " + "; ".join(
            f"{t}: {b}" for t, b in changed.select("task", "best_per_rep").iter_rows()
        )
    return text + "."


def bootstrap_words(analysis: Analysis) -> str:
    """How the intervals were resampled, e.g. ``paired bootstrap over tasks, 1000 resamples``."""
    reps = sorted({r for r in analysis.n_reps.values() if r > 1})
    within = (
        f" and, within each, its {'/'.join(map(str, reps))} fine-tune repetitions" if reps else ""
    )
    return f"paired bootstrap over tasks{within}, {analysis.n_boot} resamples"


def _finding_html(f: Finding) -> str:
    hyb, aware = HYBRID_PREFIX + f.proxy, f.proxy
    if f.significance is not None:
        ci = f"[{f.ci_agnostic[0]:+.4f}, {f.ci_agnostic[1]:+.4f}] and [{f.ci_aware[0]:+.4f}, "
        ci += f"{f.ci_aware[1]:+.4f}]"
        says = {"better": "better than both", "worse": "worse than one of them"}.get(
            f.significance, UNDECIDED
        )
        cls = {"better": "better", "worse": "worse"}.get(f.significance, "undecided")
        return (
            f'<li class="significance-{cls}" data-pool="{_e(f.pool)}" '
            f'data-proxy="{_e(f.proxy)}" data-budget="{f.budget}" data-verdict="{f.verdict}" '
            f'data-significance="{_e(f.significance)}">pool {_e(f.pool)}, B={f.budget}: '
            f"{_e(hyb)} {f.hybrid:.4f} vs task_agnostic {f.agnostic:.4f} and {_e(aware)} "
            f"{f.aware:.4f} (95 % intervals of the differences: {ci}) — "
            f"<strong>{_e(says)}</strong></li>"
        )
    if f.verdict == "beats":
        says = "beats both"
    elif f.verdict == "ties":
        says = "ties the better of the two"
    else:
        worse = [
            n for n, v in (("task_agnostic", f.agnostic), (aware, f.aware)) if v < f.hybrid - EPS
        ]
        says = "does not beat " + " or ".join(worse)
    return (
        f'<li class="verdict-{f.verdict}" data-pool="{_e(f.pool)}" data-proxy="{_e(f.proxy)}" '
        f'data-budget="{f.budget}" data-verdict="{f.verdict}">pool {_e(f.pool)}, B={f.budget}: '
        f"{_e(hyb)} {f.hybrid:.4f} vs task_agnostic {f.agnostic:.4f} and {_e(aware)} "
        f"{f.aware:.4f} — <strong>{_e(says)}</strong></li>"
    )


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return _e(value)


def frame_html(df: pl.DataFrame, table_id: str) -> str:
    """A frame as an HTML table (floats to 4 decimals, nulls as a dash)."""
    head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in df.iter_rows()
    )
    return f'<table id="{_e(table_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def pool_table(regret: pl.DataFrame, pool: PoolData) -> str:
    """Strategies × budgets of one pool: mean absolute / mean relative regret over its tasks."""
    means = mean_regret(regret, pool.name)
    budgets = sorted(set(means["budget"]))
    cells = {(s, b): (a, r) for s, b, a, r in means.iter_rows()}
    best = {}
    for b in budgets:
        ranked = [r for (s, bb), (_, r) in cells.items() if bb == b and s not in REFERENCES]
        best[b] = min(ranked) if ranked else None
    head = "".join(f"<th>B={b}</th>" for b in budgets)
    rows = []
    for s in means["strategy"].unique(maintain_order=True):
        tds = []
        for b in budgets:
            if (s, b) not in cells:
                tds.append("<td>—</td>")
                continue
            a, r = cells[(s, b)]
            cls = ' class="best"' if s not in REFERENCES and r <= best[b] + EPS else ""
            tds.append(
                f'<td{cls} data-strategy="{_e(s)}" data-budget="{b}" data-abs="{a!r}" '
                f'data-rel="{r!r}">{a:.4f} / {r:.4f}</td>'
            )
        rows.append(f"<tr><td>{_e(s)}</td>{''.join(tds)}</tr>")
    return (
        f'<table class="regret" data-pool="{_e(pool.name)}"><thead><tr><th>strategy</th>{head}'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


QUALITY_COLUMNS = {
    "weighted_tau": "weighted τ",
    "kendall_tau": "Kendall τ",
    "pearson": "Pearson r",
    "top1_hit": "top-1 hit",
    "top3_hit": "top-3 hit",
}


def quality_table(quality: pl.DataFrame, pool: PoolData) -> str:
    """Proxies × estimator quality of one pool: the quality table's mean rows (over tasks); each
    cell carries its exact value in ``data-value`` (empty where undefined)."""
    means = quality.filter(pl.col("pool") == pool.name, pl.col("task").is_null())
    head = "".join(f"<th>{_e(label)}</th>" for label in QUALITY_COLUMNS.values())
    rows = []
    for row in means.iter_rows(named=True):
        tds = "".join(
            f'<td data-col="{c}" data-value="{"" if row[c] is None else repr(row[c])}">'
            f"{_fmt(row[c])}</td>"
            for c in QUALITY_COLUMNS
        )
        rows.append(f'<tr data-proxy="{_e(row["proxy"])}"><td>{_e(row["proxy"])}</td>{tds}</tr>')
    return (
        f'<table class="quality" data-pool="{_e(pool.name)}"><thead><tr><th>proxy</th>{head}'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def quality_html(quality: pl.DataFrame, pools: list[PoolData]) -> str:
    """The estimator-quality section: one table per pool with proxy scores, or a note."""
    if quality.is_empty():
        return '<p class="note">No proxy scores in this run, so no estimator quality.</p>'
    tables = "".join(
        f"<h3>Pool {_e(p.name)}</h3>{quality_table(quality, p)}{beats_static_html(quality, p)}"
        for p in pools
        if (quality["pool"] == p.name).any()
    )
    return (
        '<p class="note">Per proxy, the mean over tasks of how well its scores rank the models by '
        "fine-tune accuracy, as the transferability literature reports it: weighted Kendall τ "
        "(as LogME and SFDA compute it), Kendall τ-b and Pearson r over the models the proxy "
        "applies to; and the fraction of tasks whose top 1 / top 3 by the proxy contain a best "
        "model (zero regret at B = 1 / 3). The baseline rows are static orders a proxy should "
        "beat: the task-agnostic order (ImageNet top-1 first), model size (parameters) and the "
        f"expectation under a random order. Per task: quality.csv.</p>{tables}"
    )


def beats_static_html(quality: pl.DataFrame, pool: PoolData) -> str:
    """Which proxies' mean weighted τ exceeds both static orders' (task-agnostic, parameters)."""
    means = quality.filter(pl.col("pool") == pool.name, pl.col("task").is_null())
    tw = {r["proxy"]: r["weighted_tau"] for r in means.iter_rows(named=True)}
    static = [tw.get(b) for b in (BASELINE_TASK_AGNOSTIC, BASELINE_PARAMS)]
    static = [v for v in static if v is not None]
    if not static:
        return ""
    proxies = [p for p in tw if p not in BASELINES and tw[p] is not None]
    beats = sorted(p for p in proxies if tw[p] > max(static))
    text = (
        f"Mean weighted τ above both static orders (best of them {max(static):.3f}): "
        + (", ".join(_e(p) for p in beats) if beats else "none of the proxies")
        + "."
    )
    return (
        f'<p class="beats" data-pool="{_e(pool.name)}" data-beat="{_e(",".join(beats))}">{text}</p>'
    )


def progressive_html(cost: pl.DataFrame | None) -> str:
    """The progressive-proxies section: per pool and proxy, the rows and proxy seconds its
    ranking needed against the full-data proxy's; empty without progressive proxies."""
    if cost is None:
        return ""
    note = (
        '<p class="note">progressive_&lt;proxy&gt; ranks each pool by successive halving over '
        "growing class-stratified slices of train/val: every model is scored on the first "
        "slice, the best 1/eta (and any tied with the last of them) go on to the next, the last "
        "slice is the whole data. Its regret "
        "is in the tables above (progressive_&lt;proxy&gt; and hybrid_progressive_&lt;proxy&gt;"
        "). Rows: the train+val rows its rankings read (each model up to the largest slice it "
        "reached; the forward passes a store without them would compute) against every model "
        "on the whole data; proxy seconds against the full-data proxy of the probe stage. "
        "Its estimator-quality row ranks by rung reached, then the score there.</p>"
    )
    return (
        f'<section id="progressive"><h2>Progressive proxies</h2>{note}'
        + frame_html(cost, "progressive-table")
        + "</section>"
    )


CAPTIONS = {
    "regret_per_task": "Relative regret per task at B=1 and B=2, tasks grouped by category "
    "(paper Fig. 3/4).",
    "delta": "Relative delta between two strategies per task at B=1: above 0, the first picked "
    "better (paper Fig. 5/6).",
    "budget_curves": "Fraction of tasks with zero regret and mean relative regret against the "
    "budget (paper Fig. 7).",
}


def figure_html(path: Path) -> str:
    """A PNG embedded as a data URI, with a caption from its file name."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    caption = next((c for k, c in CAPTIONS.items() if path.name.startswith(k)), "")
    return (
        f'<figure><img alt="{_e(path.stem)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(path.name)}: {_e(caption)}</figcaption></figure>"
    )


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def compute_html(compute: dict | None) -> str:
    """This invocation's stages and the device-seconds behind the study's results."""
    if not compute:
        return '<p class="note">No compute record for this report.</p>'
    study = compute.get("study_device_s", {})
    head = (
        "<tr><th>stage</th><th>what</th><th>computed</th><th>reused</th><th>wall s</th>"
        "<th>device s</th><th>device s behind the results</th></tr>"
    )
    rows = []
    for s in compute["invocation"]["stages"]:
        stage, device, behind = s["stage"], _seconds(s["device_s"]), _seconds(study.get(s["stage"]))
        rows.append(
            f'<tr data-stage="{_e(stage)}"><td>{_e(stage)}</td><td>{_e(s["what"])}</td>'
            f"<td>{s['computed']}</td><td>{s['reused']}</td><td>{s['wall_s']:.1f}</td>"
            f"<td>{device}</td><td>{behind}</td></tr>"
        )
    earlier = len(compute.get("history", []))
    return (
        f'<table id="compute-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
        f'<p class="note">Wall seconds and device seconds are this invocation\'s (total wall '
        f"{compute['invocation']['wall_s']:.1f} s; {earlier} earlier invocation(s) of this run "
        "directory, in compute.json). Device seconds are what the stage's workers spent "
        "computing: embedding forward passes, proxy fits, fine-tune trials (— where a resumed "
        "stage cannot tell). The last column is the compute behind the results shown: the "
        "probe and fine-tune tables' own seconds, and the embedding seconds this run directory "
        "spent over all its invocations.</p>"
    )


def render(data: ReportData) -> str:
    """The report as one HTML document."""
    a = data.analysis
    items, notes = findings(a)
    n_models = len({m for p in a.pools for m in p.models})
    n_tasks = len({t for p in a.pools for t in p.tasks})
    pool_sections = []
    for pool in a.pools:
        figs = "".join(figure_html(p) for p in data.plots.get(pool.name, []))
        pool_sections.append(
            f'<section class="pool" id="pool-{_e(pool.name)}"><h3>Pool {_e(pool.name)}</h3>'
            f'<p class="note">{pool.size} models, {len(pool.tasks)} tasks. Each cell: mean '
            "absolute regret / mean relative regret over the tasks (bold: lowest relative "
            "regret among the strategies that do not see the fine-tune results).</p>"
            f"{pool_table(a.regret, pool)}{figs}</section>"
        )
    tasks = data.tasks
    if tasks is None:
        tasks = pl.DataFrame(
            {"task": [t for p in a.pools[:1] for t in p.tasks], "category": a.pools[0].categories}
        )
    models = data.models
    if models is None:
        models = pl.concat([p.meta for p in a.pools]).unique("model", maintain_order=True)
    title = f"whichmodel benchmark: {data.title}"
    notes_html = "".join(f"<li>{_e(n)}</li>" for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class="note">{len(a.pools)} pool(s), {n_models} model(s), {n_tasks} task(s); generated
{_e(time.strftime("%Y-%m-%d %H:%M:%S %Z"))}. Regret of a strategy's B picks against the oracle
that fine-tunes every model (Renggli et al., "Which Model to Transfer?", CVPR 2022).</p>
<section id="findings"><h2>Findings</h2>
<p id="headline">{_e(headline(items, a))}</p>
<ul id="finding-list">{"".join(_finding_html(f) for f in items)}{notes_html}</ul>
<p class="note" id="oracle-stability">{_e(oracle_text(data.stability, data.oracle_note))}</p>
</section>
<section id="pools"><h2>Regret per pool</h2>{"".join(pool_sections)}</section>
<section id="quality"><h2>Estimator quality</h2>{quality_html(a.quality, a.pools)}</section>
{progressive_html(data.progressive)}
<section id="compute"><h2>Compute per stage</h2>{compute_html(data.compute)}</section>
<section id="tasks"><h2>Tasks</h2>{frame_html(tasks, "tasks-table")}</section>
<section id="models"><h2>Models</h2>{frame_html(models, "models-table")}</section>
<section id="config"><h2>Configuration</h2>
<p class="note">{_e(data.config_path)}</p><pre id="config-text">{_e(data.config_text)}</pre>
</section>
</body></html>
"""


def write_report(data: ReportData, path: Path) -> Path:
    """Render the report and write it atomically (temporary file, then rename)."""
    return atomic_text(path, render(data))
