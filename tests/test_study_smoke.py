"""The whole study, end to end, under papermill with params/smoke.yaml (a few minutes on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantstudy import cli
from quantstudy.pipeline.runner import Pipeline

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "demo-support-lm" / "config.json"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    assert MODEL.is_file(), "the committed demo model is missing (models/demo-support-lm; make demo-model rebuilds it)"
    out = tmp_path_factory.mktemp("outputs")
    pipeline = Pipeline(outputs_dir=out)
    code = cli.main(["run", str(REPO / "params" / "smoke.yaml"), "--run-id", "smoke"], pipeline=pipeline)
    return code, out / "smoke"


def test_smoke_study_completes(smoke_run):
    code, run = smoke_run
    manifest = json.loads((run / "manifest.json").read_text())
    failed = {k: v.get("error") for k, v in manifest["steps"].items() if v["status"] not in ("completed", "skipped")}
    assert code == 0 and not failed, failed
    for step in ("01_calibration", "02_quantize", "03_evaluate", "04_benchmark", "05_rollout_analysis"):
        assert (run / step / "metrics.json").is_file(), step
        assert (run / "notebooks" / f"{step}.ipynb").is_file(), step
    report = (run / "report.html").read_text()
    assert "Situation" in report and 'id="verdict"' in report and "<script" not in report
    assert 'id="budget"' in report and "<img" in report and 'id="flips"' in report
    assert 'id="pii-independent"' in report and 'id="answer"' in report
    assert "vs dequantized weights" in report and 'id="lm-eval"' in report
    assert "One algorithm, two implementations: llm-compressor vs AutoAWQ" in report  # params/smoke.yaml runs both


def test_smoke_outputs_are_sane(smoke_run):
    _, run = smoke_run
    cal = json.loads((run / "01_calibration" / "metrics.json").read_text())
    assert cal["scrub"]["n_survivors"] == 0
    assert all(s["kept_by_autoawq"] == s["tokens"] for s in cal["sets"])
    indep = cal["pii_independent"]  # the scrubber on hand-labelled text it was not written for
    assert set(indep) == {"development", "holdout"} and indep["holdout"]["overall"]["instances"] > 100
    assert all(not any(ch.isdigit() for ch in s["masked"][1:]) for s in indep["holdout"]["survivors"])
    q = json.loads((run / "02_quantize" / "metrics.json").read_text())
    assert {c["method"] for c in q["checkpoints"]} == {"awq", "rtn"}
    llmc = {c["name"]: c for c in q["checkpoints"] if c["backend"] == "llmcompressor"}
    assert sorted(llmc) == [
        "awq-w4-g128-generic-d0-llmc",
        "awq-w4-g128-indomain-d0-llmc",
        "awq-w4-g128-indomain-d0-llmc-asst",
    ]
    assert llmc["awq-w4-g128-indomain-d0-llmc-asst"]["loss_mask"] == "assistant"
    ev = json.loads((run / "03_evaluate" / "metrics.json").read_text())
    assert ev["rollback_check"]["identical"] is True
    kinds = {(e["kind"], e["a"], e["b"]) for e in ev["calibration_effects"]}
    assert ("implementation", "in_domain/llmc", "in_domain") in kinds
    assert ("loss mask", "in_domain/llmc-asst", "in_domain/llmc") in kinds
    flips = {(f["checkpoint"], f["task"]): f for f in ev["flips"]}
    assert len(flips) == (len(ev["summary"]) - 1) * len(ev["n_items"])
    for f in flips.values():
        assert f["right->wrong"] + f["wrong->right"] == round(f["flip rate (%)"] * f["items"] / 100)
        assert f["CI low"] <= f["flip rate (%)"] <= f["CI high"]
    lm = ev["lm_eval"]  # lm-eval-harness on the same items judges every item as the study's scorer does
    assert set(lm) == {r["name"] for r in ev["summary"] if r["lm_head"] == "float"}  # the checkpoints on disk
    assert all(r["agree_items"] == r["n_items"] for tasks in lm.values() for r in tasks.values()), lm
    base = next(r for r in ev["summary"] if r["name"] == "baseline")
    assert base["policy_closed_book_acc"] > ev["chance_levels"]["policy_closed_book"]
    bm = json.loads((run / "04_benchmark" / "metrics.json").read_text())
    for model in ("demo", "production"):
        agree = {a["path"]: a["rel_rms_diff"] for a in bm[model]["agreement"]}
        assert agree["naive4"] < 1e-5 and agree.get("fast4", 0.0) < 0.05, agree  # the kernels hold the checkpoint
    demo = {a["path"]: a for a in bm["demo"]["agreement"]}  # demo baseline = the original model, not the checkpoint
    assert demo["baseline"]["rel_rms_diff_vs_baseline"] == 0.0 and demo["baseline"]["rel_rms_diff"] > 1e-3
    assert demo["naive4"]["rel_rms_diff_vs_baseline"] == pytest.approx(
        demo["baseline"]["rel_rms_diff"], rel=0.05
    )  # RMS of the other side
    # serve.lm_head int8: step 04 timed fast4 with it, and step 03 scored that very configuration
    served = [r for r in ev["summary"] if r["lm_head"] != "float"]
    assert [r["lm_head"] for r in served] == ["int8"] and served[0]["name"].endswith("+head-int8")
    assert bm["demo"]["env"]["checkpoint"].endswith(served[0]["name"].removesuffix("+head-int8"))
    assert {m["path"]: m["lm_head"] for m in bm["demo"]["memory"]}["fast4"] == "int8"
    assert served[0]["name"] in ev["verdict_by_checkpoint"]
    ro = json.loads((run / "05_rollout_analysis" / "metrics.json").read_text())
    assert "+head-" not in ro["candidate"]["checkpoint"]  # the rollout ships a checkpoint, not a serving row
    assert ro["rollout"]["decision"] in ("cut over", "roll back", "continue", "hold", "stop (SRM)")
    assert ro["worse_scenario"]["decision"] == "roll back"


def test_every_metrics_file_meets_its_contract(smoke_run):
    """Each step wrote through quantstudy.contracts; read them back the way the next steps do."""
    from quantstudy import contracts

    _, run = smoke_run
    for step in contracts.STEPS:
        assert contracts.read(step, run / step) == json.loads((run / step / "metrics.json").read_text()), step


def test_second_run_skips_every_step(smoke_run, tmp_path):
    code, run = smoke_run
    pipeline = Pipeline(outputs_dir=run.parent)
    assert (
        cli.main(["run", str(REPO / "params" / "smoke.yaml"), "--run-id", "smoke", "--no-report"], pipeline=pipeline)
        == 0
    )
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(v["status"] == "skipped" for v in manifest["steps"].values())
