"""Step 03, evaluation against the exact baseline: perplexity, KL divergence and top-1
agreement on token streams, task accuracy by log-likelihood ranking, per-token-category
damage, and the quality-budget verdict with paired bootstrap confidence intervals.

``models`` loads the data, checkpoints and baseline; ``run`` drives the step and writes its
metrics; ``views`` holds its tables and plots; ``lmeval`` runs lm-evaluation-harness next to
the study's scorer. The measurement itself is :mod:`quantstudy.metrics.scoring` and
:mod:`quantstudy.metrics.stats`, shared with step 02's sanity check.

This package re-exports what notebooks/03_evaluate.ipynb, the report and the model card call.
"""

from quantstudy.metrics.scoring import build_stream, evaluate_model, head_logits, score_items, score_stream
from quantstudy.metrics.stats import budget_verdict, category_damage, paired_bootstrap, perplexity, source_effect
from quantstudy.steps.evaluate.models import checkpoint_list, load_eval_data, weight_fingerprint
from quantstudy.steps.evaluate.run import (
    budget_table,
    calibration_effects,
    cross_domain_matrix,
    rollback_check,
    run_evaluation,
    run_lm_eval,
    write_metrics,
)
from quantstudy.steps.evaluate.views import (
    effects_table,
    flip_table,
    plot_budget,
    plot_category_damage,
    plot_matrix,
    reference_table,
    summary_table,
)

__all__ = [
    # the step (notebook 03)
    "load_eval_data",
    "run_evaluation",
    "rollback_check",
    "budget_table",
    "calibration_effects",
    "cross_domain_matrix",
    "run_lm_eval",
    "write_metrics",
    "checkpoint_list",
    "weight_fingerprint",
    # its tables and plots (notebook 03, the report)
    "summary_table",
    "reference_table",
    "flip_table",
    "effects_table",
    "plot_matrix",
    "plot_budget",
    "plot_category_damage",
    # the measurement it runs (the model card, tests)
    "build_stream",
    "score_stream",
    "score_items",
    "head_logits",
    "evaluate_model",
    "perplexity",
    "paired_bootstrap",
    "budget_verdict",
    "category_damage",
    "source_effect",
]
