"""Step 01 (calibration): ``01_calibration/metrics.json``.

Read by step 02 (``sets``, and ``wall_s`` for the 01+02 wall-time target) and the report
(sets, scrub, pools, coverage, overlap, the independent PII check)."""

from __future__ import annotations

from typing import Any

from quantstudy.contracts._base import Record, StepMetrics


class Scrub(Record):
    """PII scrub of the in-domain calibration pool."""

    replaced_by_type: dict[str, int]
    planted_by_type: dict[str, int] | None = None  # absent when the data carries no planted-PII record
    recall_by_type: dict[str, float | None] | None = None  # likewise
    survivors: list[dict[str, Any]]
    n_survivors: int
    scored: bool


class PiiTypeRecall(Record):
    recall: float | None
    instances: int


class PiiSpan(Record):
    type: str
    masked: str


class PiiFalsePositives(Record):
    spans: int


class PiiCheck(Record):
    """Scrubber recall on one hand-labelled set (development or holdout)."""

    by_type: dict[str, PiiTypeRecall]
    survivors: list[PiiSpan]
    false_positives: PiiFalsePositives


class Pools(Record):
    generic_texts: int
    in_domain_texts: int
    in_domain_rendered_with_chat_template: bool | None = None


class CalibrationSet(Record):
    """One calibration set as step 01 saved it under ``sets/<name>``."""

    name: str
    source: str  # generic | in_domain | mixed
    draw: int
    n_samples: int
    n_texts: int
    tokens: int
    texts_split: int
    kept_by_autoawq: int | None
    seed: int | None = None
    sweep: bool = False
    max_seq_len: int | None = None
    long_samples: str | None = None


class TermCoverage(Record):
    share: float
    present: int | None = None
    of: int | None = None
    mentions: int | None = None


class CalibrationMetrics(StepMetrics):
    scrub: Scrub
    # None without scrubbing; absent in runs recorded before the independent check (the report skips it)
    pii_independent: dict[str, PiiCheck] | None = None
    pools: Pools
    sets: list[CalibrationSet]
    coverage: dict[str, dict[str, TermCoverage]]  # set name -> term category -> coverage
    overlap_3gram: dict[str, float]  # set name -> share of its word 3-grams found in eval text
    length_median: dict[str, float]  # set name -> median tokens per source text
    wall_s: float
