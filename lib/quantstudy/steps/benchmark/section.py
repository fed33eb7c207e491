"""The ``benchmark`` params section every entry point accepts, as a model or a plain mapping."""

from __future__ import annotations

from typing import Any, Mapping

from quantstudy.config.params import BenchmarkSection


def bench_section(bench_params: BenchmarkSection | Mapping[str, Any]) -> BenchmarkSection:
    """`bench_params` as a checked :class:`BenchmarkSection`."""
    if isinstance(bench_params, BenchmarkSection):
        return bench_params
    return BenchmarkSection.model_validate(dict(bench_params))
