"""The engine's progress display off a terminal (CI, a Ray Job's log): a line when a stage
starts, at most one per 30 s while it runs, one when it ends; nothing for a stage with nothing to
do. The clock is the test's own."""

import io

from whichmodel.core import progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_one_line_per_30_s_with_done_total_rate_and_eta(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    out = io.StringIO()
    display = progress.StageProgress("probe", 10, "pairs", stream=out, live=False)
    assert out.getvalue() == "probe: 10 pairs to do\n"
    for _ in range(4):  # 4 pairs in 20 s: no line yet
        clock.now += 5
        display.update(1)
    assert out.getvalue().count("\n") == 1
    clock.now += 10  # 30 s since the start line, 5 pairs done
    display.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("probe: 5/10 pairs [00:30<00:30,")  # elapsed < ETA at 6 s/pair
    assert "6.00s/pairs" in lines[1]
    for _ in range(4):
        clock.now += 5
        display.update(1)
    assert len(out.getvalue().splitlines()) == 2  # 20 s since the last line
    clock.now += 5
    display.update(1)
    display.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[2].startswith("probe: 10/10 pairs [00:55<00:00,")
    display.close()  # closing twice adds nothing
    assert len(out.getvalue().splitlines()) == 3


def test_a_stage_with_nothing_to_do_shows_nothing():
    out = io.StringIO()
    with progress.StageProgress("finetune", 0, "trials", stream=out, live=False) as display:
        display.update(3)
    assert out.getvalue() == ""


def test_a_nested_display_is_silent_off_a_terminal_and_leaves_no_bar_on_one(monkeypatch):
    """A part of a stage with a display of its own (a progressive rung's trials): no lines in a
    log; on a terminal a bar that is cleared when it closes."""
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    log = io.StringIO()
    with progress.StageProgress("rung", 10, "pairs", stream=log, live=False, nested=True) as d:
        for _ in range(10):
            clock.now += 40  # a line per update, were it not nested
            d.update(1)
    assert log.getvalue() == ""
    screen = io.StringIO()
    with progress.StageProgress("rung", 3, "pairs", stream=screen, live=True, nested=True) as d:
        d.update(3)
    assert "rung" in screen.getvalue() and screen.getvalue().endswith("\r")  # cleared, no newline
    kept = io.StringIO()
    with progress.StageProgress("stage", 3, "pairs", stream=kept, live=True) as d:
        d.update(3)
    assert kept.getvalue().endswith("\n")  # an ordinary bar stays on screen


def test_units_reused_before_the_display_count_as_done_but_not_in_the_rate(monkeypatch):
    """The demo's progressive knn (Experts) reused its first 3 rungs and showed its display
    only at the 4th: it printed "4 rungs to do" and "4/4 rungs [00:00<00:00, 90405.70rungs/s]"."""
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    out = io.StringIO()
    rung_start = clock.now
    clock.now += 10  # the 4th rung's work, done before the display opens
    display = progress.StageProgress(
        "progressive knn (Experts)", 4, "rungs", stream=out, live=False, initial=3, start=rung_start
    )
    display.update(1)
    display.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "progressive knn (Experts): 1 of 4 rungs to do"
    assert lines[1] == "progressive knn (Experts): 4/4 rungs [00:10<00:00, 10.00s/rungs]"
    screen = io.StringIO()
    start = clock.now - 20  # the 4th rung began 20 s ago
    bar = progress.StageProgress("p", 4, "rungs", stream=screen, live=True, initial=3, start=start)
    bar.update(1)
    bar.close()
    assert "4/4 [00:20<00:00, 20.00s/rung]" in screen.getvalue()
