"""Validate, write and read a step's metrics.json against its contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from quantstudy.contracts._base import StepMetrics
from quantstudy.contracts.benchmark import BenchmarkMetrics
from quantstudy.contracts.calibration import CalibrationMetrics
from quantstudy.contracts.evaluate import EvaluateMetrics
from quantstudy.contracts.quantize import QuantizeMetrics
from quantstudy.contracts.rollout import RolloutMetrics
from quantstudy.paths import resolve

FILENAME = "metrics.json"
STEPS: dict[str, type[StepMetrics]] = {  # step name -> the model of its metrics.json, in pipeline order
    "01_calibration": CalibrationMetrics,
    "02_quantize": QuantizeMetrics,
    "03_evaluate": EvaluateMetrics,
    "04_benchmark": BenchmarkMetrics,
    "05_rollout_analysis": RolloutMetrics,
}
MAX_PROBLEMS = 12


class ContractError(ValueError):
    """A metrics.json does not match its step's contract (or cannot be read as JSON)."""


class MetricsMissingError(ContractError, FileNotFoundError):
    """A step's metrics.json does not exist: the step has not run."""


def model_for(step: str) -> type[StepMetrics]:
    try:
        return STEPS[step]
    except KeyError:
        raise ContractError(f"no contract for step {step!r}; steps: {', '.join(STEPS)}") from None


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def problems(exc: ValidationError) -> list[str]:
    """One line per problem, naming the field; a field missing next to an unexpected one at the
    same level is reported as a probable rename."""
    errors = exc.errors()
    missing = {e["loc"][:-1]: e["loc"][-1] for e in errors if e["type"] == "missing" and e["loc"]}
    lines = []
    for e in errors:
        where, kind, loc = _where(e["loc"]), e["type"], e["loc"]
        was = missing.get(loc[:-1]) if loc and kind in ("extra_forbidden", "model_type") else None
        hint = f" (renamed from `{was}`?)" if was is not None else ""
        if kind == "missing":
            lines.append(f"`{where}`: required field missing")
        elif kind == "extra_forbidden":
            lines.append(f"`{where}`: unexpected field, not in the contract{hint}")
        elif kind == "value_error":  # a check across fields (a model validator)
            lines.append(f"`{where}`: {e['msg'].removeprefix('Value error, ')}")
        else:
            got = json.dumps(e.get("input"), default=str)
            lines.append(f"`{where}`: {e['msg']} (got {got[:80]}{'...' if len(got) > 80 else ''}){hint}")
    more = len(lines) - MAX_PROBLEMS
    return lines[:MAX_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])


def validate(step: str, data: Any, source: str | Path, writing: bool = False) -> StepMetrics:
    """The step's model of ``data`` (the parsed metrics.json from ``source``), or ContractError."""
    model = model_for(step)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ContractError(_message(step, model, source, problems(exc), writing)) from exc


def _message(step: str, model: type[BaseModel], source: str | Path, lines: list[str], writing: bool) -> str:
    contract = f"{model.__module__}.{model.__name__}"
    if writing:
        head = f"step {step} would write a {source} that breaks its contract ({contract}):"
        fix = (
            f"Fix: the step's writer and {model.__module__} disagree; change them together (and the "
            "readers of the field, step by step and in the report)."
        )
    else:
        head = f"{source} does not match the contract of step {step} ({contract}):"
        fix = (
            f"Fix: re-run step {step} (quantstudy run PARAMS --from {step}) so the current code writes it; "
            "a file from an older version of the code, or edited by hand, cannot be read as it is."
        )
    return "\n".join([head, *(f"  - {line}" for line in lines), fix])


def write(
    step: str, folder: str | Path, metrics: dict[str, Any], default: Callable[[Any], Any] | None = None
) -> dict[str, Any]:
    """Validate ``metrics`` as it will be written, then write ``folder``/metrics.json: the same
    text as ``json.dumps(metrics, indent=2, default=default)``. Returns ``metrics`` unchanged."""
    path = Path(folder) / FILENAME
    text = json.dumps(metrics, indent=2, default=default)
    validate(step, json.loads(text), path, writing=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return metrics


def read(step: str, folder: str | Path) -> dict[str, Any]:
    """``folder``/metrics.json of ``step`` (relative folders are taken from the project root),
    validated against the step's contract; the parsed JSON as written, key order kept."""
    model_for(step)
    path = resolve(folder) / FILENAME
    if not path.is_file():
        raise MetricsMissingError(f"{path} not found: run step {step} first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ContractError(
            f"{path} cannot be read as JSON ({exc}); re-run step {step} (quantstudy run PARAMS --from {step})"
        ) from exc
    validate(step, data, path)
    return data
