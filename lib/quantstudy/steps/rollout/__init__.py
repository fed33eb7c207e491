"""Step 05, rollout analysis: a staged rollout of the 4-bit model behind a feature flag,
analysed the way a trusted experimentation platform would.

Modules, lowest first (each imports only the ones above it)
-----------------------------------------------------------
* :mod:`quantstudy.rollout_logs` (data layer, outside the step): the log schema,
  :func:`~quantstudy.rollout_logs.read_logs` for real logs (CSV or Parquet) and their validation.
* :mod:`.design`: the schedule with its baseline holdback, the metrics tested and their margins.
* :mod:`.simulate`: :func:`simulate_logs`, seeded, clearly marked *simulated* logs in the same
  schema, and :func:`latency_from_benchmark`, the quantized arm's latency ratio from step 04.
* :mod:`.stats`: :func:`daily_summary`, the non-inferiority and harm tests per look
  (spotify-confidence, group-sequential), :func:`srm_check` and :func:`power_plan`.
* :mod:`.decide`: :func:`sequential_analysis`, every look turned into continue / cut over /
  roll back / hold / stop (SRM) (:data:`DECISIONS`).
* :mod:`.candidate`: :func:`candidate_from_evaluation`, the checkpoint to ship (:data:`CANDIDATE_RULES`).
* :mod:`.views`: the tables, :func:`power_verdict`, and :func:`plot_daily`,
  :func:`plot_sequential`, :func:`plot_guardrails` and :func:`plot_power`.
* :mod:`.run`: :func:`analyse` strings it all together from a
  :class:`~quantstudy.config.params.RolloutSection`; :func:`run_step` and :func:`write_metrics`.

This package re-exports what the notebook, the report and the tests call, so
``from quantstudy.steps import rollout`` is all they need.
"""

from quantstudy.steps.rollout.candidate import CALIBRATION_COST, CANDIDATE_RULES, candidate_from_evaluation
from quantstudy.steps.rollout.decide import DECISIONS, sequential_analysis
from quantstudy.steps.rollout.design import HOLDBACK, PRIMARY, metric_specs, schedule
from quantstudy.steps.rollout.run import analyse, power_summary, run_step, write_metrics
from quantstudy.steps.rollout.simulate import SCENARIOS, latency_from_benchmark, simulate_logs
from quantstudy.steps.rollout.stats import cumulative_looks, daily_summary, power_curve, power_plan, srm_check
from quantstudy.steps.rollout.views import (
    decision_table,
    metric_table,
    plot_daily,
    plot_guardrails,
    plot_power,
    plot_sequential,
    power_verdict,
    srm_table,
)

__all__ = [
    "CALIBRATION_COST",
    "CANDIDATE_RULES",
    "DECISIONS",
    "HOLDBACK",
    "PRIMARY",
    "SCENARIOS",
    "analyse",
    "candidate_from_evaluation",
    "cumulative_looks",
    "daily_summary",
    "decision_table",
    "latency_from_benchmark",
    "metric_specs",
    "metric_table",
    "plot_daily",
    "plot_guardrails",
    "plot_power",
    "plot_sequential",
    "power_curve",
    "power_plan",
    "power_summary",
    "power_verdict",
    "run_step",
    "schedule",
    "sequential_analysis",
    "simulate_logs",
    "srm_check",
    "srm_table",
    "write_metrics",
]
