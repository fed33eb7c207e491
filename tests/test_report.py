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
    """The quantstudy.report package, imported here rather than at collection, and forgotten
    afterwards (with the submodules it brought in): test_runner swaps a fake quantstudy.report
    into sys.modules, which only works while the real package is not already bound as an
    attribute of the quantstudy package."""
    had_attr = hasattr(quantstudy, "report")
    had_modules = {name for name in sys.modules if name == "quantstudy.report" or name.startswith("quantstudy.report.")}
    module = importlib.import_module("quantstudy.report")
    yield module
    if not had_attr and getattr(quantstudy, "report", None) is module:
        delattr(quantstudy, "report")
    if "quantstudy.report" not in had_modules and sys.modules.get("quantstudy.report") is module:
        for name in [n for n in sys.modules if n == "quantstudy.report" or n.startswith("quantstudy.report.")]:
            if name not in had_modules:
                del sys.modules[name]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A writable copy of the fixture run folder."""
    dst = tmp_path / "fixture"
    shutil.copytree(FIXTURE_RUN, dst)
    return dst


def _record_candidate_rule(run: Path) -> dict:
    """Step 05's candidate as the current rollout code records it (rule, runner-up), from step 03."""
    from quantstudy.steps import rollout

    path = run / "05_rollout_analysis" / "metrics.json"
    m5 = json.loads(path.read_text())
    m5["candidate"] = rollout.candidate_from_evaluation(run / "03_evaluate")
    path.write_text(json.dumps(m5))
    return m5["candidate"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, report: ModuleType) -> Path:
    """The fixture run with its report built once (the kernel start is the slow part)."""
    dst = tmp_path_factory.mktemp("report") / "fixture"
    shutil.copytree(FIXTURE_RUN, dst)
    _record_candidate_rule(dst)
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


@pytest.mark.parametrize(
    ("step", "key", "nested"),
    [
        ("03_evaluate", "verdict_by_checkpoint", False),
        ("04_benchmark", "traps", False),
        ("05_rollout_analysis", "decision", True),
        ("02_quantize", "worse_than_rtn_on_own_domain", False),
    ],
)
def test_a_renamed_metrics_field_is_refused_not_rendered_as_na(
    run_dir: Path, report: ModuleType, step: str, key: str, nested: bool, capsys: pytest.CaptureFixture
) -> None:
    """The report reads every metrics.json through its step's contract (quantstudy.contracts)."""
    from quantstudy import cli

    path = run_dir / step / "metrics.json"
    m = json.loads(path.read_text())
    holder = m["rollout"] if nested else m
    holder[key + "_v2"] = holder.pop(key)
    path.write_text(json.dumps(m))
    where = f"rollout.{key}" if nested else key
    with pytest.raises(report.ReportError) as err:
        report.build_report(run_dir)
    msg = str(err.value)
    assert str(path) in msg and f"`{where}`: required field missing" in msg and f"re-run step {step}" in msg
    assert not (run_dir / "report.html").exists() and not (run_dir / "notebooks" / f"{step}.html").exists()
    assert cli.main(["report", str(run_dir)]) == 1
    assert f"`{where}`: required field missing" in capsys.readouterr().err


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
    for hook in (
        "stamp",
        "situation",
        "decision",
        "budget",
        "budget-declared",
        "execution",
        "outcome",
        "effects",
        "traps",
        "verdict",
        "lessons",
        "checklist",
        "flagged-rtn",
        "speed",
        "answer",
        "toc",
        "candidate",
        "steps",
        "speed-cost",
    ):
        assert f'id="{hook}"' in text, hook
    # Every link of the answer box and the table of contents lands on an id of the page.
    head = text.split('id="answer"')[1].split('id="stamp"')[0]
    for anchor in re.findall(r'href="#([\w-]+)"', head):
        assert f'id="{anchor}"' in text, anchor
    # Wide tables scroll, and there is a print style.
    assert "overflow-x: auto" in text and "@media print" in text
    # Code cells hidden (exclude_input); no script at all, so nothing is fetched from a CDN.
    assert "R.show(" not in text and "load_metrics(" not in text and "import warnings" not in text
    assert "<script" not in text
    assert "cdnjs" not in text and "require.js" not in text.lower() and "MathJax.js" not in text
    # Figures embedded as base64 PNGs.
    imgs = re.findall(r'<img[^>]+src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(imgs) >= 8
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    # Numbered figures, each with a one-sentence caption.
    figures = re.findall(
        r'<figure[^>]*id="figure-(\d+)".*?<figcaption><strong>Figure (\d+)\.</strong> '
        r"([^<]+)</figcaption>",
        text,
        flags=re.S,
    )
    assert len(figures) == len(imgs)
    assert [int(a) for a, _, _ in figures] == list(range(1, len(imgs) + 1))
    assert all(a == b and caption.startswith("Look ") for a, b, caption in figures)
    # Links to the executed notebooks (rendered to HTML, code and outputs kept) and metrics.
    for step in report.STEP_NAMES:
        page = built / "notebooks" / f"{step}.html"
        assert page.is_file() and "<script" not in page.read_text(encoding="utf-8")
        assert f'href="notebooks/{step}.html"' in text
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
    sentence = report.sections.effect_sentence(eff, "95% CI")
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
    ticks = {item: ok for ok, item, _ in report.sections.checklist(M, run_dir)}
    assert ticks == {
        "Calibration built": True,
        "Baseline archived and verified": True,
        "Budget declared before evaluation": False,
        "Trap checked": True,
        "Rollback path present": False,
    }


def test_report_notebook_is_built_from_metrics(run_dir: Path, report: ModuleType) -> None:
    nb = report.build_notebook(run_dir)
    kinds = [c.cell_type for c in nb.cells]
    assert kinds.count("code") >= 8 and kinds.count("markdown") >= 8
    assert all("R.show(" in c.source or "load_metrics" in c.source for c in nb.cells if c.cell_type == "code")


# --------------------------------------------------------------------------- the answer box
def test_answer_box_leads_the_report(built: Path) -> None:
    text = (built / "report.html").read_text(encoding="utf-8")
    m5 = json.loads((built / "05_rollout_analysis" / "metrics.json").read_text())
    assert text.index('id="answer"') < text.index('id="toc"') < text.index('id="stamp"') < text.index('id="situation"')
    box = text.split('id="answer"')[1].split("</div>")[0]
    assert "in-domain calibration lowered in-domain perplexity by 1.09% (95% CI [0.55, 1.53]) against generic" in box
    assert "no measurable difference" in box and "2 draws each" in box
    assert "NO-GO" in box and m5["candidate"]["checkpoint"] in box and "closed-book policy accuracy" in box
    assert f"runner-up <code>{m5['candidate']['runner_up']['checkpoint']}</code>" in box
    assert "TRAP" in box and "2-core CPU (this machine)" in box
    assert "SIMULATED" in box and m5["rollout"]["decision"].upper() in box
    assert 'href="#flagged-rtn"' in box and "worse than round-to-nearest" in box
    # The rule is quoted with the runner-up in the verdict section.
    cand = text.split('id="candidate"')[1][:6000]
    assert "rollout.candidate_rule: best_worst_case" in cand and "runner-up" in cand
    assert m5["candidate"]["runner_up"]["checkpoint"] in cand


def test_answer_lines(run_dir: Path, report: ModuleType) -> None:
    M = report.load_metrics(run_dir)
    assert [a for a, _ in report.answer.trust_problems(M)] == ["flagged-rtn"]
    # Budget changed after results, a stale step, a step at an older commit: all named.
    man = M["manifest"]
    man["budget_history"] = [{"budget": []}, {"budget": [], "after_results": True}]
    man["steps"]["03_evaluate"]["stale"] = True
    man["steps"]["03_evaluate"]["stale_reason"] = "params changed"
    man["steps"]["04_benchmark"]["git_commit"] = "f" * 40
    anchors = [a for a, _ in report.answer.trust_problems(M)]
    assert anchors == ["verdict", "steps", "flagged-rtn", "steps"]
    box = report.answer_html(M, base="other/report.html", box_id="answer-1")
    assert 'id="answer-1"' in box and "4 warning(s)" in box and "03_evaluate (params changed)" in box
    assert 'href="other/report.html#effects"' in box and "older commit (04_benchmark)" in box
    # GO when the candidate passes every line: the tightest line is named.
    cand = M["05_rollout_analysis"]["candidate"]["checkpoint"]
    M["03_evaluate"]["verdict_by_checkpoint"][cand] = "pass"
    for r in M["03_evaluate"]["budget"]:
        if r["checkpoint"] == cand:
            r.update(worst_case=r["limit"] - 0.5 if r["metric"] == "retention_acc" else 0.0, verdict="pass")
    assert "GO</span> for 4-bit" in report.answer_html(M)
    assert report.answer.deciding_line(M, cand)["metric"] == "retention_acc"
    # Within noise in plain words.
    e = {
        "metric": "indomain_ppl",
        "unit": "% perplexity",
        "a": "in_domain",
        "b": "generic",
        "point": -0.4,
        "lo": -1.0,
        "hi": 0.2,
        "draws": [3, 3],
        "within_noise": True,
    }
    assert report.answer.effect_clause(e, "95% CI") == (
        "in-domain perplexity: no measurable difference (-0.40%, 95% CI [-1.00, +0.20]: the interval includes 0)"
    )


def test_candidate_rule_not_recorded_in_older_runs(run_dir: Path, report: ModuleType) -> None:
    M = report.load_metrics(run_dir)
    assert "not recorded" in report.outcome.candidate_md(M)
    cand = _record_candidate_rule(run_dir)
    M = report.load_metrics(run_dir)
    md = report.outcome.candidate_md(M)
    assert cand["rule_text"] in md and "runner-up" in md and "FAILS the offline budget" in md


def test_pdf_skipped_without_chromium(tmp_path: Path, report: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "report.html"
    page.write_text("<html><body>x</body></html>")
    (tmp_path / "report.pdf").write_bytes(b"%PDF old")
    monkeypatch.setattr(report.pdf, "find_chromium", lambda: None)
    line = report.write_pdf(page)
    assert line.startswith("PDF skipped") and "\n" not in line
    assert not (tmp_path / "report.pdf").exists()  # no PDF of an older report left behind


# --------------------------------------------------------------------------- compare
def _second_run(run: Path, tmp_path: Path, **changes) -> Path:
    other = tmp_path / "other"
    shutil.copytree(run, other)
    path = other / "manifest.json"
    man = json.loads(path.read_text())
    man["run_id"] = "other"
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        man["params"][section][key] = value
    path.write_text(json.dumps(man))
    return other


def test_compare_refuses_different_budgets(run_dir: Path, tmp_path: Path) -> None:
    from quantstudy import cli
    from quantstudy.report.compare import CompareError, compare_runs, params_diff

    budget = json.loads((run_dir / "manifest.json").read_text())["params"]["evaluate"]["budget"]
    looser = [dict(b, max_drop=5.0) if b["metric"] == "indomain_ppl" else b for b in budget]
    other = _second_run(run_dir, tmp_path, evaluate__budget=looser, study__seed=7)
    out = tmp_path / "cmp.html"
    with pytest.raises(CompareError) as err:
        compare_runs([run_dir, other], out)
    msg = str(err.value)
    assert "budgets differ" in msg and "--force" in msg and "\n" not in msg
    assert "params that differ: study.seed, evaluate.budget" in msg
    assert cli.main(["compare", str(run_dir), str(other), "--out", str(out)]) == 2 and not out.exists()
    assert cli.main(["compare", str(run_dir), str(other), "--out", str(out), "--force"]) == 0
    page = out.read_text(encoding="utf-8")
    assert "different quality budgets" in page and 'id="answer-0"' in page and 'id="answer-1"' in page
    assert 'href="fixture/report.html#effects"' in page and "<script" not in page
    mans = [json.loads((d / "manifest.json").read_text()) for d in (run_dir, other)]
    assert params_diff(mans) == {"study.seed": [0, 7], "evaluate.budget": [budget, looser]}
    assert cli.main(["compare", str(run_dir), "--out", str(out)]) == 2  # one run is not a comparison


def test_compare_same_budget(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from quantstudy import cli

    other = _second_run(run_dir, tmp_path, calibration__draws=3)
    out = tmp_path / "sub" / "cmp.html"
    assert cli.main(["compare", str(run_dir), str(other), "--out", str(out)]) == 0
    assert "params that differ: calibration.draws" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    for section in ("answers", "effects", "budget", "speed", "params"):
        assert f'id="{section}"' in page, section
    assert "different quality budgets" not in page and "NO-GO" in page
    assert "-1.09% [-1.53, -0.55]" in page  # the headline effect with its CI, per run
    (other / "05_rollout_analysis" / "metrics.json").unlink()
    assert cli.main(["compare", str(run_dir), str(other), "--out", str(out)]) == 2
    assert "incomplete run" in capsys.readouterr().err


# --------------------------------------------------------------------------- browser
@pytest.mark.browser
def test_report_in_headless_chromium(built: Path, tmp_path: Path) -> None:
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        pytest.skip("headless Chromium not installed: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from quantstudy.report.compare import compare_runs

    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
        "--window-size=1280,900",
    ):
        opts.add_argument(arg)
    opts.binary_location = str(CHROMIUM)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))

    def open_page(path: Path) -> None:
        driver.get(path.as_uri())
        WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")

    def severe() -> list:
        return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]

    try:
        driver.set_page_load_timeout(60)
        driver.set_window_size(1280, 900)
        open_page(built / "report.html")
        # The answer box is on the first screen of a 1280 x 900 window.
        rect = driver.execute_script(
            "const r = document.getElementById('answer').getBoundingClientRect();"
            "return [r.top, r.bottom, r.width, window.innerHeight];"
        )
        assert 0 <= rect[0] < rect[1] <= 900 and rect[2] > 600, rect
        imgs = driver.find_elements(By.TAG_NAME, "img")
        assert len(imgs) >= 8
        widths = [driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) for i in imgs]
        assert all(w and w > 0 for w in widths), widths
        assert len(driver.find_elements(By.CSS_SELECTOR, "figure.report-figure figcaption")) == len(imgs)
        for hook in ("verdict", "budget", "traps", "checklist", "answer", "toc", "candidate"):
            assert driver.find_elements(By.ID, hook), hook
        assert "SIMULATED" in driver.find_element(By.ID, "verdict").text
        assert "TRAP" in driver.find_element(By.ID, "traps").text
        # Wide tables scroll inside the page instead of widening it.
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 1280
        assert severe() == []
        driver.set_window_size(1400, max(1000, driver.execute_script("return document.body.scrollHeight")))
        shot = built / "report_screenshot.png"
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        # The PDF next to the HTML has pages.
        pdf = (built / "report.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b", pdf)) >= 2
        # An executed notebook's HTML opens (code and outputs kept).
        driver.set_window_size(1280, 900)
        open_page(built / "notebooks" / "03_evaluate.html")
        assert "03_evaluate" in driver.find_element(By.TAG_NAME, "body").text
        assert severe() == []
        # The comparison page opens without console errors.
        other = tmp_path / "other"
        shutil.copytree(built, other)
        page, _ = compare_runs([built, other], tmp_path / "compare.html")
        open_page(page)
        assert len(driver.find_elements(By.CSS_SELECTOR, ".answer")) == 2
        assert severe() == []
    finally:
        driver.quit()


def test_effect_sentence_direction_comes_from_the_metric_registry(report: ModuleType) -> None:
    """Fewer flips and higher accuracy are better; a lower perplexity is better."""
    base = {
        "a": "in_domain",
        "b": "generic",
        "lo": -3.0,
        "hi": -1.0,
        "point": -2.0,
        "draws": [3, 3],
        "within_noise": False,
    }
    assert ": better," in report.sections.effect_sentence(
        {**base, "metric": "retention_flip_rate", "unit": "points"}, "CI"
    )
    assert ": worse," in report.sections.effect_sentence({**base, "metric": "retention_acc", "unit": "points"}, "CI")
    assert ": better," in report.sections.effect_sentence({**base, "metric": "indomain_ppl", "unit": "%"}, "CI")


def test_implementation_effects_get_their_own_paragraph(report):
    """llm-compressor vs AutoAWQ and the assistant-only mask: a side-by-side table with the
    calibration-source effect in each tool, a sentence for each effect whose CI excludes 0 (and
    none for one within noise), and nothing at all for a run without them."""
    eff = {"unit": "% perplexity", "metric": "indomain_ppl", "draws": [3, 3], "paired_draws": True}
    effects = [
        {**eff, "a": "in_domain", "b": "generic", "point": -7.3, "lo": -10.5, "hi": -3.6, "within_noise": False},
        {
            **eff,
            "a": "in_domain/llmc",
            "b": "in_domain",
            "kind": "implementation",
            "point": 1.25,
            "lo": -0.5,
            "hi": 3.0,
            "within_noise": True,
        },
        {
            **eff,
            "a": "in_domain/llmc-asst",
            "b": "in_domain/llmc",
            "kind": "loss mask",
            "point": -2.5,
            "lo": -4.0,
            "hi": -1.0,
            "within_noise": False,
        },
        {
            **eff,
            "a": "in_domain/llmc",
            "b": "generic/llmc",
            "kind": "calibration source",
            "point": -6.0,
            "lo": -9.0,
            "hi": -3.0,
            "within_noise": False,
        },
    ]
    M = {"03_evaluate": {"calibration_effects": effects}, "manifest": {"params": {"evaluate": {"confidence": 0.95}}}}
    md = report.outcome.implementations_md(M)
    table = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "**-7.30%** [-10.50, -3.60]" in table["in-domain vs generic calibration, AutoAWQ"]
    assert "**-6.00%** [-9.00, -3.00]" in table["in-domain vs generic calibration, llm-compressor"]
    assert "| +1.25% [-0.50, +3.00] |" in table["llm-compressor vs AutoAWQ, in-domain sets (paired draws)"]
    # a sentence for each effect whose CI excludes 0, none for the one within noise
    assert "llm-compressor calibrated on the assistant's tokens only (in-domain sets)" in md
    assert "-2.50% (95% CI [-4.00, -1.00], 3 paired draws): better, and the interval excludes 0." in md
    assert "In-domain (llm-compressor) calibration changed" in md
    assert "llm-compressor against AutoAWQ on the same in-domain sets" not in md
    assert "Every other effect in the table is within noise" in md
    # AutoAWQ's own source effect is stated in the section above, not twice
    assert "In-domain calibration changed" not in md
    # the main effects table keeps calibration-source rows of AutoAWQ only
    main = report.outcome.effects_md(M).split("### One algorithm")[0]
    assert "in_domain/llmc vs in_domain" not in main
    M["03_evaluate"]["calibration_effects"] = effects[:1]
    assert report.outcome.implementations_md(M) == ""
