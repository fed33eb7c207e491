"""Step 05 library: log schema, simulator, spotify-confidence sequential analysis, figures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantstudy import contracts, rollout_logs
from quantstudy.config.params import RolloutSection
from quantstudy.rollout_logs import RolloutError
from quantstudy.steps import rollout
from quantstudy.steps.rollout import stats as rollout_stats


def _logs(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": [f"2024-03-0{1 + i // 3} 10:0{i % 3}:00" for i in range(n)],
            "arm": ["baseline", "quantized"] * (n // 2),
            "conversation_id": [f"c{i}" for i in range(n)],
            "satisfaction": [1, 0, 1, 1, 0.5, 1][:n],
        }
    )


def _write(tmp_path: Path, df: pd.DataFrame, name: str = "logs.csv") -> Path:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- schema
def test_read_logs_ok_csv_and_parquet(tmp_path: Path) -> None:
    df = _logs().assign(resolved=[1, 0, "true", "false", True, 0])
    out = rollout_logs.read_logs(_write(tmp_path, df))
    assert list(out["arm"].value_counts().sort_index()) == [3, 3]
    assert pd.api.types.is_datetime64_any_dtype(out["timestamp"])
    assert out["resolved"].dtype == bool
    assert out.attrs["simulated"] is False
    pq = tmp_path / "logs.parquet"
    _logs().to_parquet(pq)
    assert len(rollout_logs.read_logs(pq)) == 6


@pytest.mark.parametrize(
    "mutate, column, row, words",
    [
        (lambda d: d.drop(columns=["satisfaction"]), "satisfaction", None, "missing column"),
        (lambda d: d.assign(escalated=[0, 1, 0, 0, "yes", 1]), "escalated", 5, "0/1 or true/false"),
        (lambda d: d.assign(latency_s=[1.2, 0.8, -0.1, 2.0, 1.0, 1.1]), "latency_s", 3, "seconds >= 0"),
        (lambda d: d.assign(latency_s=[1.2, "slow", 1.0, 2.0, 1.0, 1.1]), "latency_s", 2, "a number of seconds"),
        (
            lambda d: d.assign(timestamp=["2024-03-01T10:00:00+01:00"] * 3 + ["2024-03-02T25:00:00+01:00"] * 3),
            "timestamp",
            4,
            "date-time",
        ),
        (
            lambda d: d.assign(arm=["baseline", "quantized", "baseline", "quant", "baseline", "quantized"]),
            "arm",
            4,
            "'baseline', 'quantized'",
        ),
        (lambda d: d.assign(satisfaction=[1, 0, 1.5, 1, 0, 1]), "satisfaction", 3, "[0, 1]"),
        (lambda d: d.assign(satisfaction=[1, 0, 1, "good", 0, 1]), "satisfaction", 4, "a number"),
        (
            lambda d: d.assign(
                timestamp=["2024-03-01", "2024-03-01", "not a date", "2024-03-02", "2024-03-02", "2024-03-02"]
            ),
            "timestamp",
            3,
            "date-time",
        ),
        (lambda d: d.assign(arm="baseline"), "arm", None, "empty arm"),
        (lambda d: d.assign(resolved=[1, 0, 2, 1, 0, 1]), "resolved", 3, "0/1"),
    ],
)
def test_schema_errors_name_file_column_row(tmp_path: Path, mutate, column, row, words) -> None:
    path = _write(tmp_path, mutate(_logs()))
    with pytest.raises(RolloutError) as err:
        rollout_logs.read_logs(path)
    msg = str(err.value)
    assert str(path) in msg and f"'{column}'" in msg and words in msg and "np." not in msg
    if row is not None:
        assert f"data row {row} (data rows counted from 1, header not counted)" in msg
    if "empty arm" in words:
        assert "'quantized'" in msg and "6 data rows" in msg


def test_missing_file_and_bad_extension(tmp_path: Path) -> None:
    with pytest.raises(RolloutError, match="not found"):
        rollout_logs.read_logs(tmp_path / "nope.csv")
    bad = tmp_path / "logs.xlsx"
    bad.write_text("x")
    with pytest.raises(RolloutError, match="unsupported file type"):
        rollout_logs.read_logs(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(RolloutError, match="empty"):
        rollout_logs.read_logs(empty)


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
    rollout_logs.validate_logs(a, "sim")
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
    assert (looks.loc[: first - 1, "decision"] == "continue").all()
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
    real = rollout_stats._ztest_difference

    def broken(data, alpha, sequential, nim):
        if sequential:
            raise TypeError("simulated API break")
        return real(data, alpha, sequential, nim)

    monkeypatch.setattr(rollout_stats, "_ztest_difference", broken)
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
        assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"  # a notebook displays it as a PNG
        assert fig.axes[0].get_legend() is not None
    assert "percentage points" in _texts(f2)
    assert any(t.get_text() in rollout.DECISIONS for t in f2.axes[0].texts)


# --------------------------------------------------------------------------- the candidate rule
def _eval_dir(tmp_path: Path, cks: dict[str, tuple], first: str = "policy_closed_book_acc") -> Path:
    """A step-03 metrics.json: cks = {name: (source, draw, passes every line, worst case, point)} on
    the budget's first line; a second line (indomain_ppl) fails the checkpoints that do not pass."""
    import json

    summary = [
        {
            "name": "baseline",
            "method": "baseline",
            "source": "",
            "draw": None,
            "bits": 16,
            "policy_closed_book_acc": 0.8,
            "retention_acc": 0.8,
        }
    ]
    budget, verdicts = [], {}
    for name, (source, draw, passes, worst, point) in cks.items():
        summary.append(
            {
                "name": name,
                "method": "awq",
                "source": source,
                "draw": draw,
                "bits": 4,
                "policy_closed_book_acc": 0.78,
                "retention_acc": 0.8,
            }
        )
        budget.append(
            {
                "checkpoint": name,
                "metric": first,
                "limit": 2.0,
                "unit": "points",
                "degradation": point,
                "worst_case": worst,
                "verdict": "pass" if worst <= 2.0 else "fail",
                "ci": {"point": -point, "lo": -worst, "hi": 0.0},
            }
        )
        budget.append(
            {
                "checkpoint": name,
                "metric": "indomain_ppl",
                "limit": 3.0,
                "unit": "percent",
                "degradation": 1.0,
                "worst_case": 2.0 if passes else 9.0,
                "verdict": "pass" if passes else "fail",
                "ci": {"point": 1.0, "lo": 0.0, "hi": 2.0 if passes else 9.0},
            }
        )
        verdicts[name] = "pass" if passes and worst <= 2.0 else "fail"
    declared = [
        {"metric": "satisfaction", "max_drop": 2.0, "unit": "points"},  # judged by the rollout, skipped
        {"metric": first, "max_drop": 2.0, "unit": "points"},
        {"metric": "indomain_ppl", "max_drop": 3.0, "unit": "percent"},
    ]
    folder = tmp_path / "03_evaluate"
    folder.mkdir(exist_ok=True)
    fixture = Path(__file__).parent / "fixtures" / "run" / "03_evaluate" / "metrics.json"
    m = json.loads(fixture.read_text())  # a valid step-03 file (its contract), with these checkpoints
    m.update(summary=summary, budget=budget, budget_declared=declared, verdict_by_checkpoint=verdicts)
    (folder / "metrics.json").write_text(json.dumps(m))
    return folder


def test_candidate_rule_picks_the_best_worst_case_among_passing(tmp_path: Path) -> None:
    folder = _eval_dir(
        tmp_path,
        {
            "awq-w4-g128-indomain-d0": ("in_domain", 0, True, 1.5, 0.2),
            "awq-w4-g128-generic-d0": ("generic", 0, True, 1.8, -0.5),
            "awq-w4-g128-mixed-d0": ("mixed", 0, False, 0.1, 0.0),  # best number, but fails another line
            "awq-w4-g128-indomain-d0-duo1-clip1": ("in_domain", 0, True, 0.0, 0.0),  # search-setting variant: left out
        },
    )
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
    folder = _eval_dir(
        tmp_path,
        {
            "awq-w4-g128-indomain-d0": ("in_domain", 0, False, 4.0, 1.0),
            "awq-w4-g128-generic-d0": ("generic", 0, False, 3.0, 1.0),
        },
    )
    c = rollout.candidate_from_evaluation(folder)
    assert c["checkpoint"] == "awq-w4-g128-generic-d0" and c["passed_offline_budget"] is False
    assert c["runner_up"]["checkpoint"] == "awq-w4-g128-indomain-d0" and not c["runner_up"]["passed_offline_budget"]


def test_candidate_rule_ties_go_to_cheaper_calibration_then_draw_0(tmp_path: Path) -> None:
    same = (True, 1.0, 0.0)
    folder = _eval_dir(
        tmp_path,
        {
            "awq-w4-g128-indomain-d0": ("in_domain", 0, *same),
            "awq-w4-g128-mixed-d1": ("mixed", 1, *same),
            "awq-w4-g128-mixed-d0": ("mixed", 0, *same),
        },
    )
    c = rollout.candidate_from_evaluation(folder)
    assert (c["checkpoint"], c["runner_up"]["checkpoint"]) == ("awq-w4-g128-mixed-d0", "awq-w4-g128-mixed-d1")
    assert c["pool"][-1] == "awq-w4-g128-indomain-d0"
    folder = _eval_dir(
        tmp_path,
        {
            "awq-w4-g128-generic-d0": ("generic", 0, *same),
            "awq-w4-g128-generic-d0-n16": ("generic", 0, *same),  # fewer calibration samples: cheaper
            "awq-w4-g128-generic-d1": ("generic", 1, *same),
        },
    )
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

    folder = _eval_dir(
        tmp_path,
        {
            "awq-w4-g128-indomain-d0": ("in_domain", 0, True, 1.5, 0.2),
            "awq-w4-g128-generic-d0": ("generic", 0, True, 1.8, -0.5),
        },
    )
    cand = rollout.candidate_from_evaluation(folder)
    p = RolloutSection(stages=[0.5, 1.0], days_per_stage=1, daily_conversations=200, margin=0.02)
    step = {"candidate": cand, "main": rollout.analyse(p, cand["quality_change_points"], 0), "rollout_params": p}
    rollout.write_metrics(tmp_path / "05", step, 1.0)
    written = json.loads((tmp_path / "05" / "metrics.json").read_text())["candidate"]
    assert written["rule"] == "best_worst_case" and written["rule_text"] == cand["rule_text"]
    assert (written["checkpoint"], written["worst_case"]) == ("awq-w4-g128-indomain-d0", 1.5)
    assert (written["runner_up"]["checkpoint"], written["runner_up"]["worst_case"]) == ("awq-w4-g128-generic-d0", 1.8)


# --------------------------------------------------------------------------- issue 16: guardrails, SRM, power, hold
FIXTURE_LOGS = Path(__file__).parent / "fixtures" / "rollout" / "logs.csv"
FIXTURE_BENCH = Path(__file__).parent / "fixtures" / "run" / "04_benchmark"
# The rollout the fixture logs describe (tests/fixtures/rollout/make_logs.py), with wider margins for 700/day.
FIXTURE_GUARDRAILS = [
    {"column": "escalated", "margin": 0.05, "higher_is_better": False},
    {"column": "resolved", "margin": 0.05, "higher_is_better": True},
    {"column": "latency_s", "margin": 0.25, "higher_is_better": False},
]


def _fixture_params(**update) -> RolloutSection:
    fields = {
        "logs": str(FIXTURE_LOGS),
        "stages": [0.1, 0.5, 1.0],
        "days_per_stage": 2,
        "daily_conversations": 700,
        "margin": 0.05,
        "guardrails": FIXTURE_GUARDRAILS,
    }
    return RolloutSection(**{**fields, **update})


def test_guardrail_params_are_typed_and_validated() -> None:
    import typing

    from pydantic import ValidationError

    p = RolloutSection()
    assert [(g.column, g.margin, g.higher_is_better) for g in p.guardrails] == [
        ("escalated", 0.02, False),
        ("resolved", 0.02, True),
        ("latency_s", 0.25, False),
    ]
    assert (p.srm_alpha, p.power, p.scenario) == (0.001, 0.8, "measured")
    known = typing.get_args(RolloutSection.Guardrail.model_fields["column"].annotation)
    assert set(known) == set(rollout_logs.GUARDRAIL_COLUMNS)
    for column, info in rollout_logs.GUARDRAIL_COLUMNS.items():  # params and library agree on directions
        margin = 0.5 if column == "latency_s" else 0.02
        RolloutSection.Guardrail(column=column, margin=margin, higher_is_better=info["higher_is_better"])
        with pytest.raises(ValidationError, match="higher_is_better"):
            RolloutSection.Guardrail(column=column, margin=margin, higher_is_better=not info["higher_is_better"])
    bad = [
        [{"column": "escalation", "margin": 0.02, "higher_is_better": False}],  # unknown column
        [{"column": "escalated", "margin": 0.0, "higher_is_better": False}],  # margin must be > 0
        [{"column": "escalated", "margin": 1.5, "higher_is_better": False}],  # a share
        [{"column": "escalated", "margin": 0.02, "higher_is_better": False}] * 2,  # twice
        [{"column": "escalated", "margn": 0.02, "higher_is_better": False}],  # unknown key
    ]
    for g in bad:
        with pytest.raises(ValidationError):
            RolloutSection(guardrails=g)
    with pytest.raises(ValidationError):
        RolloutSection(scenario="broken")
    assert RolloutSection(guardrails=[]).guardrails == []


def test_unknown_guardrail_key_reads_plainly() -> None:
    from pydantic import ValidationError

    from quantstudy.config.params import StudyParams, _format_validation_error

    with pytest.raises(ValidationError) as err:
        StudyParams.model_validate(
            {"rollout": {"guardrails": [{"column": "escalated", "margn": 0.02, "higher_is_better": False}]}}
        )
    msg = _format_validation_error("p.yaml", err.value)
    assert "rollout.guardrails" in msg and "'margn'" in msg and "did you mean 'margin'" in msg


def test_power_plan_matches_statsmodels_and_splits_beta_over_metrics() -> None:
    from statsmodels.stats.power import NormalIndPower

    # One 50/50 stage long enough: the days needed follow from the textbook sample size per arm.
    p = RolloutSection(stages=[0.5], days_per_stage=60, daily_conversations=1000, margin=0.02, guardrails=[])
    plan = rollout.power_plan(p)
    assert plan.attrs["K"] == 1 and plan.attrs["power_per_metric"] == pytest.approx(0.8)
    sd = np.sqrt(0.82 * 0.18)
    n_arm = NormalIndPower().solve_power(effect_size=0.02 / sd, alpha=0.05, power=0.8, ratio=1.0, alternative="larger")
    assert plan.loc[0, "days_needed"] == int(np.ceil(n_arm / 500))
    # Closed form: z_(1-alpha) + z_(1-beta) = margin / (sd * sqrt(2 / n))
    from scipy.stats import norm

    z = norm.ppf(0.95) + norm.ppf(0.8)
    assert n_arm == pytest.approx(2 * (z * sd / 0.02) ** 2, rel=1e-6)

    # Four metrics: each is planned at 1 - 0.2/4 = 95% power, which takes longer.
    p4 = p.model_copy(update={"guardrails": RolloutSection().guardrails})
    plan4 = rollout.power_plan(p4)
    assert plan4.attrs["K"] == 4 and plan4.attrs["power_per_metric"] == pytest.approx(0.95)
    sat4 = plan4.set_index("metric").loc["satisfaction", "days_needed"]
    n_arm95 = NormalIndPower().solve_power(
        effect_size=0.02 / sd, alpha=0.05, power=0.95, ratio=1.0, alternative="larger"
    )
    assert sat4 == int(np.ceil(n_arm95 / 500)) > plan.loc[0, "days_needed"]
    assert plan4.attrs["days_needed"] == int(plan4["days_needed"].max())
    assert "fixed-horizon approximation" in plan4.attrs["note"] and "optimistic" in plan4.attrs["note"]
    # latency uses the params standard deviation
    lat = plan4.set_index("metric").loc["latency_s"]
    assert lat["sd"] == p4.latency_sd_s and lat["baseline"] == p4.baseline_latency_s


def test_default_schedule_power_plan() -> None:
    from quantstudy.config.params import load_params, rollout_margin

    P = load_params(Path(__file__).parents[1] / "params" / "default.yaml", check_files=False)
    rp = P.rollout.model_copy(update={"margin": rollout_margin(P)})
    plan = rollout.power_plan(rp)
    a = plan.attrs
    assert a["days_scheduled"] == len(rp.stages) * rp.days_per_stage
    assert a["sufficient"] == (a["days_needed"] is not None and a["days_needed"] <= a["days_scheduled"])
    assert a["sufficient"] and a["warning"] is None
    # the schedule's served shares, with the holdback, set the cumulative counts at the end
    shares = rollout.schedule(rp)["quantized_share"]
    assert plan.loc[0, "n_quantized_at_end"] == round(shares.sum() * rp.daily_conversations)
    assert f"{a['days_needed']} days needed, {a['days_scheduled']} scheduled" in rollout.power_verdict(plan)


def test_underpowered_schedule_is_warned_and_ends_in_hold() -> None:
    p = RolloutSection(daily_conversations=1000, days_per_stage=1, margin=0.02)
    plan = rollout.power_plan(p)
    assert not plan.attrs["sufficient"] and plan.attrs["days_needed"] > plan.attrs["days_scheduled"] == 4
    assert plan.attrs["warning"].startswith("UNDERPOWERED") and "hold" in plan.attrs["warning"]
    assert rollout.power_verdict(plan).startswith("WARNING: UNDERPOWERED")
    res = rollout.analyse(p, 0.0, seed=0)
    looks = res["looks"]
    assert res["decision"] == "hold" and res["stopped_at_look"] == 4 == looks.attrs["planned_looks"]
    assert (looks["decision"].iloc[:-1] == "continue").all() and looks["srm_ok"].all()
    last = looks.iloc[-1]
    assert not last["all_non_inferior"] and last["worse_metrics"] == "" and last["final_stage"]
    assert "schedule ended" in last["reason"]
    assert res["power_plan"].attrs["warning"] == plan.attrs["warning"]


def test_measured_scenario_passes_every_guardrail() -> None:
    res = rollout.analyse(RolloutSection(margin=0.02), 0.0, seed=0)
    looks = res["looks"]
    assert res["decision"] == "cut over"
    first = looks.index[looks["decision"] == "cut over"][0]
    for m in ("satisfaction", "escalated", "resolved", "latency_s"):
        assert looks.loc[first, f"{m}_non_inferior"], m
    assert looks["srm_ok"].all() and (looks["srm_p_value"] >= 0.001).all()
    tidy = rollout.metric_table(looks)
    assert set(tidy["metric"]) == {"satisfaction", "escalated", "resolved", "latency_s"}
    assert len(tidy) == 4 * len(looks)
    lat = tidy[(tidy["metric"] == "latency_s") & (tidy["look"] == looks["look"].iloc[-1])].iloc[0]
    assert lat["unit"] == "s" and lat["margin"] == 0.25 and lat["ni_bound"] < 0.25  # upper bound below +margin


def test_a_guardrail_alone_rolls_back_slower_replies() -> None:
    # Same quality, but the quantized path decodes at half the speed: latency doubles.
    res = rollout.analyse(
        RolloutSection(margin=0.02), 0.0, seed=0, latency={"ratio": 2.0, "source": "test", "note": "test"}
    )
    looks = res["looks"].set_index("look")
    k = res["stopped_at_look"]
    assert res["decision"] == "roll back" and looks.loc[k, "worse_metrics"] == "latency_s"
    assert looks.loc[k, "latency_s_significantly_worse"] and not looks.loc[k, "latency_s_non_inferior"]
    assert looks.loc[k, "latency_s_difference"] > 0  # lower is better: a positive difference is worse
    assert res["logs"].attrs["true_rates"]["quantized"]["latency_s"] == pytest.approx(4.0)


def test_decrease_direction_null_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    real = rollout_stats._ztest_difference

    def shifted(data, alpha, sequential, nim):
        out = real(data, alpha, sequential, nim)
        if nim and (data["preferred_direction"] == "decrease").all():
            out["null_hypothesis"] = -out["null_hypothesis"]  # as if the library flipped its convention
        return out

    monkeypatch.setattr(rollout_stats, "_ztest_difference", shifted)
    logs = rollout.simulate_logs(RolloutSection(margin=0.02, daily_conversations=500), 0.0, 0)
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="NIM convention changed"):
        rollout.sequential_analysis(logs, RolloutSection(margin=0.02, daily_conversations=500))


def test_broken_assignment_is_stopped_by_the_srm_check() -> None:
    from scipy.stats import chisquare

    p = RolloutSection(margin=0.02, scenario="broken_assignment")
    res = rollout.analyse(p, 0.0, seed=0)
    looks = res["looks"]
    k = res["stopped_at_look"]
    assert res["decision"] == "stop (SRM)" and k is not None
    row = looks.set_index("look").loc[k]
    assert row["srm_p_value"] < p.srm_alpha and not row["srm_ok"]
    assert (looks.loc[looks["look"] < k, "srm_p_value"] >= p.srm_alpha).all()
    assert (looks.loc[looks["look"] >= k, "decision"] == "stop (SRM)").all()
    assert "do not trust this look" in row["reason"]
    # Independent recomputation of the p-value at the stopping look.
    logs = res["logs"].assign(day=lambda d: d["timestamp"].dt.normalize())
    per_day = logs.groupby(["day", "arm"]).size().unstack().iloc[:k]
    shares = rollout.schedule(p)["quantized_share"].to_numpy()[:k]
    total = per_day.sum(axis=1).to_numpy()
    exp_q = float((total * shares).sum())
    _, pv = chisquare([per_day["baseline"].sum(), per_day["quantized"].sum()], [total.sum() - exp_q, exp_q])
    assert row["srm_p_value"] == pytest.approx(pv)
    # Same seed without the bug: same baseline arm, SRM passes everywhere.
    ok = rollout.analyse(p.model_copy(update={"scenario": "measured"}), 0.0, seed=0)
    assert ok["looks"]["srm_ok"].all() and ok["decision"] == "cut over"
    lost = 1 - (res["logs"]["arm"] == "quantized").sum() / (ok["logs"]["arm"] == "quantized").sum()
    assert lost == pytest.approx(p.srm_drop, abs=0.02)
    assert (res["logs"]["arm"] == "baseline").sum() == (ok["logs"]["arm"] == "baseline").sum()
    assert rollout.srm_table(res).set_index("look").loc[k, "verdict"].startswith("SRM")


def test_real_shaped_fixture_logs_end_to_end(tmp_path: Path) -> None:
    raw = pd.read_csv(FIXTURE_LOGS)
    assert 2000 <= len(raw) <= 10000 and raw["timestamp"].str.contains(r"[+-]0[12]:00$").all()
    assert set(raw["resolved"]) == {True, False} or set(raw["resolved"].astype(str)) == {"true", "false"}
    res = rollout.analyse(_fixture_params(), 0.0, seed=0)
    looks = res["looks"]
    assert res["simulated"] is False and res["scenario"] is None
    assert res["decision"] == "cut over" and res["stopped_at_look"] == 5
    # Looks are UTC days: count them independently of the library.
    utc_days = pd.to_datetime(raw["timestamp"], utc=True).dt.tz_convert(None).dt.normalize()
    counts = raw.assign(day=utc_days).groupby(["day", "arm"]).size().unstack()
    assert list(looks["n_baseline"]) == list(counts["baseline"].cumsum())
    assert list(looks["n_quantized"]) == list(counts["quantized"].cumsum())
    assert looks["srm_ok"].all()
    for m in ("satisfaction", "escalated", "resolved", "latency_s"):
        assert looks.set_index("look").loc[5, f"{m}_non_inferior"], m
    last = looks.iloc[-1]
    quick = raw[raw["arm"] == "quantized"]["latency_s"].mean() - raw[raw["arm"] == "baseline"]["latency_s"].mean()
    assert last["latency_s_difference"] == pytest.approx(quick)
    assert set(res["daily"]["ci_method"]) == {"normal"}  # CSAT in quarters, not 0/1
    # The same logs as Parquet give the same analysis.
    pq = tmp_path / "logs.parquet"
    raw.to_parquet(pq)
    again = rollout.analyse(_fixture_params(logs=str(pq)), 0.0, seed=0)
    assert again["decision"] == "cut over"
    pd.testing.assert_series_equal(again["looks"]["srm_p_value"], looks["srm_p_value"])


def test_configured_guardrail_missing_from_real_logs(tmp_path: Path) -> None:
    raw = pd.read_csv(FIXTURE_LOGS).drop(columns=["resolved"])
    path = _write(tmp_path, raw)
    with pytest.raises(RolloutError) as err:
        rollout.analyse(_fixture_params(logs=str(path)), 0.0, seed=0)
    msg = str(err.value)
    assert str(path) in msg and "'resolved'" in msg and "rollout.guardrails[1]" in msg
    # Without that guardrail the same logs are analysed.
    kept = [g for g in FIXTURE_GUARDRAILS if g["column"] != "resolved"]
    res = rollout.analyse(_fixture_params(logs=str(path), guardrails=kept), 0.0, seed=0)
    assert "resolved_difference" not in res["looks"].columns and res["decision"] in rollout.DECISIONS


@pytest.mark.parametrize(
    "content, name, words",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10", "logs.csv", "not a table"),
        (b"this is not parquet", "logs.parquet", "not a table"),
        (b"just some notes\nabout the rollout\n", "logs.csv", "missing column"),
    ],
)
def test_a_file_that_is_not_a_table(tmp_path: Path, content: bytes, name: str, words: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(RolloutError) as err:
        rollout_logs.read_logs(path)
    msg = str(err.value)
    assert str(path) in msg and words in msg and "\n" not in msg


def test_latency_ratio_from_step_04(tmp_path: Path) -> None:
    import json

    lat = rollout.latency_from_benchmark(FIXTURE_BENCH)
    m = json.loads((FIXTURE_BENCH / "metrics.json").read_text())
    assert lat["checkpoint"] == Path(m["demo"]["env"]["checkpoint"]).name == "awq-w4-g128-indomain-d0"
    rows = {
        r["path"]: r["decode_tok_s_median"]
        for r in m["demo"]["timings"]
        if r["batch"] == 1 and r["scope"] == "full_model"
    }
    assert lat["ratio"] == pytest.approx(rows["baseline"] / rows["fast4"]) and lat["model"] == "demo"
    assert "fast4" in lat["note"] and "04_benchmark/metrics.json" in lat["source"]
    missing = rollout.latency_from_benchmark(tmp_path / "nowhere")
    assert missing["ratio"] == 1.0 and "not found" in missing["note"]
    (tmp_path / "b").mkdir()
    for section in ("demo", "production"):  # a valid step-04 file without any fast4 timing
        m[section]["timings"] = [r for r in m[section]["timings"] if r["path"] != "fast4"]
    (tmp_path / "b" / "metrics.json").write_text(json.dumps(m))
    none = rollout.latency_from_benchmark(tmp_path / "b")
    assert none["ratio"] == 1.0 and "no batch-1 decode speed" in none["note"]
    del m["demo"]["timings"]  # a file that breaks step 04's contract is an error, not a silent 1.0
    (tmp_path / "b" / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(contracts.ContractError, match=r"demo\.timings`: required field missing"):
        rollout.latency_from_benchmark(tmp_path / "b")
    assert rollout.latency_from_benchmark(None)["ratio"] == 1.0
    # The simulator applies it to the quantized arm only.
    p = RolloutSection(margin=0.02, daily_conversations=2000)
    slow = rollout.simulate_logs(p, 0.0, 0, latency_ratio=2.0)
    means = slow.groupby("arm")["latency_s"].mean()
    assert means["quantized"] / means["baseline"] == pytest.approx(2.0, rel=0.05)
    assert means["baseline"] == pytest.approx(p.baseline_latency_s, rel=0.05)


def test_run_step_and_metrics_record_every_scenario(tmp_path: Path) -> None:
    import json

    from quantstudy.config.params import StudyParams

    folder = _eval_dir(tmp_path, {"awq-w4-g128-generic-d0": ("generic", 0, True, 1.0, 0.0)})
    P = StudyParams(rollout=RolloutSection(margin=0.02))
    step = rollout.run_step(P, folder, FIXTURE_BENCH)
    assert {"main", "worse", "broken_assignment"} <= set(step)
    assert step["main"]["logs"].attrs["latency_ratio"] == pytest.approx(step["latency"]["ratio"]) != 1.0
    assert step["worse"]["decision"] == "roll back"
    assert step["broken_assignment"]["decision"] == "stop (SRM)"
    rollout.write_metrics(tmp_path / "05", step, 1.0)
    m = json.loads((tmp_path / "05" / "metrics.json").read_text())
    assert m["power_plan"]["days_needed"] == step["power_plan"].attrs["days_needed"]
    assert m["latency"]["ratio"] == pytest.approx(step["latency"]["ratio"])
    for key, res in (
        ("rollout", step["main"]),
        ("worse_scenario", step["worse"]),
        ("broken_assignment_scenario", step["broken_assignment"]),
    ):
        s = m[key]
        assert s["decision"] == res["decision"]
        assert [g["metric"] for g in s["guardrails"]] == ["satisfaction", "escalated", "resolved", "latency_s"]
        assert [x["p_value"] for x in s["srm"]] == pytest.approx(list(res["looks"]["srm_p_value"]))
        assert s["power_plan"]["K"] == 4 and len(s["power_plan"]["metrics"]) == 4
    assert m["broken_assignment_scenario"]["srm_stopped"] is True
    # Real logs: no simulated scenarios.
    P2 = StudyParams(rollout=_fixture_params())
    real = rollout.run_step(P2, folder, None)
    assert set(real) & {"worse", "broken_assignment"} == set() and real["main"]["decision"] == "cut over"


def test_latency_note_names_the_timed_checkpoint_when_it_is_not_the_candidate(tmp_path: Path) -> None:
    """Step 04 times the checkpoint a server would run; when step 05's candidate is another one
    (another draw, or llm-compressor's), the latency note says which was timed."""
    import json

    from quantstudy.config.params import StudyParams

    folder = _eval_dir(tmp_path, {"awq-w4-g128-generic-d0": ("generic", 0, True, 1.0, 0.0)})
    P = StudyParams(rollout=RolloutSection(margin=0.02))
    m = json.loads((FIXTURE_BENCH / "metrics.json").read_text())
    for timed, other in (("awq-w4-g128-indomain-d1", True), ("awq-w4-g128-generic-d0", False)):
        m["demo"]["env"]["checkpoint"] = f"outputs/x/02_quantize/checkpoints/{timed}"
        bench = tmp_path / f"bench-{timed}"
        bench.mkdir()
        (bench / "metrics.json").write_text(json.dumps(m))
        lat = rollout.run_step(P, folder, bench)["latency"]
        assert lat["checkpoint"] == timed and f"demo model ({timed})" in lat["source"]
        assert ("not on the candidate awq-w4-g128-generic-d0" in lat["note"]) is other


def test_guardrail_and_power_figures_are_labelled() -> None:
    res = rollout.analyse(RolloutSection(margin=0.02, scenario="broken_assignment"), 0.0, 0)
    fig = rollout.plot_guardrails(res["looks"], simulated=True)
    text = _texts(fig) + " | " + fig.get_suptitle()
    assert "SIMULATED" in text and "SRM at look" in text and "stop (SRM)" in text
    assert len(fig.axes) == 4 and all(ax.get_legend() is not None for ax in fig.axes) and fig.legends
    assert "seconds" in _texts(fig) and "percentage points" in _texts(fig)
    fig.savefig(io.BytesIO(), format="png")
    plan = rollout.power_plan(RolloutSection(margin=0.02, daily_conversations=500))
    fig = rollout.plot_power(plan)
    text = _texts(fig)
    assert "UNDERPOWERED" in text and "fixed-horizon" in text and "power" in fig.axes[0].get_ylabel()
    assert fig.axes[0].get_legend() is not None
    fig.savefig(io.BytesIO(), format="png")


def test_real_logs_mid_rollout_continue_rather_than_hold(tmp_path: Path) -> None:
    raw = pd.read_csv(FIXTURE_LOGS)
    first_days = pd.to_datetime(raw["timestamp"], utc=True).dt.tz_convert(None).dt.normalize()
    cut = raw[first_days < first_days.min() + pd.Timedelta(days=3)]  # 3 of the 6 planned days logged so far
    path = _write(tmp_path, cut)
    res = rollout.analyse(_fixture_params(logs=str(path)), 0.0, seed=0)
    assert len(res["looks"]) == 3 and res["looks"].attrs["planned_looks"] == 6
    assert res["decision"] == "continue" and res["stopped_at_look"] is None


def test_report_rollout_section_shows_guardrails_srm_and_power_plan(tmp_path: Path) -> None:
    import json

    from quantstudy.report import answer, figures, outcome

    folder = _eval_dir(tmp_path, {"awq-w4-g128-generic-d0": ("generic", 0, True, 1.0, 0.0)})
    P = _study_params(RolloutSection(margin=0.02, daily_conversations=1000, days_per_stage=1))
    step = rollout.run_step(P, folder, None)
    rollout.write_metrics(tmp_path / "05", step, 1.0)
    M = {"05_rollout_analysis": json.loads((tmp_path / "05" / "metrics.json").read_text()), "manifest": {}}
    text, cls = answer.answer_rollout(M)
    main = M["05_rollout_analysis"]["rollout"]
    assert main["decision"].upper() in text and "UNDERPOWERED" in text and "power plan" in text
    assert ("HOLD" in text) == (main["decision"] == "hold")
    cells = outcome.verdict_cells(M)
    md = cells[0][1]
    assert "Power plan before launch" in md and "UNDERPOWERED" in md
    assert "Sample-ratio check per look" in md and "latency_s" in md and "escalated" in md
    assert "broken_assignment" in md
    sources = " ".join(src for _, src in cells[1:])
    for name in ("guardrails", "power_plan", "broken_assignment_scenario"):
        assert f'CAPTIONS["{name}"]' in sources and figures.CAPTIONS[name].startswith("Look ")
    for fig in (
        figures.fig_guardrails(M),
        figures.fig_power_plan(M),
        figures.fig_guardrails(M, "broken_assignment_scenario"),
    ):
        assert fig is not None and fig.axes[0].get_legend() is not None
        fig.savefig(io.BytesIO(), format="png")
    # A run recorded before guardrails still renders its rollout section.
    old = {
        "05_rollout_analysis": {
            "rollout": {k: v for k, v in main.items() if k not in ("guardrails", "srm", "power_plan")}
        },
        "manifest": {},
    }
    assert figures.fig_guardrails(old) is None and figures.fig_power_plan(old) is None
    assert "not recorded" in outcome.verdict_cells(old)[0][1]


def _study_params(rp: RolloutSection):
    from quantstudy.config.params import StudyParams

    return StudyParams(rollout=rp)


def test_missing_guardrail_column_is_caught_by_validation(write_params, project) -> None:
    """Before any step runs: real logs without a configured guardrail's column fail `validate`."""
    from quantstudy.config.params import ParamsError, load_params

    logs = project / "logs.csv"
    pd.read_csv(FIXTURE_LOGS).drop(columns=["escalated"]).to_csv(logs, index=False)
    path = write_params(**{"rollout.logs": str(logs)})
    with pytest.raises(ParamsError, match=r"rollout.logs: .*column 'escalated' is missing.*rollout.guardrails\[0\]"):
        load_params(path)


# --------------------------------------------------------------------------- layering (issue 14)
def _study_imports(path: Path) -> set[str]:
    """quantstudy modules a file imports, lazy imports included."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("quantstudy"):
            out |= {node.module} if node.module != "quantstudy" else {f"quantstudy.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("quantstudy")}
    return out


def test_log_reading_is_data_layer_and_config_does_not_import_the_step() -> None:
    lib = Path(__file__).resolve().parents[1] / "lib" / "quantstudy"
    assert _study_imports(lib / "rollout_logs.py") == {"quantstudy.paths"}
    config = {m for p in (lib / "config").glob("*.py") for m in _study_imports(p)}
    assert not [m for m in config if m.startswith("quantstudy.steps.rollout")], "config must not import step 05"


def test_candidate_rules_are_the_ones_params_accept() -> None:
    import typing

    accepted = typing.get_args(RolloutSection.model_fields["candidate_rule"].annotation)
    assert set(accepted) == set(rollout.CANDIDATE_RULES)
