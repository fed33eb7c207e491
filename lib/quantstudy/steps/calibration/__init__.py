"""Step 01, calibration: scrub personal data, format conversations, draw equal-token sets per
source and seed, split over-long samples (AutoAWQ would silently drop them), save as Arrow.

``pools`` loads the text pools, ``scrub`` holds the scrubber and ``pii_eval`` scores it on an
independent test set, ``sets`` builds the sets and their statistics, ``views`` draws the
tables and figures, ``run`` writes metrics.json. The names below are what notebook 01, the
later steps and the demo call.
"""

from quantstudy.steps.calibration.pools import domain_lexicon_for, load_lexicon, load_pools, load_tokenizer
from quantstudy.steps.calibration.run import write_metrics
from quantstudy.steps.calibration.scrub import Scrubber, scrub_conversations, scrubber_for
from quantstudy.steps.calibration.sets import (
    SOURCES,
    CalibrationError,
    autoawq_kept_tokens,
    build_sets,
    draw_set,
    load_set,
    plan_sets,
    save_set,
    set_name,
    set_statistics,
    split_long,
)
from quantstudy.steps.calibration.views import pii_table, plot_statistics, scrub_table, sets_table

__all__ = [
    "domain_lexicon_for",
    "load_lexicon",
    "load_pools",
    "load_tokenizer",
    "write_metrics",
    "Scrubber",
    "scrub_conversations",
    "scrubber_for",
    "SOURCES",
    "CalibrationError",
    "autoawq_kept_tokens",
    "build_sets",
    "draw_set",
    "load_set",
    "plan_sets",
    "save_set",
    "set_name",
    "set_statistics",
    "split_long",
    "pii_table",
    "plot_statistics",
    "scrub_table",
    "sets_table",
]
