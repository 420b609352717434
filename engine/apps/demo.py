"""``whichmodel demo``: the embedded default study (the demo pool and tasks, then a benchmark).

A rerun whose study is kept in the run directory with every input unchanged
(``whichmodel.core.answers``) prints its summary without loading the engine's stages (no torch,
Ray, SciPy or matplotlib): ``whichmodel.apps.benchmark`` is imported only when there is work."""

import math
import time
from pathlib import Path

from whichmodel.core import answers
from whichmodel.core.outputs import is_uri, staging_dir
from whichmodel.core.rundirs import (
    check_remote_run,
    check_run_directory,
    check_writable,
)
from whichmodel.demo.pool import default_cache, demo_run_config, ensure_demo_pool, print_progress


def run_demo(out: Path | str, cache: Path | None = None, track: str | None = None) -> Path:
    """Build the pool if needed, then run the benchmark into ``out`` (a directory or a URI,
    see ``whichmodel.apps.benchmark.run_benchmark``; ``track``: an experiment tracker); the
    local run directory (report.html)."""
    start = time.perf_counter()
    if is_uri(out):  # the run directory is checked before the pool is built (minutes)
        check_remote_run(str(out))
        check_writable(staging_dir(str(out)), "staging copy of --out")
    else:
        check_run_directory(Path(out))
    check_writable(cache or default_cache(), "--cache")
    catalog, _ = ensure_demo_pool(cache)
    config_path = demo_run_config(catalog, out)
    if track is None and not is_uri(out) and kept_study(config_path, Path(out)):
        return Path(out).resolve()
    from whichmodel.apps.benchmark import load_config, run_benchmark

    run = run_benchmark(load_config(config_path), out, track)
    seconds = math.ceil(time.perf_counter() - start)
    print_progress(f"demo done in {seconds} s: {run / 'report.html'}")
    return run


def kept_study(config_path: Path, out: Path) -> bool:
    """Print the study of ``config_path`` kept in the run directory ``out`` if nothing it
    depends on changed since it ran; False (nothing printed) where it must run."""
    run = out.resolve()
    request = answers.study_request(config_path, config_path.read_text(), run)
    kept = answers.recall_owned(run, request)
    if kept is None:
        return False
    brief, when = kept
    print(f"[benchmark] {run}: its study ran at {when} from these same inputs: nothing to compute")
    print(brief, end="")
    print(f"[benchmark] report {run / 'report.html'}", flush=True)
    return True
