"""Step 05 library: log schema, simulator, spotify-confidence sequential analysis, figures."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantstudy import rollout
from quantstudy.params import RolloutSection
from quantstudy.rollout import RolloutError


def _logs(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame({
        "timestamp": [f"2024-03-0{1 + i // 3} 10:0{i % 3}:00" for i in range(n)],
        "arm": ["baseline", "quantized"] * (n // 2),
        "conversation_id": [f"c{i}" for i in range(n)],
        "satisfaction": [1, 0, 1, 1, 0.5, 1][:n],
    })


def _write(tmp_path: Path, df: pd.DataFrame, name: str = "logs.csv") -> Path:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- schema
def test_read_logs_ok_csv_and_parquet(tmp_path: Path) -> None:
    df = _logs().assign(resolved=[1, 0, "true", "false", True, 0])
    out = rollout.read_logs(_write(tmp_path, df))
    assert list(out["arm"].value_counts().sort_index()) == [3, 3]
    assert pd.api.types.is_datetime64_any_dtype(out["timestamp"])
    assert out["resolved"].dtype == bool
    assert out.attrs["simulated"] is False
    pq = tmp_path / "logs.parquet"
    _logs().to_parquet(pq)
    assert len(rollout.read_logs(pq)) == 6


@pytest.mark.parametrize("mutate, column, row, words", [
    (lambda d: d.drop(columns=["satisfaction"]), "satisfaction", None, "missing column"),
    (lambda d: d.assign(arm=["baseline", "quantized", "baseline", "quant", "baseline", "quantized"]),
     "arm", 4, "'baseline', 'quantized'"),
    (lambda d: d.assign(satisfaction=[1, 0, 1.5, 1, 0, 1]), "satisfaction", 3, "[0, 1]"),
    (lambda d: d.assign(satisfaction=[1, 0, 1, "good", 0, 1]), "satisfaction", 4, "a number"),
    (lambda d: d.assign(timestamp=["2024-03-01", "2024-03-01", "not a date", "2024-03-02", "2024-03-02",
                                   "2024-03-02"]), "timestamp", 3, "date-time"),
    (lambda d: d.assign(arm="baseline"), "arm", None, "empty arm"),
    (lambda d: d.assign(resolved=[1, 0, 2, 1, 0, 1]), "resolved", 3, "0/1"),
])
def test_schema_errors_name_file_column_row(tmp_path: Path, mutate, column, row, words) -> None:
    path = _write(tmp_path, mutate(_logs()))
    with pytest.raises(RolloutError) as err:
        rollout.read_logs(path)
    msg = str(err.value)
    assert str(path) in msg and f"'{column}'" in msg and words in msg
    if row is not None:
        assert f"data row {row} (data rows counted from 1, header not counted)" in msg
    if "empty arm" in words:
        assert "'quantized'" in msg and "6 data rows" in msg


def test_missing_file_and_bad_extension(tmp_path: Path) -> None:
    with pytest.raises(RolloutError, match="not found"):
        rollout.read_logs(tmp_path / "nope.csv")
    bad = tmp_path / "logs.xlsx"
    bad.write_text("x")
    with pytest.raises(RolloutError, match="unsupported file type"):
        rollout.read_logs(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(RolloutError, match="empty"):
        rollout.read_logs(empty)


# --------------------------------------------------------------------------- simulator
def test_simulator_deterministic_marked_and_on_schedule() -> None:
    p = RolloutSection(daily_conversations=2000, margin=0.02)
    a = rollout.simulate_logs(p, -1.0, seed=7, scenario="measured")
    b = rollout.simulate_logs(p, -1.0, seed=7, scenario="measured")
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(rollout.simulate_logs(p, -1.0, seed=8, scenario="measured"))
    assert a.attrs["simulated"] is True and a["simulated"].all()
    assert len(a) == len(p.stages) * p.days_per_stage * p.daily_conversations
    # Same schema as real logs: it passes validation.
    rollout.validate_logs(a, "sim")
    daily = rollout.daily_summary(a)
    share = daily[daily["arm"] == "quantized"].set_index("day")["share"]
    plan = rollout.schedule(p).set_index("day")["quantized_share"]
    assert np.allclose(share, plan, atol=0.03)
    assert plan.iloc[-1] == pytest.approx(1 - rollout.HOLDBACK)  # 100% stage keeps a holdback
    assert (daily["n"] > 0).all() and (daily["ci_low"] <= daily["mean"]).all()


# --------------------------------------------------------------------------- decisions
def test_measured_no_change_cuts_over() -> None:
    res = rollout.analyse(RolloutSection(scenario="measured", margin=0.02), quality_change_points=0.0, seed=0)
    looks = res["looks"]
    assert res["simulated"] is True and res["method"] == "sequential"
    assert res["decision"] == "cut over"
    # cut over only once the final stage is reached, and it sticks
    first = looks.index[looks["decision"] == "cut over"][0]
    assert looks.loc[first, "final_stage"]
    assert (looks.loc[first:, "decision"] == "cut over").all()
    assert (looks.loc[:first - 1, "decision"] == "continue").all()
    assert looks["non_inferior"].iloc[-1] and (looks["ni_lower"].iloc[-1] > -RolloutSection(margin=0.02).margin)
    # cumulative counts grow and add up to all logs
    assert (looks["n_baseline"].diff().dropna() >= 0).all()
    assert looks[["n_baseline", "n_quantized"]].iloc[-1].sum() == len(res["logs"])


def test_worse_scenario_rolls_back() -> None:
    p = RolloutSection(scenario="worse", margin=0.02)
    res = rollout.analyse(p, quality_change_points=0.0, seed=0)
    looks = res["looks"]
    assert res["decision"] == "roll back"
    k = res["stopped_at_look"]
    row = looks.set_index("look").loc[k]
    assert row["significantly_worse"] and not row["non_inferior"] and row["ci_upper"] < 0
    assert not row["final_stage"]  # stopped before the full cut-over
    assert (looks.set_index("look").loc[k:, "decision"] == "roll back").all()


def test_bonferroni_fallback_when_sequential_breaks(monkeypatch: pytest.MonkeyPatch) -> None:
    real = rollout._ztest_difference

    def broken(data, alpha, sequential, nim):
        if sequential:
            raise TypeError("simulated API break")
        return real(data, alpha, sequential, nim)

    monkeypatch.setattr(rollout, "_ztest_difference", broken)
    logs = rollout.simulate_logs(RolloutSection(margin=0.02), 0.0, 0, "worse")
    with pytest.warns(RuntimeWarning, match="fell back to Bonferroni"):
        looks = rollout.sequential_analysis(logs, RolloutSection(margin=0.02))
    assert looks.attrs["method"] == "bonferroni"
    assert looks["decision"].iloc[-1] == "roll back"


def test_continuous_csat_and_real_logs_path(tmp_path: Path) -> None:
    p = RolloutSection(stages=[0.5, 1.0], days_per_stage=1, daily_conversations=400, margin=0.02)
    sim = rollout.simulate_logs(p, 0.0, 3, "measured")
    rng = np.random.default_rng(0)
    sim["satisfaction"] = np.clip(sim["satisfaction"] * 0.8 + rng.uniform(0, 0.2, len(sim)), 0, 1)
    path = _write(tmp_path, sim.drop(columns=["simulated"]))
    res = rollout.analyse(p.model_copy(update={"logs": str(path)}), 0.0, 0)
    assert res["simulated"] is False
    assert set(res["daily"]["ci_method"]) == {"normal"}
    assert res["decision"] in rollout.DECISIONS
    assert len(res["looks"]) == 2


# --------------------------------------------------------------------------- figures
def _texts(fig) -> str:
    parts = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        parts += [t.get_text() for t in ax.texts]
    return " | ".join(parts)


@pytest.mark.parametrize("simulated", [True, False])
def test_figures_build_and_label_simulated(simulated: bool) -> None:
    res = rollout.analyse(RolloutSection(daily_conversations=1000, margin=0.02), 0.0, 1)
    f1 = rollout.plot_daily(res["daily"], simulated=simulated)
    f2 = rollout.plot_sequential(res["looks"], RolloutSection(margin=0.02).margin, simulated=simulated)
    for fig in (f1, f2):
        text = _texts(fig)
        assert ("SIMULATED" in text) is simulated
        fig.savefig(io.BytesIO(), format="png")  # renders without pyplot
        assert fig.axes[0].get_legend() is not None
    assert "percentage points" in _texts(f2)
    assert any(t.get_text() in rollout.DECISIONS for t in f2.axes[0].texts)


# --------------------------------------------------------------------------- the candidate rule
def _eval_dir(tmp_path: Path, cks: dict[str, tuple], first: str = "policy_closed_book_acc") -> Path:
    """A step-03 metrics.json: cks = {name: (source, draw, passes every line, worst case, point)} on
    the budget's first line; a second line (indomain_ppl) fails the checkpoints that do not pass."""
    import json

    summary = [{"name": "baseline", "method": "baseline", "source": "", "draw": None, "bits": 16,
                "policy_closed_book_acc": 0.8, "retention_acc": 0.8}]
    budget, verdicts = [], {}
    for name, (source, draw, passes, worst, point) in cks.items():
        summary.append({"name": name, "method": "awq", "source": source, "draw": draw, "bits": 4,
                        "policy_closed_book_acc": 0.78, "retention_acc": 0.8})
        budget.append({"checkpoint": name, "metric": first, "limit": 2.0, "unit": "points", "degradation": point,
                       "worst_case": worst, "verdict": "pass" if worst <= 2.0 else "fail"})
        budget.append({"checkpoint": name, "metric": "indomain_ppl", "limit": 3.0, "unit": "percent",
                       "degradation": 1.0, "worst_case": 2.0 if passes else 9.0,
                       "verdict": "pass" if passes else "fail"})
        verdicts[name] = "pass" if passes and worst <= 2.0 else "fail"
    declared = [{"metric": "satisfaction", "max_drop": 2.0, "unit": "points"},  # judged by the rollout, skipped
                {"metric": first, "max_drop": 2.0, "unit": "points"},
                {"metric": "indomain_ppl", "max_drop": 3.0, "unit": "percent"}]
    folder = tmp_path / "03_evaluate"
    folder.mkdir(exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"summary": summary, "budget": budget, "budget_declared": declared,
                                                     "verdict_by_checkpoint": verdicts}))
    return folder


def test_candidate_rule_picks_the_best_worst_case_among_passing(tmp_path: Path) -> None:
    folder = _eval_dir(tmp_path, {
        "awq-w4-g128-indomain-d0": ("in_domain", 0, True, 1.5, 0.2),
        "awq-w4-g128-generic-d0": ("generic", 0, True, 1.8, -0.5),
        "awq-w4-g128-mixed-d0": ("mixed", 0, False, 0.1, 0.0),  # best number, but fails another line
        "awq-w4-g128-indomain-d0-duo1-clip1": ("in_domain", 0, True, 0.0, 0.0),  # search-setting variant: left out
    })
    c = rollout.candidate_from_evaluation(folder)
    assert c["checkpoint"] == "awq-w4-g128-indomain-d0" and c["passed_offline_budget"] is True
    assert c["rule"] == "best_worst_case" and c["metric"] == "policy_closed_book_acc" and c["worst_case"] == 1.5
    assert "policy_closed_book_acc" in c["rule_text"] and "generic < mixed < in_domain" in c["rule_text"]
    assert c["runner_up"]["checkpoint"] == "awq-w4-g128-generic-d0" and c["runner_up"]["worst_case"] == 1.8
    assert "awq-w4-g128-indomain-d0-duo1-clip1" not in c["pool"]
    assert c["quality_change_points"] == pytest.approx(-1.0)
    # best_point ranks by the point estimate instead.
    assert rollout.candidate_from_evaluation(folder, "best_point")["checkpoint"] == "awq-w4-g128-generic-d0"


def test_candidate_rule_when_nothing_passes(tmp_path: Path) -> None:
    folder = _eval_dir(tmp_path, {
        "awq-w4-g128-indomain-d0": ("in_domain", 0, False, 4.0, 1.0),
        "awq-w4-g128-generic-d0": ("generic", 0, False, 3.0, 1.0),
    })
    c = rollout.candidate_from_evaluation(folder)
    assert c["checkpoint"] == "awq-w4-g128-generic-d0" and c["passed_offline_budget"] is False
    assert c["runner_up"]["checkpoint"] == "awq-w4-g128-indomain-d0" and not c["runner_up"]["passed_offline_budget"]


def test_candidate_rule_ties_go_to_cheaper_calibration_then_draw_0(tmp_path: Path) -> None:
    same = (True, 1.0, 0.0)
    folder = _eval_dir(tmp_path, {
        "awq-w4-g128-indomain-d0": ("in_domain", 0, *same),
        "awq-w4-g128-mixed-d1": ("mixed", 1, *same),
        "awq-w4-g128-mixed-d0": ("mixed", 0, *same),
    })
    c = rollout.candidate_from_evaluation(folder)
    assert (c["checkpoint"], c["runner_up"]["checkpoint"]) == ("awq-w4-g128-mixed-d0", "awq-w4-g128-mixed-d1")
    assert c["pool"][-1] == "awq-w4-g128-indomain-d0"
    folder = _eval_dir(tmp_path, {
        "awq-w4-g128-generic-d0": ("generic", 0, *same),
        "awq-w4-g128-generic-d0-n16": ("generic", 0, *same),  # fewer calibration samples: cheaper
        "awq-w4-g128-generic-d1": ("generic", 1, *same),
    })
    c = rollout.candidate_from_evaluation(folder, default_samples=64)
    assert c["pool"] == ["awq-w4-g128-generic-d0-n16", "awq-w4-g128-generic-d0", "awq-w4-g128-generic-d1"]
    assert c["n_samples"] == 16 and c["runner_up"]["n_samples"] == 64


def test_candidate_rule_is_validated(tmp_path: Path) -> None:
    from pydantic import ValidationError

    assert RolloutSection().candidate_rule == "best_worst_case"
    with pytest.raises(ValidationError):
        RolloutSection(candidate_rule="best_guess")
    folder = _eval_dir(tmp_path, {"awq-w4-g128-generic-d0": ("generic", 0, True, 1.0, 0.0)})
    with pytest.raises(RolloutError, match="unknown rule 'best_guess'"):
        rollout.candidate_from_evaluation(folder, "best_guess")
    assert rollout.candidate_from_evaluation(folder)["runner_up"] is None


def test_metrics_record_the_rule_and_the_runner_up(tmp_path: Path) -> None:
    import json

    folder = _eval_dir(tmp_path, {"awq-w4-g128-indomain-d0": ("in_domain", 0, True, 1.5, 0.2),
                                  "awq-w4-g128-generic-d0": ("generic", 0, True, 1.8, -0.5)})
    cand = rollout.candidate_from_evaluation(folder)
    p = RolloutSection(stages=[0.5, 1.0], days_per_stage=1, daily_conversations=200, margin=0.02)
    step = {"candidate": cand, "main": rollout.analyse(p, cand["quality_change_points"], 0), "rollout_params": p}
    rollout.write_metrics(tmp_path / "05", step, 1.0)
    written = json.loads((tmp_path / "05" / "metrics.json").read_text())["candidate"]
    assert written["rule"] == "best_worst_case" and written["rule_text"] == cand["rule_text"]
    assert (written["checkpoint"], written["worst_case"]) == ("awq-w4-g128-indomain-d0", 1.5)
    assert (written["runner_up"]["checkpoint"], written["runner_up"]["worst_case"]) == ("awq-w4-g128-generic-d0", 1.8)
