"""Step 02 (quantize): ``02_quantize/metrics.json``.

Read by step 03 (``checkpoints``: which checkpoints to evaluate), step 04 (``checkpoints``:
which packed checkpoint to time) and the report (checkpoints, sanity, search settings,
the worse-than-RTN flags, the archived baseline, targets)."""

from __future__ import annotations

from pydantic import ValidationError, model_validator

from quantstudy.contracts._base import CI, Record, StepMetrics, Target


class BaselineArchive(Record):
    files: dict[str, str]  # file name -> sha256
    rollback: str  # the one shell line that verifies the archive and points serving back at it


class Checkpoint(Record):
    """One quantized checkpoint under ``checkpoints/<name>``."""

    name: str
    method: str  # rtn | awq
    bits: int
    group_size: int
    calibration_source: str | None  # None for RTN
    draw: int | None
    simulated: bool  # True: fake-quantized (bits AutoAWQ cannot pack), not a packed checkpoint
    zero_point: bool
    version: str  # kernel layout (GEMM)
    search_wall_s: float
    peak_rss_mb: float | None
    checkpoint_bytes: int | None
    effective_bits_per_weight: float | None
    set: str | None  # the step-01 calibration set; None for RTN
    variant: bool | None  # an AutoAWQ search-setting variant (not a default-settings checkpoint)
    duo_scaling: bool | None = None  # AWQ checkpoints only
    apply_clip: bool | None = None  # AWQ checkpoints only
    sweep: bool | None = None
    n_samples: int | None = None
    backend: str = "autoawq"  # the AWQ implementation: autoawq | llmcompressor (RTN: AutoAWQ's packing)
    loss_mask: str | None = None  # llm-compressor only: "assistant" when only the assistant's tokens counted


class SanityRow(Record):
    """Held-out perplexity of one model; AWQ rows carry ``vs_rtn_pct_<domain>`` intervals."""

    name: str
    method: str
    bits: int
    ppl_generic: float | None
    ppl_in_domain: float | None
    own_domains: list[str] | None = None  # AWQ rows only, as are the two below
    worse_than_rtn_on_own_domain: bool | None = None
    worse_domains: list[str] | None = None

    @model_validator(mode="after")
    def _intervals(self) -> "SanityRow":
        for key, value in (self.model_extra or {}).items():
            if key.startswith("vs_rtn_pct_") and value is not None:  # the report reads point, lo and hi
                try:
                    CI.model_validate(value)
                except ValidationError as exc:
                    raise ValueError(
                        "; ".join(f"{key}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                    ) from None
        return self


class SearchSetting(Record):
    name: str
    duo_scaling: bool | None
    apply_clip: bool | None
    search_wall_s: float
    ppl_in_domain: float | None
    vs_rtn_in_domain: CI | None


class QuantizeMetrics(StepMetrics):
    baseline_archive: BaselineArchive
    checkpoints: list[Checkpoint]
    sanity: list[SanityRow]
    worse_than_rtn_on_own_domain: list[str]  # names of AWQ checkpoints flagged by the sanity check
    search_settings: list[SearchSetting]
    targets: dict[str, Target]
    wall_s: float
