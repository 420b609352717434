"""``whichmodel demo``: the embedded default study (the demo pool and tasks, then a benchmark)."""

import math
import time
from pathlib import Path

from whichmodel.apps.benchmark import load_config, run_benchmark
from whichmodel.core.outputs import is_uri, staging_dir
from whichmodel.core.rundirs import check_remote_run, check_run_directory, check_writable
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
    config = load_config(demo_run_config(catalog, out))
    run = run_benchmark(config, out, track)
    seconds = math.ceil(time.perf_counter() - start)
    print_progress(f"demo done in {seconds} s: {run / 'report.html'}")
    return run
