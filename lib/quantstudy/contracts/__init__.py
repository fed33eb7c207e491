"""Typed contracts between the steps: a pydantic model of each step's ``metrics.json``.

A step writes its metrics.json with :func:`write` (validated before anything is written); the
next steps and the report read another step's with :func:`read`, so a missing, renamed or
mistyped field fails loudly, naming the file, the field and the fix, instead of rendering as
"n/a". One module per step declares the top-level keys the step writes (a key not declared is
refused, so a renamed optional key fails too) and the nested records readers use (records may
carry more fields than those declared).

This package depends only on pydantic, the standard library and :mod:`quantstudy.paths`; the
steps import it, never the other way round (tests/test_package_layout.py checks it).
"""

from quantstudy.contracts._base import CI, Record, StepMetrics, Target
from quantstudy.contracts._io import (
    FILENAME,
    STEPS,
    ContractError,
    MetricsMissingError,
    model_for,
    problems,
    read,
    validate,
    write,
)
from quantstudy.contracts.benchmark import BenchmarkMetrics
from quantstudy.contracts.calibration import CalibrationMetrics
from quantstudy.contracts.evaluate import EvaluateMetrics
from quantstudy.contracts.quantize import QuantizeMetrics
from quantstudy.contracts.rollout import RolloutMetrics

__all__ = [
    "CI",
    "FILENAME",
    "STEPS",
    "BenchmarkMetrics",
    "CalibrationMetrics",
    "ContractError",
    "EvaluateMetrics",
    "MetricsMissingError",
    "QuantizeMetrics",
    "Record",
    "RolloutMetrics",
    "StepMetrics",
    "Target",
    "model_for",
    "problems",
    "read",
    "validate",
    "write",
]
