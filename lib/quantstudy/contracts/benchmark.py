"""Step 04 (benchmark, also ``quantstudy bench``): ``04_benchmark/metrics.json``.

One section per model timed (``demo``: the study's checkpoint; ``production``: the
production-shaped model), plus the headline ``targets``, every ``traps`` flag and ``wall_s``.
Read by step 05 (a model's ``timings``: the latency ratio) and the report (speed-ups, memory,
fleet, agreement, traps, targets, env)."""

from __future__ import annotations

from pydantic import ConfigDict, Field, model_validator

from quantstudy.contracts._base import Record, StepMetrics, Target


class Speedup(Record):
    path: str  # baseline | naive4 | fast4
    batch: int
    context: int
    scope: str | None = None  # measured | full_model; absent in runs that timed full models only
    decode_speedup: float | None
    decode_speedup_low: float | None
    decode_speedup_high: float | None
    prefill_speedup: float | None
    prefill_speedup_low: float | None
    prefill_speedup_high: float | None


class Timing(Record):
    path: str
    batch: int
    context: int
    scope: str | None = None
    decode_tok_s_median: float | None
    prefill_tok_s_median: float | None


class Memory(Record):
    path: str
    weight_bytes_full_model: float | None
    weight_bytes_on_disk: float | None
    quantized_linear_ratio_vs_fp16: float | None
    peak_rss_run_mb: float | None


class Agreement(Record):
    """A path's logits against the dequantized checkpoint (and against the timed baseline)."""

    path: str
    rel_rms_diff: float | None
    top1_agreement: float | None
    rel_rms_diff_vs_baseline: float | None = None
    loader: str | None


class Fleet(Record):
    """The fleet needed at peak for one path."""

    path: str
    hardware: str
    batch_size: int
    decode_tokens_per_s_per_device: float | None
    required_tokens_per_s: float | None
    devices_at_peak: int | None
    bound_by: str | None
    cost_per_hour: float | None
    cost_per_1000_conversations: float | None


class Trap(Record):
    """A quantized path measured slower than the float baseline."""

    path: str
    batch: int
    context: int
    scope: str | None
    phase: str  # prefill | decode
    speedup: float
    clear: bool  # clearly slower (outside the spread of repeats), not within noise
    explanation: str


class ModelTrap(Trap):
    model: str  # the model section it comes from


class BenchTarget(Target):
    where: str | None = None


class BenchEnv(Record):
    device: str
    hardware_label: str
    checkpoint: str | None = None  # the folder timed (step 05 names it); None: a shape with random weights


class BenchModel(Record):
    """One model's section."""

    speedups: list[Speedup]
    timings: list[Timing]
    memory: list[Memory]
    agreement: list[Agreement] = []  # absent in runs recorded before the agreement check
    fleet: list[Fleet]
    traps: list[Trap]
    targets: dict[str, BenchTarget]
    bytes_ratio: float | None
    notes: list[str]
    env: BenchEnv


class BenchmarkMetrics(StepMetrics):
    # Model sections are keyed by model name: ``demo`` and ``production`` today; any other
    # top-level key must be a model section too, so a renamed ``traps`` or ``targets`` still fails.
    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, BenchModel] = Field(init=False)

    demo: BenchModel | None = None
    production: BenchModel | None = None
    targets: dict[str, BenchTarget]  # the production model's (else the only model's)
    traps: list[ModelTrap]
    wall_s: float

    @model_validator(mode="after")
    def _has_a_model(self) -> "BenchmarkMetrics":
        if self.demo is None and self.production is None and not self.model_extra:
            raise ValueError("no model section (expected 'demo' and/or 'production')")
        return self

    def models(self) -> dict[str, BenchModel]:
        """{model name: section}, in file order."""
        named = {k: getattr(self, k) for k in ("demo", "production") if getattr(self, k) is not None}
        return {**named, **(self.model_extra or {})}
