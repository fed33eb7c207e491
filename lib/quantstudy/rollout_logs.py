"""Rollout logs (step 05's input): the schema, reading CSV/Parquet, and validating a log frame.

A data-layer module: it reads files and checks their contents, and knows nothing of the params
models or of the steps, so params validation (before any step runs) and step 05 both use it.

Log schema
----------
``timestamp``        parseable date-time; ISO 8601 with a time zone (``2024-03-04T09:15:00+01:00``)
                     is converted to UTC, a naive one is taken as UTC. One look per UTC calendar day.
``arm``              exactly ``"baseline"`` or ``"quantized"``
``conversation_id``  string
``satisfaction``     number in [0, 1] (a 0/1 thumbs-up or a CSAT scaled to [0, 1]); higher is better
``escalated``        0/1 or true/false: handed over to a human agent; lower is better
``resolved``         0/1 or true/false: resolved without a follow-up contact; higher is better
``latency_s``        number >= 0: the conversation's mean reply latency in seconds; lower is better

The last three are guardrails (:data:`GUARDRAIL_COLUMNS`): optional in the schema (checked when
present), required when ``rollout.guardrails`` names them (:func:`require_columns`). Row numbers
in error messages are *data rows counted from 1, header not counted* (the first row under the
header is data row 1; in a CSV file that row is on line 2).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import pandas as pd

from quantstudy.paths import resolve

ARMS = ("baseline", "quantized")
REQUIRED_COLUMNS = ("timestamp", "arm", "conversation_id", "satisfaction")
GUARDRAIL_COLUMNS: dict[str, dict[str, Any]] = {  # the guardrail columns rollout.guardrails may name
    "escalated": {"higher_is_better": False, "binary": True, "label": "escalation to a human", "unit": "points"},
    "resolved": {
        "higher_is_better": True,
        "binary": True,
        "label": "resolved without a follow-up contact",
        "unit": "points",
    },
    "latency_s": {"higher_is_better": False, "binary": False, "label": "reply latency", "unit": "s"},
}
OPTIONAL_COLUMNS = tuple(GUARDRAIL_COLUMNS)
ROW_CONVENTION = "data rows counted from 1, header not counted"


class RolloutError(ValueError):
    """Bad rollout logs. ``str(err)`` names the file, the column and the first bad row."""


class Guardrail(Protocol):
    """What :func:`require_columns` reads of a configured guardrail (``rollout.guardrails[i]``)."""

    @property
    def column(self) -> str: ...

    @property
    def margin(self) -> float: ...


class HasGuardrails(Protocol):
    """Any object with ``.guardrails`` (the params' rollout section, structurally)."""

    @property
    def guardrails(self) -> Sequence[Guardrail]: ...


# --------------------------------------------------------------------------- error helpers
def _bad(source: str, column: str, row: int | None, expected: str, found: Any) -> RolloutError:
    where = "header" if row is None else f"data row {row} ({ROW_CONVENTION})"
    if isinstance(found, np.generic):
        found = found.item()  # -0.1, not np.float64(-0.1)
    return RolloutError(f"{source}: column '{column}', {where}: expected {expected}; found {found!r}")


def _first_bad(mask: pd.Series) -> int:
    """1-based data row of the first True in a boolean mask over a RangeIndex frame."""
    return int(np.flatnonzero(mask.to_numpy())[0]) + 1


def _raise_first(bad: pd.Series, raw: pd.Series, source: str, column: str, expected: str) -> None:
    """Raise for the first row flagged in ``bad``, quoting its raw value; nothing when none is."""
    if bad.any():
        r = _first_bad(bad)
        raise _bad(source, column, r, expected, raw.iloc[r - 1])


# --------------------------------------------------------------------------- per-column checks
def _parse_timestamps(values: pd.Series) -> pd.Series:
    """Naive UTC date-times: aware values (any mix of offsets) are converted, naive ones kept."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        text = values.map(lambda v: v.strip() if isinstance(v, str) else v)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            parsed = pd.to_datetime(text, errors="coerce", format="mixed", utc=True)
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert(None)
    return parsed


def _to_bool(v: Any) -> bool | None:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, str):
        return {"1": True, "0": False, "true": True, "false": False}.get(v.strip().lower())
    if isinstance(v, (int, float, np.integer, np.floating)) and v in (0, 1):
        return bool(v)
    return None


def _check_header(df: pd.DataFrame, source: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        hint = " (not a table with a header row? a CSV needs comma-separated columns)" if len(df.columns) <= 1 else ""
        raise RolloutError(
            f"{source}: missing column(s) {', '.join(repr(c) for c in missing)} in the header; "
            f"required: {', '.join(REQUIRED_COLUMNS)}; found: {', '.join(map(str, df.columns)) or 'no columns'}{hint}"
        )


def _check_timestamp(out: pd.DataFrame, source: str) -> None:
    raw = out["timestamp"]
    parsed = _parse_timestamps(raw)
    _raise_first(parsed.isna(), raw, source, "timestamp", "a date-time such as 2024-01-31T14:05:00+01:00")
    out["timestamp"] = parsed


def _check_arm_and_id(out: pd.DataFrame, source: str) -> None:
    _raise_first(~out["arm"].isin(ARMS), out["arm"], source, "arm", f"one of {', '.join(repr(a) for a in ARMS)}")
    _raise_first(out["conversation_id"].isna(), out["conversation_id"], source, "conversation_id", "a non-empty id")
    out["conversation_id"] = out["conversation_id"].astype(str)


def _check_satisfaction(out: pd.DataFrame, source: str) -> None:
    raw = out["satisfaction"]
    values = pd.to_numeric(raw.map(lambda v: int(v) if isinstance(v, (bool, np.bool_)) else v), errors="coerce")
    _raise_first(values.isna(), raw, source, "satisfaction", "a number in [0, 1]")
    _raise_first((values < 0) | (values > 1), raw, source, "satisfaction", "a number in [0, 1] (scale CSAT to [0, 1])")
    out["satisfaction"] = values.astype(float)


def _check_binary(out: pd.DataFrame, source: str, column: str) -> None:
    raw = out[column]
    conv = raw.map(_to_bool)
    _raise_first(conv.isna(), raw, source, column, "0/1 or true/false")
    out[column] = conv.astype(bool)


def _check_latency(out: pd.DataFrame, source: str) -> None:
    raw = out["latency_s"]
    values = pd.to_numeric(raw.map(lambda v: np.nan if isinstance(v, (bool, np.bool_)) else v), errors="coerce")
    _raise_first(values.isna() | ~np.isfinite(values.fillna(0.0)), raw, source, "latency_s", "a number of seconds >= 0")
    _raise_first(values < 0, raw, source, "latency_s", "a number of seconds >= 0 (a latency cannot be negative)")
    out["latency_s"] = values.astype(float)


def _check_both_arms(out: pd.DataFrame, source: str) -> None:
    counts = out["arm"].value_counts()
    for arm in ARMS:
        if counts.get(arm, 0) == 0:
            raise RolloutError(
                f"{source}: column 'arm': no rows for arm {arm!r} in any of the {len(out)} data rows "
                f"(empty arm); the analysis needs both {', '.join(repr(a) for a in ARMS)}"
            )


# --------------------------------------------------------------------------- public API
def validate_logs(df: pd.DataFrame, source: str = "<logs>") -> pd.DataFrame:
    """Check and normalise a log frame; return a clean copy sorted by time (see the module docstring)."""
    _check_header(df, source)
    out = df.reset_index(drop=True).copy()
    _check_timestamp(out, source)
    _check_arm_and_id(out, source)
    _check_satisfaction(out, source)
    for column in ("escalated", "resolved"):
        if column in out.columns:
            _check_binary(out, source, column)
    if "latency_s" in out.columns:
        _check_latency(out, source)
    _check_both_arms(out, source)
    return out.sort_values("timestamp", kind="stable").reset_index(drop=True)


def _read_table(path: Path, source: str) -> pd.DataFrame:
    """The raw table of a CSV or Parquet file; every reading failure is a :class:`RolloutError`."""
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        kind = "csv"
    elif name.endswith((".parquet", ".pq")):
        kind = "parquet"
    else:
        raise RolloutError(
            f"{source}: unsupported file type {''.join(path.suffixes) or '(none)'!r}; "
            "expected .csv, .csv.gz, .parquet or .pq"
        )
    if not path.is_file():
        raise RolloutError(f"{source}: rollout log file not found ({path})")
    try:
        if kind == "csv":
            return pd.read_csv(path, dtype={"conversation_id": str, "arm": str}, keep_default_na=True)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise RolloutError(
            f"{source}: the file is empty; expected a header with {', '.join(REQUIRED_COLUMNS)} and data rows"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        detail = " ".join(str(exc).split())[:160]
        raise RolloutError(
            f"{source}: not a table: cannot read it as {kind} ({type(exc).__name__}: {detail}); "
            f"expected a {kind} table with columns {', '.join(REQUIRED_COLUMNS)}"
        ) from None


def read_logs(path: str | Path) -> pd.DataFrame:
    """Read rollout logs from CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``, ``.pq``).

    Relative paths are taken from the project root. Raises :class:`RolloutError` naming
    the file, the column and the first bad data row (1-based, header not counted).
    """
    source = str(path)
    out = validate_logs(_read_table(resolve(path), source), source)
    out.attrs["source"] = source
    out.attrs["simulated"] = bool(out["simulated"].all()) if "simulated" in out.columns else False
    return out


def require_columns(logs: pd.DataFrame, rollout_params: HasGuardrails) -> None:
    """Every guardrail configured in ``rollout.guardrails`` needs its column in the logs."""
    for i, g in enumerate(rollout_params.guardrails):
        if g.column not in logs.columns:
            source = logs.attrs.get("source", "<logs>")
            raise RolloutError(
                f"{source}: column '{g.column}' is missing from the logs, but params field rollout.guardrails[{i}] "
                f"(column: {g.column}, margin: {g.margin:g}) names it; add the column to the logs or remove the "
                f"guardrail from rollout.guardrails"
            )
