"""Typed contracts between the steps (quantstudy.contracts): every real metrics.json validates,
writing keeps the JSON byte for byte, and a renamed or missing field fails loudly, naming the
file, the field and the fix, in every reader (steps 02, 03, 05 and the report)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import get_args

import pytest

from quantstudy import contracts

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SMOKE = FIXTURES / "contracts" / "smoke"  # a real run of params/smoke.yaml with the current code
OLDER = FIXTURES / "run"  # a real run recorded before flips, guardrails and the power plan
DOCS = Path(__file__).resolve().parents[1] / "docs"
# `quantstudy bench` pages (docs/gpu-default-* hold a study run's step folders instead)
BENCH_PAGES = sorted(p for p in DOCS.rglob("metrics.json") if p.parent.name not in contracts.STEPS)
STEPS = list(contracts.STEPS)
DEFAULTS = {
    "01_calibration": None,
    "02_quantize": str,
    "03_evaluate": float,
    "04_benchmark": str,
    "05_rollout_analysis": str,
}  # the json.dumps default each step's writer passes


def _load(run: Path, step: str) -> dict:
    return json.loads((run / step / "metrics.json").read_text())


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / run.name
    shutil.copytree(run, dst)
    return dst


def test_one_contract_per_step_in_pipeline_order():
    from quantstudy.pipeline.runner import STEPS as PIPELINE

    assert STEPS == [s.name for s in PIPELINE]


@pytest.mark.parametrize("run", [SMOKE, OLDER], ids=["smoke", "older-run"])
@pytest.mark.parametrize("step", STEPS)
def test_real_metrics_files_validate(run: Path, step: str):
    data = contracts.read(step, run / step)
    assert data == _load(run, step) and list(data) == list(_load(run, step))  # as written, key order kept


@pytest.mark.parametrize("path", BENCH_PAGES, ids=lambda p: p.parent.name)
def test_benchmark_pages_validate_as_step_04(path: Path):
    contracts.read("04_benchmark", path.parent)


@pytest.mark.parametrize("page", ["gpu-default-h100", "gpu-default-h200"])
def test_the_gpu_study_steps_validate(page: str):
    """The partial GPU runs' step 01 and 02 files (docs/gpu-default-*) meet their contracts."""
    for step in ("01_calibration", "02_quantize"):
        contracts.read(step, DOCS / page / step)


@pytest.mark.parametrize("step", STEPS)
def test_write_keeps_the_json_text_identical(step: str, tmp_path: Path):
    """contracts.write writes exactly what the step's writer wrote before (same numbers, same order)."""
    metrics = _load(SMOKE, step)
    assert contracts.write(step, tmp_path / "out", metrics, default=DEFAULTS[step]) is metrics
    assert (tmp_path / "out" / "metrics.json").read_text() == json.dumps(metrics, indent=2, default=DEFAULTS[step])


def test_write_refuses_an_invalid_file_and_writes_nothing(tmp_path: Path):
    metrics = _load(SMOKE, "03_evaluate")
    metrics["budgets"] = metrics.pop("budget")
    with pytest.raises(contracts.ContractError) as err:
        contracts.write("03_evaluate", tmp_path, metrics)
    msg = str(err.value)
    assert "would write" in msg and "`budget`: required field missing" in msg and "contracts.evaluate" in msg
    assert not (tmp_path / "metrics.json").exists()


RENAMES = [
    ("01_calibration", "sets", "calibration_sets"),
    ("02_quantize", "checkpoints", "ckpts"),
    ("03_evaluate", "verdict_by_checkpoint", "verdicts"),
    ("04_benchmark", "traps", "trap_flags"),
    ("05_rollout_analysis", "rollout", "main"),
]


@pytest.mark.parametrize(("step", "key", "new"), RENAMES)
def test_a_renamed_required_key_names_the_file_the_field_and_the_fix(step: str, key: str, new: str, tmp_path: Path):
    run = _copy(SMOKE, tmp_path)
    path = run / step / "metrics.json"
    data = json.loads(path.read_text())
    data[new] = data.pop(key)
    path.write_text(json.dumps(data))
    with pytest.raises(contracts.ContractError) as err:
        contracts.read(step, run / step)
    msg = str(err.value)
    assert str(path) in msg and f"`{key}`: required field missing" in msg and f"renamed from `{key}`?" in msg
    assert f"re-run step {step}" in msg


@pytest.mark.parametrize(
    ("step", "edit", "where"),
    [
        ("02_quantize", lambda m: m["checkpoints"][1].pop("calibration_source"), "`checkpoints[1].calibration_source`"),
        ("03_evaluate", lambda m: m["budget"][2]["ci"].pop("hi"), "`budget[2].ci.hi`"),
        (
            "03_evaluate",
            lambda m: m["calibration_effects"][0].pop("within_noise"),
            "`calibration_effects[0].within_noise`",
        ),
        (
            "04_benchmark",
            lambda m: m["production"]["fleet"][0].pop("devices_at_peak"),
            "`production.fleet[0].devices_at_peak`",
        ),
        ("04_benchmark", lambda m: m["demo"]["speedups"][0].pop("decode_speedup"), "`demo.speedups[0].decode_speedup`"),
        ("05_rollout_analysis", lambda m: m["rollout"].pop("decision"), "`rollout.decision`"),
    ],
)
def test_a_missing_nested_field_is_named_by_its_path(step: str, edit, where: str):
    data = _load(SMOKE, step)
    edit(data)
    with pytest.raises(contracts.ContractError, match=re.escape(f"{where}: required field missing")):
        contracts.validate(step, data, f"{step}/metrics.json")


def test_optional_keys_are_still_declared():
    """A renamed optional key (the report would silently drop its section) is refused as unexpected."""
    data = _load(SMOKE, "03_evaluate")
    data["flip"] = data.pop("flips")
    with pytest.raises(contracts.ContractError, match="`flip`: unexpected field"):
        contracts.validate("03_evaluate", data, "03_evaluate/metrics.json")
    del data["flip"]
    contracts.validate("03_evaluate", data, "03_evaluate/metrics.json")  # absent: a run recorded before flips


def test_wrong_types_and_values_fail():
    m3 = _load(SMOKE, "03_evaluate")
    m3["budget"][0]["verdict"] = "passed"
    with pytest.raises(contracts.ContractError, match=r"`budget\[0\].verdict`: Input should be 'pass', 'fail'"):
        contracts.validate("03_evaluate", m3, "x")
    m3 = _load(SMOKE, "03_evaluate")
    m3["summary"] = [r for r in m3["summary"] if r["name"] != "baseline"]
    with pytest.raises(contracts.ContractError, match="summary has no 'baseline' row"):
        contracts.validate("03_evaluate", m3, "x")
    m2 = _load(SMOKE, "02_quantize")
    m2["checkpoints"][0]["bits"] = "four"
    with pytest.raises(contracts.ContractError, match=r"`checkpoints\[0\].bits`: Input should be a valid integer"):
        contracts.validate("02_quantize", m2, "x")


def test_missing_and_unreadable_files(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="run step 02_quantize first"):
        contracts.read("02_quantize", tmp_path)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(contracts.ContractError, match="cannot be read as JSON"):
        contracts.read("02_quantize", tmp_path)
    with pytest.raises(contracts.ContractError, match="no contract for step"):
        contracts.read("06_party", tmp_path)


def test_decisions_match_the_rollout_module():
    from quantstudy.contracts.rollout import Decision
    from quantstudy.steps import rollout

    assert set(get_args(Decision)) == set(rollout.DECISIONS)


# --------------------------------------------------------------------------- the readers use the contracts
def _break(run: Path, step: str, key: str) -> Path:
    path = run / step / "metrics.json"
    data = json.loads(path.read_text())
    data[key + "_renamed"] = data.pop(key)
    path.write_text(json.dumps(data))
    return path


def test_step_02_reads_step_01_through_its_contract(tmp_path: Path):
    from quantstudy.steps import quantize

    run = _copy(SMOKE, tmp_path)
    path = _break(run, "01_calibration", "sets")
    with pytest.raises(contracts.ContractError, match="`sets`: required field missing") as err:
        quantize.calibration_sets(run / "01_calibration")
    assert str(path) in str(err.value)


def test_step_03_reads_step_02_through_its_contract(tmp_path: Path):
    from quantstudy.steps import evaluate

    run = _copy(SMOKE, tmp_path)
    _break(run, "02_quantize", "checkpoints")
    with pytest.raises(contracts.ContractError, match="`checkpoints`: required field missing"):
        evaluate.checkpoint_list(run / "02_quantize")


def test_step_05_reads_steps_03_and_04_through_their_contracts(tmp_path: Path):
    from quantstudy.steps import rollout

    run = _copy(SMOKE, tmp_path)
    assert rollout.candidate_from_evaluation(run / "03_evaluate")["checkpoint"]
    assert rollout.latency_from_benchmark(run / "04_benchmark")["source"].startswith("04_benchmark/metrics.json")
    _break(run, "03_evaluate", "summary")
    with pytest.raises(contracts.ContractError, match="`summary`: required field missing"):
        rollout.candidate_from_evaluation(run / "03_evaluate")
    _break(run, "04_benchmark", "targets")
    with pytest.raises(contracts.ContractError, match="`targets`: required field missing"):
        rollout.latency_from_benchmark(run / "04_benchmark")


# --------------------------------------------------------------------------- the writers use the contracts
def test_step_01_writer_writes_the_same_file_through_its_contract(tmp_path: Path):
    """calibration.write_metrics replayed from the smoke run's own numbers gives its file back."""
    from quantstudy.steps import calibration

    m = _load(SMOKE, "01_calibration")
    pools = {
        "scrub": m["scrub"],
        "pii_independent": m["pii_independent"],
        "generic": [""] * m["pools"]["generic_texts"],
        "in_domain": [""] * m["pools"]["in_domain_texts"],
        "chat_template": m["pools"]["in_domain_rendered_with_chat_template"],
    }
    stats = {
        "coverage": m["coverage"],
        "overlap_3gram": m["overlap_3gram"],
        "lengths": {n: [v] for n, v in m["length_median"].items()},
    }
    calibration.write_metrics(tmp_path, pools, m["sets"], stats, m["wall_s"])
    assert (tmp_path / "metrics.json").read_text() == (SMOKE / "01_calibration" / "metrics.json").read_text()
    pools["scrub"] = {k: v for k, v in m["scrub"].items() if k != "n_survivors"}
    with pytest.raises(contracts.ContractError, match="`scrub.n_survivors`: required field missing"):
        calibration.write_metrics(tmp_path / "bad", pools, m["sets"], stats, m["wall_s"])
    assert not (tmp_path / "bad" / "metrics.json").exists()


def test_step_02_writer_reads_step_01_and_writes_the_same_file(tmp_path: Path):
    from quantstudy.config.params import load_params
    from quantstudy.steps import quantize

    P = load_params(Path(__file__).resolve().parents[1] / "params" / "smoke.yaml")
    m = _load(SMOKE, "02_quantize")
    out = quantize.write_metrics(
        tmp_path / "02",
        P,
        m["checkpoints"],
        m["sanity"],
        m["baseline_archive"]["files"],
        m["wall_s"],
        SMOKE / "01_calibration",
    )
    written = _load(tmp_path, "02")
    assert out == written
    assert {**written, "baseline_archive": None} == {**m, "baseline_archive": None}  # rollback names the folder
    assert written["targets"]["steps_01_02_wall_s"]["step_01_s"] == _load(SMOKE, "01_calibration")["wall_s"]
