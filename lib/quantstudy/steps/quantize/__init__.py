"""Step 02, quantization: archive the baseline, AutoAWQ per calibration set, a round-to-nearest
reference, and a perplexity sanity check of every checkpoint.

``checks`` reads the model's config and refuses what AutoAWQ cannot quantize, ``plan`` names
the checkpoints and plans them, ``search`` runs the quantizers, ``memory`` measures their peak
memory, ``archive`` writes the baseline and the checkpoint folders, ``sanity`` is the sanity
check, ``views`` draws the tables and figures, ``run`` drives the plan and writes metrics.json.
The names below are what notebook 02, the report, the benchmark and the demo call; loading and
verifying checkpoints (the AWQ format) lives in ``quantstudy.awqformat``.
"""

from quantstudy.awqformat import checkpoint_kind, load_checkpoint, verify_archive
from quantstudy.steps.quantize.archive import archive_baseline, follow_umask, rollback_line
from quantstudy.steps.quantize.checks import QuantizeError, check_model, read_config
from quantstudy.steps.quantize.memory import PeakRSS
from quantstudy.steps.quantize.plan import SEARCH_VARIANTS, calibration_sets, checkpoint_name, plan_checkpoints
from quantstudy.steps.quantize.run import run_plan, write_metrics
from quantstudy.steps.quantize.sanity import sanity_perplexities, sanity_texts
from quantstudy.steps.quantize.search import (
    QuantRequest,
    activation_outliers,
    quantize_awq,
    quantize_rtn,
    search_precision,
)
from quantstudy.steps.quantize.views import plan_table, plot_search_settings, records_table, sanity_table

__all__ = [
    "checkpoint_kind",
    "load_checkpoint",
    "verify_archive",
    "archive_baseline",
    "follow_umask",
    "rollback_line",
    "QuantizeError",
    "check_model",
    "read_config",
    "PeakRSS",
    "SEARCH_VARIANTS",
    "calibration_sets",
    "checkpoint_name",
    "plan_checkpoints",
    "run_plan",
    "write_metrics",
    "sanity_perplexities",
    "sanity_texts",
    "QuantRequest",
    "activation_outliers",
    "quantize_awq",
    "quantize_rtn",
    "search_precision",
    "plan_table",
    "plot_search_settings",
    "records_table",
    "sanity_table",
]
