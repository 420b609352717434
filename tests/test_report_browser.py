"""The HTML report opens in headless Chromium (Debian `chromium`) without errors: a report
rendered from the published VTAB-1k matrix (two pools, 15 models, 19 tasks, every figure) is
loaded from file://, and its DOM must hold every table and figure, with no console error and no
failed load. Skipped, with the reason, where no Chromium binary is installed."""

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from whichmodel.analysis import tables
from whichmodel.analysis.analyze import analyze
from whichmodel.analysis.plots import write_plots
from whichmodel.analysis.report import ReportData, write_report
from whichmodel.core.catalog import load_catalogue

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((b for b in map(shutil.which, BROWSERS) if b), None)
COMPUTE = {
    "invocation": {
        "time": "2026-01-01T00:00:00+0000",
        "stages": [
            {"stage": s, "what": "w", "computed": 1, "reused": 2, "wall_s": 1.5, "device_s": d}
            for s, d in (("embed", 3.0), ("probe", 1.0), ("finetune", None), ("analyze", None))
        ],
        "wall_s": 6.0,
    },
    "study_device_s": {"embed": 3.0, "probe": 1.0, "finetune": 9.0},
    "history": [],
}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("report")
    catalogue = load_catalogue(ROOT / "pools" / "vtab.toml")
    finetune = tables.load_finetune(ROOT / "pools" / "data" / "vtab1k_finetune.csv")
    analysis = analyze(catalogue, finetune, budgets=[1, 2, 3])
    plots = {}
    for pool in analysis.pools:
        (out / "plots").mkdir(exist_ok=True)
        plots[pool.name] = write_plots([pool], analysis.regret, analysis.curves, out / "plots")
    data = ReportData(
        title="vtab <check> & escape",
        config_text='[run]\nname = "vtab"\n# <b>not markup</b>\n',
        analysis=analysis,
        plots=plots,
        compute=COMPUTE,
    )
    path = write_report(data, out / "report.html")
    return path, len(analysis.pools)


def test_report_is_self_contained_with_valid_images(report):
    path, _ = report
    text = path.read_text()
    assert not re.search(r'(?:src|href)="(?!data:|#)', text)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert images
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            img.verify()
    assert "&lt;b&gt;not markup&lt;/b&gt;" in text and "vtab &lt;check&gt; &amp;" in text


@pytest.mark.skipif(
    BROWSER is None,
    reason="no Chromium binary (chromium, chromium-browser, google-chrome) on PATH; "
    "install Debian's `chromium` (apt-get install chromium) to run this check",
)
def test_report_opens_in_headless_chromium_without_errors(report, tmp_path):
    path, n_pools = report
    proc = subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert dom.count('<table class="regret"') == n_pools
    for table_id in ("compute-table", "tasks-table", "models-table"):
        assert f'id="{table_id}"' in dom
    assert dom.count("<img ") == path.read_text().count("<img ")
    assert 'id="headline"' in dom and 'id="config-text"' in dom
    problems = [
        line
        for line in proc.stderr.splitlines()
        if "CONSOLE" in line or "Failed to load resource" in line or "net::ERR_" in line
    ]
    assert not problems, problems
