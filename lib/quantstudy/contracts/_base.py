"""Base classes shared by the step contracts."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    """A nested record of a metrics.json. The fields declared are the ones a reader uses
    (required unless a default says otherwise); a record may carry more detail than that."""

    model_config = ConfigDict(extra="allow")


class StepMetrics(BaseModel):
    """A step's whole metrics.json. Every top-level key the step writes is declared, so a key
    that is renamed (or misspelt) fails as both missing and unexpected, even an optional one."""

    model_config = ConfigDict(extra="forbid")


class CI(Record):
    """A bootstrap interval: point estimate and bounds."""

    point: float
    lo: float
    hi: float
    n_units: int | None = None


class Target(Record):
    """A performance target judged as a measured figure (``targets`` of steps 02 to 04)."""

    measured: float | None
    target: float | None
    met: bool | None
