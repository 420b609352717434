"""The machine's load, for benchmarks that should time only on a quiet machine."""

import time


def load1() -> float:
    """The 1-minute load average."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def wait_for_load(limit: float, max_wait: float, indent: str = "") -> float:
    """Poll the 1-minute load until it is below ``limit`` (at most ``max_wait`` s), print and
    return it."""
    start = time.monotonic()
    load = load1()
    while load >= limit and time.monotonic() - start < max_wait:
        time.sleep(5)
        load = load1()
    waited = time.monotonic() - start
    note = "" if load < limit else f"  (still >= {limit} after {waited:.0f} s; measuring anyway)"
    print(f"{indent}load1 at measurement: {load:.2f}{note}", flush=True)
    return load
