"""Step 05 (rollout analysis): ``05_rollout_analysis/metrics.json``. Read by the report."""

from __future__ import annotations

from typing import Any, Literal

from quantstudy.contracts._base import Record, StepMetrics

# rollout.DECISIONS (a test keeps the two equal)
Decision = Literal["continue", "cut over", "hold", "roll back", "stop (SRM)"]


class RankedCheckpoint(Record):
    """A checkpoint as the candidate rule ranked it."""

    checkpoint: str
    passed_offline_budget: bool
    metric: str | None = None
    unit: str | None = None
    limit: float | None = None
    worst_case: float | None = None
    point: float | None = None
    calibration: str | None = None
    draw: int | None = None


class Candidate(RankedCheckpoint):
    """The checkpoint rolled out. ``rule``, ``rule_text`` and ``runner_up`` are absent in runs
    recorded before ``rollout.candidate_rule`` (the report says so)."""

    quality_change_points: float
    tasks: list[str]
    rule: str | None = None
    rule_text: str | None = None
    runner_up: RankedCheckpoint | None = None


class Conversations(Record):
    baseline: int
    quantized: int


class Look(Record):
    look: int
    decision: str


class Guardrail(Record):
    """Satisfaction or a guardrail metric at the deciding look."""

    metric: str
    unit: str
    higher_is_better: bool
    margin: float
    deciding_look: int
    final_difference: float | None
    final_ni_bound: float | None
    final_non_inferior: bool
    final_significantly_worse: bool
    final_mean_baseline: float | None
    final_mean_quantized: float | None


class SrmLook(Record):
    look: int
    p_value: float
    ok: bool
    observed_share: float
    planned_share: float


class PowerMetric(Record):
    metric: str
    unit: str
    margin: float
    baseline: float | None
    sd: float | None
    power_target: float | None
    days_needed: int | None  # None: beyond the horizon
    days_scheduled: int
    power_at_schedule_end: float | None


class PowerPlan(Record):
    """The pre-launch power plan (``curve`` only in the top-level copy)."""

    K: int
    power: float
    power_per_metric: float
    alpha_one_sided: float
    daily_conversations: float
    days_needed: int | None
    days_scheduled: int
    sufficient: bool
    note: str
    warning: str | None
    metrics: list[PowerMetric]
    curve: list[dict[str, Any]] = []


class Latency(Record):
    ratio: float
    source: str | None
    note: str


class RolloutSummary(Record):
    """One rollout analysis (the real scenario, or a simulated check). ``guardrails``, ``srm``,
    ``latency`` and ``power_plan`` are absent in runs recorded before them (the report omits them)."""

    decision: Decision
    stopped_at_look: int | None
    simulated: bool
    scenario: str | None
    method: str
    note: str | None
    margin: float
    alpha: float
    n_looks: int
    final_difference: float | None
    final_ni_lower: float | None
    conversations: Conversations
    looks: list[Look]
    planned_looks: int | None = None
    guardrails: list[Guardrail] | None = None
    srm_alpha: float | None = None
    srm: list[SrmLook] | None = None
    srm_stopped: bool | None = None
    latency: Latency | None = None
    power_plan: PowerPlan | None = None


class RolloutMetrics(StepMetrics):
    candidate: Candidate
    rollout: RolloutSummary
    power_plan: PowerPlan | None = None  # absent in runs recorded before the power plan
    latency: Latency | None = None  # likewise
    stages: list[float]
    wall_s: float
    worse_scenario: RolloutSummary | None = None  # simulated runs only
    broken_assignment_scenario: RolloutSummary | None = None  # simulated runs only
