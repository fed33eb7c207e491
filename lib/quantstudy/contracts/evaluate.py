"""Step 03 (evaluate): ``03_evaluate/metrics.json``.

Read by step 05 (``summary``, ``budget_declared``, ``budget``, ``verdict_by_checkpoint``: the
candidate to roll out) and the report (budget, verdicts, effects, matrix, damage, flips,
reference tasks, lm-eval, the rollback check)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from quantstudy.contracts._base import CI, Record, StepMetrics, Target


class BudgetLine(Record):
    """One line of the quality budget as declared in params (echoed unchanged)."""

    metric: str
    max_drop: float
    unit: str


class BudgetResult(Record):
    """One checkpoint judged against one budget line."""

    checkpoint: str
    metric: str
    limit: float
    unit: str
    degradation: float
    worst_case: float
    verdict: Literal["pass", "fail", "inconclusive"]
    ci: CI


class SummaryRow(Record):
    """One model's scores; the metric columns (``policy_closed_book_acc``, ``ppl_generic``, ...)
    depend on the tasks evaluated and are kept as extra fields."""

    name: str  # "baseline" or a checkpoint name
    method: str
    source: str | None  # calibration source ("" or None without calibration)
    draw: int | None
    bits: int | None
    lm_head: str | None = None  # the output head scored: "float" (the model's own), or a served one (serve.lm_head)


class Effect(Record):
    """A calibration-source effect: source ``a`` minus source ``b`` on one metric."""

    metric: str
    unit: str
    a: str
    b: str
    point: float
    lo: float
    hi: float
    draws: list[int]  # draws of a, draws of b
    within_noise: bool
    kind: str = "calibration source"  # | implementation (llm-compressor vs AutoAWQ) | loss mask
    paired_draws: bool = False  # draw i of a and b share a calibration set, resampled together


class CategoryDamage(Record):
    calibration: str
    checkpoint: str
    category: str
    delta_nll_mnats: float | None


class RollbackCheck(Record):
    checksums_verified: bool
    identical: bool  # the archived baseline reproduces the baseline's metrics exactly
    archive: str | None = None


class Flip(Record):
    """Answers that changed, per checkpoint and task (column names as the notebook shows them)."""

    checkpoint: str
    task: str
    accuracy_change_pts: float | None = Field(validation_alias="accuracy change (pts)")
    flip_rate_pct: float | None = Field(validation_alias="flip rate (%)")
    ci_low: float | None = Field(validation_alias="CI low")
    ci_high: float | None = Field(validation_alias="CI high")
    right_to_wrong: int = Field(validation_alias="right->wrong")
    wrong_to_right: int = Field(validation_alias="wrong->right")
    items: int


class ReferenceTask(Record):
    """A task scored on the baseline alone, against chance."""

    items: int
    baseline_accuracy_pct: float | None = Field(validation_alias="baseline accuracy (%)")
    chance_pct: float | None = Field(validation_alias="chance (%)")
    above_chance: str | None = Field(validation_alias="above chance (pts, 95% CI)")


class LmEvalTask(Record):
    """lm-eval-harness next to the study's scorer, for one model and task."""

    acc: float | None
    study_acc: float | None
    agree_items: int | None
    n_items: int | None
    max_abs_ll_diff: float | None


class EvaluateMetrics(StepMetrics):
    budget_declared: list[BudgetLine]
    budget: list[BudgetResult]
    verdict_by_checkpoint: dict[str, Literal["pass", "fail"]]
    summary: list[SummaryRow]
    calibration_effects: list[Effect]
    cross_domain_matrix: dict[str, dict[str, float | None]]  # calibration source -> metric label -> change
    category_damage: list[CategoryDamage]
    rollback_check: RollbackCheck
    # The four below are absent in runs recorded before flips and reference tasks (the report omits them)
    flips: list[Flip] | None = None
    reference_tasks: dict[str, ReferenceTask] | None = None
    eval_dtype: str | None = None
    chat_template: bool | None = None
    chance_levels: dict[str, float]
    n_items: dict[str, int]
    n_tokens: dict[str, int]
    window: int
    stride: int
    targets: dict[str, Target]
    wall_s: float
    lm_eval: dict[str, dict[str, LmEvalTask]] | None = None  # only when evaluate.lm_eval_tasks is set

    @model_validator(mode="after")
    def _has_baseline(self) -> "EvaluateMetrics":
        if not any(r.name == "baseline" for r in self.summary):
            raise ValueError("summary has no 'baseline' row (step 05 measures every change against it)")
        return self
