"""The run report: refusal of incomplete runs, the nbconvert HTML, and a headless-browser check."""
from __future__ import annotations

import base64
import html
import importlib
import json
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

import quantstudy

FIXTURE_RUN = Path(__file__).resolve().parent / "fixtures" / "run"
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def report() -> ModuleType:
    """quantstudy.report, imported here rather than at collection, and forgotten afterwards:
    test_runner swaps a fake quantstudy.report into sys.modules, which only works while the
    real module is not already bound as an attribute of the quantstudy package."""
    had_attr = hasattr(quantstudy, "report")
    had_module = "quantstudy.report" in sys.modules
    module = importlib.import_module("quantstudy.report")
    yield module
    if not had_attr and getattr(quantstudy, "report", None) is module:
        delattr(quantstudy, "report")
    if not had_module and sys.modules.get("quantstudy.report") is module:
        del sys.modules["quantstudy.report"]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A writable copy of the fixture run folder."""
    dst = tmp_path / "fixture"
    shutil.copytree(FIXTURE_RUN, dst)
    return dst


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, report: ModuleType) -> Path:
    """The fixture run with its report built once (the kernel start is the slow part)."""
    dst = tmp_path_factory.mktemp("report") / "fixture"
    shutil.copytree(FIXTURE_RUN, dst)
    out = report.build_report(dst)
    assert out == dst / "report.html"
    return dst


def _set_status(run: Path, step: str, status: str) -> None:
    path = run / "manifest.json"
    man = json.loads(path.read_text())
    man["steps"][step]["status"] = status
    path.write_text(json.dumps(man))


# --------------------------------------------------------------------------- refusal
def test_incomplete_run_names_the_missing_steps(run_dir: Path, report: ModuleType) -> None:
    (run_dir / "05_rollout_analysis" / "metrics.json").unlink()
    _set_status(run_dir, "03_evaluate", "failed")
    with pytest.raises(report.ReportError) as err:
        report.build_report(run_dir)
    msg = str(err.value)
    assert "05_rollout_analysis" in msg and "metrics.json missing" in msg
    assert "03_evaluate" in msg and "failed" in msg
    assert "01_calibration" not in msg and "04_benchmark" not in msg
    assert not (run_dir / "report.html").exists()


def test_step_not_in_manifest_is_named(run_dir: Path, report: ModuleType) -> None:
    path = run_dir / "manifest.json"
    man = json.loads(path.read_text())
    del man["steps"]["04_benchmark"]
    path.write_text(json.dumps(man))
    with pytest.raises(report.ReportError, match=r"04_benchmark \(not run\)"):
        report.build_report(run_dir)


def test_missing_manifest_is_named(run_dir: Path, report: ModuleType) -> None:
    (run_dir / "manifest.json").unlink()
    with pytest.raises(report.ReportError, match="manifest.json is missing"):
        report.build_report(run_dir)
    assert issubclass(report.ReportError, ValueError)


def test_skipped_steps_count_as_done(run_dir: Path, report: ModuleType) -> None:
    for step in report.STEP_NAMES:
        _set_status(run_dir, step, "skipped")
    assert report.check_complete(run_dir)["run_id"] == "fixture"


# --------------------------------------------------------------------------- content
def test_report_html_content(built: Path, report: ModuleType) -> None:
    text = (built / "report.html").read_text(encoding="utf-8")
    man = json.loads((built / "manifest.json").read_text())
    assert "fixture" in text and man["git"]["commit"] in text and "dirty" in text
    assert "params/fixture.yaml" in text
    for heading in ("Situation", "Decision", "Execution", "Outcome", "Lessons", "Process checklist"):
        assert re.search(rf"<h2[^>]*>{heading}", text), heading
    for hook in ("stamp", "situation", "decision", "budget", "budget-declared", "execution", "outcome", "effects",
                 "traps", "verdict", "lessons", "checklist", "flagged-rtn", "speed"):
        assert f'id="{hook}"' in text, hook
    # Code cells hidden (exclude_input); no script at all, so nothing is fetched from a CDN.
    assert "R.show(" not in text and "load_metrics(" not in text and "import warnings" not in text
    assert "<script" not in text
    assert "cdnjs" not in text and "require.js" not in text.lower() and "MathJax.js" not in text
    # Figures embedded as base64 PNGs.
    imgs = re.findall(r'<img[^>]+src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(imgs) >= 8
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    # Links to the executed notebooks and metrics, relative to the run folder.
    for step in report.STEP_NAMES:
        assert f'href="notebooks/{step}.ipynb"' in text
        assert f'href="{step}/metrics.json"' in text


def test_report_numbers_come_from_metrics(built: Path, report: ModuleType) -> None:
    text = (built / "report.html").read_text(encoding="utf-8")
    m3 = json.loads((built / "03_evaluate" / "metrics.json").read_text())
    m2 = json.loads((built / "02_quantize" / "metrics.json").read_text())
    m4 = json.loads((built / "04_benchmark" / "metrics.json").read_text())
    m5 = json.loads((built / "05_rollout_analysis" / "metrics.json").read_text())
    # Budget echoed unchanged.
    for line in m3["budget_declared"]:
        assert f"<td>{line['metric']}</td>" in text.replace('"', "")
        assert json.dumps(line["max_drop"]) in text
    # Lessons: the in-domain vs generic sentence carries the measured point and CI.
    eff = next(e for e in m3["calibration_effects"] if e["a"] == "in_domain" and e["b"] == "generic")
    sentence = report._effect_sentence(eff, "95% CI")
    assert f"{eff['point']:+,.2f}" in sentence and f"{eff['lo']:+,.2f}" in sentence
    assert ("within noise" in sentence) == eff["within_noise"]
    assert html.escape(sentence, quote=False) in text
    # Worse-than-RTN checkpoints listed in the outcome.
    assert m2["worse_than_rtn_on_own_domain"]
    for name in m2["worse_than_rtn_on_own_domain"]:
        assert name in text.split('id="flagged-rtn"')[1][:3000]
    # Trap callout lists the flagged paths.
    assert m4["traps"]
    trap = text.split('id="traps"')[1][:6000]
    assert "callout-danger" in text.split('id="traps"')[0][-200:] + trap[:100]
    for t in m4["traps"]:
        assert f"{t['model']} / {t['path']}" in trap
    # Baseline cost per 1,000 conversations (production fleet).
    base_fleet = next(f for f in m4["production"]["fleet"] if f["path"] == "baseline")
    situation = text.split('id="situation"')[1].split('id="decision"')[0]
    assert f"${base_fleet['cost_per_1000_conversations']:,.4f}" in situation
    assert str(base_fleet["devices_at_peak"]) in situation
    # Rollout verdict with the SIMULATED label.
    assert m5["rollout"]["simulated"]
    verdict = text.split('id="verdict"')[1][:4000]
    assert "SIMULATED" in verdict and m5["rollout"]["decision"].upper() in verdict


def test_checklist_ticks(built: Path, run_dir: Path, report: ModuleType) -> None:
    text = (built / "report.html").read_text(encoding="utf-8")
    checklist = text.split('id="checklist"')[1]
    assert checklist.count('data-ok="true"') == 5 and 'data-ok="false"' not in checklist
    # A budget changed after evaluation and a missing SHA256SUMS are not ticked.
    M = report.load_metrics(run_dir)
    M["manifest"]["params"]["evaluate"]["budget"][0]["max_drop"] = 99.0
    (run_dir / "02_quantize" / "baseline" / "SHA256SUMS").unlink()
    ticks = {item: ok for ok, item, _ in report._checklist(M, run_dir)}
    assert ticks == {"Calibration built": True, "Baseline archived and verified": True,
                     "Budget declared before evaluation": False, "Trap checked": True, "Rollback path present": False}


def test_report_notebook_is_built_from_metrics(run_dir: Path, report: ModuleType) -> None:
    nb = report.build_notebook(run_dir)
    kinds = [c.cell_type for c in nb.cells]
    assert kinds.count("code") >= 8 and kinds.count("markdown") >= 8
    assert all("R.show(" in c.source or "load_metrics" in c.source for c in nb.cells if c.cell_type == "code")


# --------------------------------------------------------------------------- browser
@pytest.mark.browser
def test_report_in_headless_chromium(built: Path, tmp_path: Path) -> None:
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        pytest.skip("headless Chromium not installed: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.binary_location = str(CHROMIUM)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
    try:
        driver.set_page_load_timeout(60)
        driver.get((built / "report.html").as_uri())
        WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
        imgs = driver.find_elements(By.TAG_NAME, "img")
        assert len(imgs) >= 8
        widths = [driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) for i in imgs]
        assert all(w and w > 0 for w in widths), widths
        for hook in ("verdict", "budget", "traps", "checklist"):
            assert driver.find_elements(By.ID, hook), hook
        assert "SIMULATED" in driver.find_element(By.ID, "verdict").text
        assert "TRAP" in driver.find_element(By.ID, "traps").text
        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert severe == [], severe
        driver.set_window_size(1400, max(1000, driver.execute_script("return document.body.scrollHeight")))
        shot = built / "report_screenshot.png"
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()
