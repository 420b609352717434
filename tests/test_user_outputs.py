"""What a user's outputs go through (issue 21): the documented progressive defaults, the
``.whichmodel-output`` rule on a command's whole ``--out``, output paths checked before any work,
a full disk, one writer per run directory, and files that get the user's umask."""

import polars as pl
import pytest

from whichmodel import cli
from whichmodel.stages.progressive import ProgressiveConfig


def _captured_search(monkeypatch) -> list[dict]:
    import whichmodel.apps.search as search_app

    calls: list[dict] = []

    def fake(data, **kwargs):
        calls.append(kwargs)
        raise SystemExit(0)  # stop there: only what the CLI asked for matters

    monkeypatch.setattr(search_app, "search", fake)
    return calls


def test_documented_default_fractions_give_the_default_eta(tmp_path, monkeypatch):
    """`--fractions 1/8,1/4,1/2,1` (the documented default) runs exactly what no flag runs:
    eta 3, as the help and the README say (it was 2 whenever --fractions was given)."""
    calls = _captured_search(monkeypatch)
    base = ["search", str(tmp_path), "--budget", "1", "--strategy", "progressive_linear"]
    for extra in ([], ["--fractions", "1/8,1/4,1/2,1"], ["--eta", "3"]):
        with pytest.raises(SystemExit):
            cli.main([*base, *extra])
    default = calls[0]["progressive"] or ProgressiveConfig()  # None: search's default
    assert calls[1]["progressive"] == default == calls[2]["progressive"]
    assert default.eta == 3
    with pytest.raises(SystemExit):
        cli.main([*base, "--fractions", "1/2,1"])
    assert calls[3]["progressive"] == ProgressiveConfig((0.5, 1.0), 3)
