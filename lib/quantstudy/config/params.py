"""Study parameters: YAML under params/, validated by typed models that reject unknown keys.

One file drives the whole study. Each notebook receives the sections it needs as flat
papermill parameters named ``<section>_<key>`` (e.g. ``quantize_group_size``), and rebuilds
the typed section from them with :func:`validate_notebook`, so a notebook run by hand in
JupyterLab is validated exactly like a batch run.

Every problem becomes a :class:`ParamsError` whose message is one line naming the file, the
key, what was expected and what was found.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quantstudy.metrics.registry import BUDGET_METRICS as _BUDGET_METRICS
from quantstudy.paths import resolve
from quantstudy.pipeline.steps import IGNORED_BY_EVERY_STEP as _IGNORED_BY_EVERY_STEP
from quantstudy.pipeline.steps import STEPS as _STEPS

# Step order and the params sections each step notebook receives (quantstudy.pipeline.steps
# lists the steps once).
STEP_SECTIONS: dict[str, tuple[str, ...]] = {step.name: step.sections for step in _STEPS}

# Fields a step receives but never reads: left out of its skip key, so changing them does not
# re-run it ("*": every step).
IGNORED_FIELDS: dict[str, tuple[str, ...]] = {
    "*": _IGNORED_BY_EVERY_STEP,
    **{step.name: step.ignored for step in _STEPS if step.ignored},
}

# Metrics a quality-budget line may name: quantstudy.metrics.registry defines each one once.
BUDGET_METRICS = _BUDGET_METRICS


class ParamsError(ValueError):
    """A bad params file or value. ``str(err)`` is the one-line message for the user."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class StudySection(_Section):
    name: str = Field("default", min_length=1, description="label stamped on the report")
    seed: int = Field(0, ge=0, description="master seed for draws, bootstrap and simulation")
    device: Literal["cpu", "cuda", "auto"] = "cpu"


class ModelSection(_Section):
    source: Literal["embedded", "hf", "gguf"] = "embedded"
    path: str = Field(
        "models/demo-support-lm",
        min_length=1,
        description="local folder, Hugging Face model id, or .gguf file / package resource",
    )
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # the AWQ search and the archived baseline
    eval_dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # forward passes that score models
    trust_remote_code: bool = False


class DataSection(_Section):
    generic_source: Literal["embedded", "hf"] = "embedded"
    generic_dataset: str | None = None  # HF dataset id when generic_source is hf
    generic_split: str = "validation"
    generic_text_column: str = "text"
    conversations: str = "data/demo/conversations.jsonl"
    task_items: str = "data/demo/task_items.jsonl"
    domain_lexicon: str | None = "data/demo/domain_lexicon.json"  # {category: [terms]}; null = none
    eval_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="held-out share for user data without splits")


class CalibrationSection(_Section):
    sources: list[Literal["generic", "in_domain", "mixed"]] = Field(
        default_factory=lambda: ["generic", "in_domain", "mixed"], min_length=1
    )
    n_samples: int = Field(32, ge=1, le=4096)
    sample_sweep: list[int] = Field(default_factory=list)
    draws: int = Field(2, ge=1, le=20)
    max_seq_len: int = Field(256, ge=16, le=8192)
    long_samples: Literal["split", "truncate"] = "split"
    mixed_in_domain_fraction: float = Field(0.5, ge=0.0, le=1.0)
    scrub: bool = True
    chat_template: bool = True  # render conversations with the tokenizer's chat template (when it has one)

    @field_validator("sample_sweep")
    @classmethod
    def _sweep_positive(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError("every sample count must be >= 1")
        return sorted(set(v))


class QuantizeSection(_Section):
    bits: list[Literal[3, 4]] = Field(default_factory=lambda: [4], min_length=1)
    group_size: int = Field(128, ge=16, le=4096)
    zero_point: bool = True
    version: Literal["GEMM", "GEMV"] = "GEMM"
    duo_scaling: bool = False
    apply_clip: bool = False
    # Matmuls of the AWQ search under autocast to this dtype (weights, scales and the quantizer
    # stay in model.dtype); null: the model's dtype throughout.
    search_autocast: Literal["bfloat16", "float16"] | None = None
    rtn_reference: bool = True
    compare_search_settings: bool = True  # also run AutoAWQ's defaults on in-domain draw 0
    sanity_tokens: int = Field(8000, ge=256, description="held-out tokens per domain for step 02's sanity check")
    # AWQ implementations run on every calibration set: AutoAWQ (the design's quantizer; it
    # packs the served checkpoint) and llm-compressor (its maintained successor, CPU fallback).
    backends: list[Literal["autoawq", "llmcompressor"]] = Field(default_factory=lambda: ["autoawq"], min_length=1)
    # llm-compressor only: also calibrate each in-domain draw on the assistant's tokens alone
    # (a loss mask over the chat template), to measure that choice as a factor.
    assistant_only: bool = False

    @field_validator("group_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError("group size must be a power of two (32, 64, 128, ...)")
        return v


class BudgetLine(_Section):
    metric: str
    max_drop: float = Field(..., ge=0.0, description="allowed degradation, in `unit`")
    unit: Literal["points", "percent"] = "points"

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in BUDGET_METRICS:
            raise ValueError(f"unknown metric {v!r}; known metrics: {', '.join(BUDGET_METRICS)}")
        return v


class EvaluateSection(_Section):
    window: int = Field(256, ge=16, le=8192)
    stride: int = Field(128, ge=1, le=8192)
    max_eval_tokens: int = Field(20000, ge=256, description="per evaluation domain")
    max_items_per_task: int | None = Field(300, ge=10, description="null: every task item")
    item_batch: int = Field(
        1,
        ge=1,
        le=256,
        description="task items per forward pass; 1: each alone; N: N per pass in one fixed shape "
        "(an item's score still does not depend on its companions; for a GPU)",
    )
    bootstrap_samples: int = Field(1000, ge=100, le=100000)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    budget: list[BudgetLine] = Field(
        default_factory=lambda: [
            BudgetLine(metric="policy_closed_book_acc", max_drop=2.0, unit="points"),
            BudgetLine(metric="retention_acc", max_drop=2.0, unit="points"),
            BudgetLine(metric="indomain_ppl", max_drop=3.0, unit="percent"),
            BudgetLine(metric="satisfaction", max_drop=2.0, unit="points"),
        ]
    )
    lm_eval_tasks: list[str] = Field(default_factory=list)
    reference_tasks: list[Literal["policy_closed_book", "policy_grounded", "retention"]] = Field(
        default_factory=list, description="scored on the baseline only, against chance; never budgeted"
    )

    @model_validator(mode="after")
    def _stride_fits(self) -> "EvaluateSection":
        if self.stride > self.window:
            raise ValueError(f"stride ({self.stride}) must not exceed window ({self.window})")
        for line in self.budget:
            task = line.metric.removesuffix("_acc")
            if task in self.reference_tasks:
                raise ValueError(
                    f"budget metric {line.metric} is a reference task (scored on the baseline only); "
                    f"remove it from reference_tasks or from the budget"
                )
        return self


class BenchmarkSection(_Section):
    paths: list[Literal["baseline", "naive4", "fast4", "torchint4"]] = Field(
        default_factory=lambda: ["baseline", "naive4", "fast4"], min_length=1
    )
    production_paths: list[Literal["baseline", "naive4", "fast4", "torchint4"]] | None = Field(
        None, min_length=1, description="paths timed on the production-shaped model; null: the same as paths"
    )
    modes: list[Literal["eager", "graphed"]] = Field(
        default_factory=lambda: ["eager"],
        min_length=1,
        description="eager: HF forward; graphed: static KV cache, decode step replayed from a CUDA graph",
    )
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 4], min_length=1)
    context_lengths: list[int] = Field(default_factory=lambda: [128], min_length=1)
    decode_tokens: int = Field(16, ge=1, le=4096)
    warmup: int = Field(1, ge=0, le=50)
    repeats: int = Field(3, ge=1, le=100)
    prod_hidden_size: int = Field(2048, ge=128)
    prod_intermediate_size: int = Field(8192, ge=128)
    prod_num_layers: int = Field(16, ge=1)
    prod_num_heads: int = Field(32, ge=1)
    prod_num_kv_heads: int = Field(8, ge=1)
    prod_vocab_size: int = Field(128256, ge=256)
    prod_bench_layers: int = Field(2, ge=1, description="decoder layers actually timed; speed scales per layer")
    device_memory_gb: float = Field(24.0, gt=0)
    price_per_device_hour: float = Field(0.10, gt=0)
    peak_conversations_per_s: float = Field(2.0, gt=0)
    tokens_per_conversation: int = Field(1500, ge=1)
    kv_bytes_per_token: int = Field(65536, ge=1)
    hardware_label: str = "2-core CPU (this machine)"

    @model_validator(mode="after")
    def _heads_fit(self) -> "BenchmarkSection":
        if self.production_paths is not None and "baseline" not in self.production_paths:
            raise ValueError("production_paths must include baseline: every speed-up is against it")
        if self.prod_hidden_size % self.prod_num_heads:
            raise ValueError(
                f"prod_hidden_size ({self.prod_hidden_size}) must be divisible by prod_num_heads ({self.prod_num_heads})"
            )
        if self.prod_num_heads % self.prod_num_kv_heads:
            raise ValueError(
                f"prod_num_heads ({self.prod_num_heads}) must be divisible by prod_num_kv_heads ({self.prod_num_kv_heads})"
            )
        if self.prod_bench_layers > self.prod_num_layers:
            raise ValueError(
                f"prod_bench_layers ({self.prod_bench_layers}) exceeds prod_num_layers ({self.prod_num_layers})"
            )
        return self


class ServeSection(_Section):
    """How the 4-bit model is served (``quantstudy.serving``): the configuration step 04 times
    is the one step 03 scores, as a row of its own under the quality budget."""

    lm_head: Literal["float", "bfloat16", "int8"] = Field(
        "float", description="output head of the served 4-bit model: float (as AWQ leaves it), bfloat16, int8"
    )


class RolloutSection(_Section):
    class Guardrail(_Section):
        """A support metric watched next to satisfaction: the rollout cuts over only when it is
        non-inferior within ``margin`` (absolute: a share for 0/1 columns, seconds for latency_s)."""

        column: Literal["escalated", "resolved", "latency_s"]
        margin: float = Field(..., gt=0.0, description="absolute non-inferiority margin in the column's unit")
        higher_is_better: bool

        @model_validator(mode="after")
        def _direction_and_unit(self) -> "RolloutSection.Guardrail":
            natural = {"escalated": False, "resolved": True, "latency_s": False}[self.column]
            if self.higher_is_better != natural:
                why = {
                    "escalated": "escalation to a human: lower is better",
                    "resolved": "resolved without a follow-up contact: higher is better",
                    "latency_s": "reply latency: lower is better",
                }[self.column]
                raise ValueError(f"higher_is_better: {str(natural).lower()} for column {self.column} ({why})")
            if self.column != "latency_s" and self.margin >= 1:
                raise ValueError(f"a margin below 1 for the 0/1 column {self.column} (a share, e.g. 0.02 = 2 points)")
            return self

    stages: list[float] = Field(default_factory=lambda: [0.05, 0.25, 0.5, 1.0], min_length=1)
    days_per_stage: int = Field(2, ge=1, le=60)
    daily_conversations: int = Field(4000, ge=10)
    logs: str | None = None  # CSV/Parquet of real rollout logs; null = seeded simulator
    scenario: Literal["measured", "worse", "broken_assignment"] = "measured"
    baseline_satisfaction: float = Field(0.82, gt=0.0, lt=1.0)
    satisfaction_per_point: float = Field(
        0.004, ge=0.0, description="simulated satisfaction change per task-accuracy point"
    )
    worse_drop: float = Field(
        0.05, gt=0.0, lt=1.0, description="satisfaction drop of the quantized arm in the 'worse' scenario"
    )
    margin: float | None = Field(
        None, gt=0.0, lt=1.0, description="null: the budget's satisfaction line sets the non-inferiority margin"
    )
    alpha: float = Field(0.05, gt=0.0, lt=0.5)
    candidate_rule: Literal["best_worst_case", "best_point"] = Field(
        "best_worst_case",
        description="how step 05 picks the checkpoint to ship (quantstudy.steps.rollout.CANDIDATE_RULES)",
    )
    guardrails: list[Guardrail] = Field(
        default_factory=lambda: [
            RolloutSection.Guardrail(column="escalated", margin=0.02, higher_is_better=False),
            RolloutSection.Guardrail(column="resolved", margin=0.02, higher_is_better=True),
            RolloutSection.Guardrail(column="latency_s", margin=0.25, higher_is_better=False),
        ],
        description="every guardrail (and satisfaction) must be non-inferior to cut over",
    )
    power: float = Field(
        0.8, gt=0.5, lt=1.0, description="power of the whole ship rule; each metric is planned at 1 - (1 - power) / K"
    )
    srm_alpha: float = Field(
        0.001, gt=0.0, lt=0.5, description="sample-ratio-mismatch check: p below this stops the rollout"
    )
    baseline_escalation: float = Field(
        0.15, gt=0.0, lt=1.0, description="baseline escalation rate (simulator, power plan)"
    )
    escalation_per_point: float = Field(
        0.003, ge=0.0, description="simulated escalation-rate rise per task-accuracy point lost"
    )
    baseline_resolved: float = Field(
        0.70, gt=0.0, lt=1.0, description="baseline resolved-without-follow-up rate (simulator, power plan)"
    )
    resolution_per_point: float = Field(
        0.003, ge=0.0, description="simulated resolution-rate fall per task-accuracy point lost"
    )
    baseline_latency_s: float = Field(
        2.0, gt=0.0, description="baseline mean reply latency, seconds (simulator, power plan)"
    )
    latency_sd_s: float = Field(
        1.0, gt=0.0, description="standard deviation of reply latency, seconds (simulator, power plan)"
    )
    srm_drop: float = Field(
        0.1, gt=0.0, lt=1.0, description="'broken_assignment': share of the quantized arm's conversations lost"
    )

    @field_validator("stages")
    @classmethod
    def _stages_increasing(cls, v: list[float]) -> list[float]:
        if any(not 0 < s <= 1 for s in v):
            raise ValueError("every stage is a traffic share in (0, 1]")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("stages must increase strictly, e.g. [0.05, 0.25, 0.5, 1.0]")
        return v

    @field_validator("guardrails", mode="before")
    @classmethod
    def _guardrail_keys(cls, v: Any) -> Any:
        known = ("column", "margin", "higher_is_better")
        for i, g in enumerate(v if isinstance(v, list) else []):
            extra = [k for k in g if k not in known] if isinstance(g, dict) else []
            if extra:
                close = difflib.get_close_matches(str(extra[0]), known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ValueError(
                    f"keys {', '.join(known)} in each guardrail (guardrails[{i}] has unknown key {extra[0]!r}{hint})"
                )
        return v

    @field_validator("guardrails")
    @classmethod
    def _guardrails_unique(cls, v: list["RolloutSection.Guardrail"]) -> list["RolloutSection.Guardrail"]:
        columns = [g.column for g in v]
        dup = next((c for c in columns if columns.count(c) > 1), None)
        if dup:
            raise ValueError(f"each guardrail column once; {dup} is listed {columns.count(dup)} times")
        return v


class TargetsSection(_Section):
    """Performance targets, checked against what each step measures and echoed in the report."""

    awq_search_s_max: float = Field(60.0, gt=0, description="slowest AWQ search of one calibration set, seconds")
    steps_01_02_wall_s: float = Field(360.0, gt=0, description="steps 01 + 02 wall time, seconds")
    evaluation_wall_s: float = Field(240.0, gt=0, description="step 03 wall time, seconds")
    fast_decode_speedup: float = Field(2.5, gt=0, description="CPU int4 decode at batch 1 vs float32 (1B shape)")
    quantized_bytes_ratio: float = Field(3.8, gt=0, description="float16 bytes / 4-bit bytes of the quantized linears")


class StudyParams(_Section):
    study: StudySection = Field(default_factory=StudySection)
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    calibration: CalibrationSection = Field(default_factory=CalibrationSection)
    quantize: QuantizeSection = Field(default_factory=QuantizeSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    benchmark: BenchmarkSection = Field(default_factory=BenchmarkSection)
    serve: ServeSection = Field(default_factory=ServeSection)
    rollout: RolloutSection = Field(default_factory=RolloutSection)
    targets: TargetsSection = Field(default_factory=TargetsSection)


SECTION_MODELS: dict[str, type[_Section]] = {
    name: field.annotation
    for name, field in StudyParams.model_fields.items()  # type: ignore[misc]
}


# --------------------------------------------------------------------------- errors
# pydantic error types in plain words (the rest: pydantic's message without "Input should be").
_PLAIN_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping of keys to values",
    "model_type": "a mapping of keys to values",
}


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _format_validation_error(source: str, err: ValidationError, prefix: str = "") -> str:
    """One line for the first problem; the count of any others."""
    problems = err.errors()
    first = problems[0]
    loc = ".".join(str(p) for p in (prefix, *first["loc"]) if p != "")
    kind = first["type"]
    if kind == "extra_forbidden":
        section = first["loc"][:-1]
        model: Any = StudyParams if not prefix else SECTION_MODELS.get(prefix, StudyParams)
        for part in section:
            if isinstance(part, str) and hasattr(model, "model_fields") and part in model.model_fields:
                model = model.model_fields[part].annotation
        known = list(getattr(model, "model_fields", {}))
        close = difflib.get_close_matches(str(first["loc"][-1]), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
        msg = f"{source}: {loc}: unknown key; {hint}"
    elif kind == "missing":
        msg = f"{source}: {loc}: required key is missing"
    else:
        expected = first["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
        expected = _PLAIN_EXPECTED.get(kind, expected)
        msg = f"{source}: {loc}: expected {expected}; found {_describe(first.get('input'))}"
    if len(problems) > 1:
        msg += f" (+{len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return msg


# --------------------------------------------------------------------------- loading
def load_params(path: str | Path, check_files: bool = True) -> StudyParams:
    """Read and validate a params YAML file; raise ParamsError with a one-line message."""
    path = Path(path)
    source = str(path)
    if path.is_dir():
        raise ParamsError(f"{source}: is a directory, not a params file; pass one of the files under params/")
    if not path.is_file():
        raise ParamsError(f"{source}: params file not found; pass one of the files under params/")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ParamsError(
            f"{source}: not a UTF-8 text file (byte {exc.start} cannot be decoded); "
            "a params file is YAML text, e.g. a copy of params/default.yaml"
        ) from None
    except OSError as exc:
        raise ParamsError(f"{source}: cannot be read ({exc.strerror}); check its permissions") from None
    if "\x00" in text:
        raise ParamsError(
            f"{source}: not a text file (it contains NUL bytes); a params file is YAML text, "
            "e.g. a copy of params/default.yaml"
        )
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem_mark", None)
        context = getattr(exc, "context_mark", None)
        mark = context or problem
        where = f"line {mark.line + 1}" if mark else "?"
        if context and problem and problem.line != context.line:
            where += f" (noticed at line {problem.line + 1})"
        what = getattr(exc, "problem", None) or exc
        ctx = getattr(exc, "context", None)
        raise ParamsError(f"{source}: {where}: not valid YAML ({(ctx + ': ') if ctx else ''}{what})") from None
    if raw is None:
        raise ParamsError(
            f"{source}: the file is empty; expected the sections of a study (study, model, data, ...), "
            "e.g. a copy of params/default.yaml"
        )
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: top level: expected a mapping of sections; found {_describe(raw)}")
    try:
        params = StudyParams.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_format_validation_error(source, exc)) from None
    check_combinations(params, source)
    if check_files:
        check_input_files(params, source)
    return params


def check_combinations(p: StudyParams, source: str, sections: tuple[str, ...] | None = None) -> None:
    """Impossible or self-defeating combinations, caught before any long work. ``sections``:
    the sections a notebook received (the others hold defaults and are not checked)."""
    if p.model.dtype == "float16" and p.study.device == "cpu":
        raise ParamsError(
            f"{source}: model.dtype: expected float32 when study.device is cpu "
            "(half-precision matmuls run ~40x slower on this CPU); found 'float16'"
        )
    if p.model.eval_dtype == "float16" and p.study.device == "cpu":
        raise ParamsError(
            f"{source}: model.eval_dtype: expected float32 or bfloat16 when study.device is cpu "
            "(float16 matmuls run ~40x slower on this CPU); found 'float16'"
        )
    if p.data.generic_source == "hf" and not p.data.generic_dataset:
        raise ParamsError(
            f"{source}: data.generic_dataset: expected a Hugging Face dataset id when "
            "data.generic_source is 'hf'; found None"
        )
    if p.data.generic_source == "embedded" and p.data.generic_dataset:
        raise ParamsError(
            f"{source}: data.generic_dataset: expected null when data.generic_source is "
            f"'embedded'; found {p.data.generic_dataset!r} (set generic_source: hf to use it)"
        )
    if any(b < 4 for b in p.quantize.bits) and p.quantize.version != "GEMM":
        raise ParamsError(
            f"{source}: quantize.version: expected GEMM with 3-bit runs (simulated); found {p.quantize.version!r}"
        )
    check_backends(p, source)
    if p.calibration.sample_sweep and max(p.calibration.sample_sweep) > 4096:
        raise ParamsError(
            f"{source}: calibration.sample_sweep: expected counts <= 4096; found {max(p.calibration.sample_sweep)}"
        )
    if "mixed" in p.calibration.sources and not 0 < p.calibration.mixed_in_domain_fraction < 1:
        raise ParamsError(
            f"{source}: calibration.mixed_in_domain_fraction: expected a share strictly between 0 "
            f"and 1 when sources include 'mixed'; found {p.calibration.mixed_in_domain_fraction}"
        )
    if p.rollout.logs is not None and p.rollout.scenario != "measured":
        raise ParamsError(
            f"{source}: rollout.scenario: expected 'measured' with real logs (scenarios only "
            f"apply to the simulator); found {p.rollout.scenario!r}"
        )
    if p.serve.lm_head != "float" and p.study.device != "cpu":
        raise ParamsError(
            f"{source}: serve.lm_head: expected float when study.device is {p.study.device!r} (a served "
            f"int8 or bfloat16 head is built for fast4 on a CPU, and step 03 scores what step 04 times); "
            f"found {p.serve.lm_head!r}"
        )
    sat = [b for b in p.evaluate.budget if b.metric == "satisfaction"]
    if p.rollout.margin is None and not sat:
        raise ParamsError(
            f"{source}: evaluate.budget: expected a line {{metric: satisfaction, max_drop: <points>, "
            "unit: points}} to set the rollout's non-inferiority margin (or set rollout.margin); found none"
        )
    if sat and sat[0].unit != "points":
        raise ParamsError(
            f"{source}: evaluate.budget: expected unit 'points' for the satisfaction line; found {sat[0].unit!r}"
        )
    check_model_source(p, source, check_group_size=sections is None or "quantize" in sections)


def check_backends(p: StudyParams, source: str) -> None:
    """The AWQ implementations: AutoAWQ always (the served checkpoint and the RTN reference are
    in its packed format), llm-compressor for 4-bit only (3-bit runs are AutoAWQ's simulation),
    the assistant-only loss mask only with llm-compressor."""
    q = p.quantize
    if len(set(q.backends)) != len(q.backends):
        raise ParamsError(f"{source}: quantize.backends: expected each backend once; found {q.backends}")
    if "autoawq" not in q.backends:
        raise ParamsError(
            f"{source}: quantize.backends: expected autoawq in the list (the RTN reference and the "
            f"served checkpoint use its packed format; llm-compressor runs next to it); found {q.backends}"
        )
    if "llmcompressor" in q.backends and any(b != 4 for b in q.bits):
        raise ParamsError(
            f"{source}: quantize.bits: expected [4] with backend llmcompressor (the study compares the "
            f"two implementations at 4 bits; 3-bit runs are AutoAWQ's simulation); found {q.bits}"
        )
    if "llmcompressor" in q.backends and q.version != "GEMM":
        raise ParamsError(
            f"{source}: quantize.version: expected GEMM with backend llmcompressor (its packed "
            f"format is compared with AutoAWQ's GEMM layout); found {q.version!r}"
        )
    if "llmcompressor" in q.backends and importlib.util.find_spec("llmcompressor") is None:
        raise ParamsError(
            f"{source}: quantize.backends: lists llmcompressor, which is not installed here; run "
            "`make setup` (it installs the pinned llmcompressor) or remove it from the list"
        )
    if q.assistant_only and "llmcompressor" not in q.backends:
        raise ParamsError(
            f"{source}: quantize.assistant_only: expected false unless quantize.backends includes "
            "llmcompressor (the loss mask is an llm-compressor option); found true"
        )
    if q.assistant_only and "in_domain" not in p.calibration.sources:
        raise ParamsError(
            f"{source}: quantize.assistant_only: expected calibration.sources to include in_domain "
            "(the mask selects the assistant's turns of conversations); found "
            f"{p.calibration.sources}"
        )


def check_model_source(p: StudyParams, source: str, check_group_size: bool = True) -> None:
    """The model's architecture (AutoAWQ must support it) and layer widths (the group size must
    divide them), from config.json or the GGUF header: before any long work."""
    from quantstudy import modelsource  # file checks load data readers (pandas, torch) only when they run

    if p.model.source == "gguf" and p.model.trust_remote_code:
        raise ParamsError(f"{source}: model.trust_remote_code: expected false for a GGUF model; found true")
    try:
        found = modelsource.model_config(p.model)
    except modelsource.ModelSourceError as exc:
        raise ParamsError(f"{source}: {exc}") from None
    if found is None:
        return
    where, cfg = found
    mtype = cfg.get("model_type")
    # file checks load data readers (pandas, torch) only when they run
    from quantstudy.awqformat.autoawq import supported_model_types

    supported = supported_model_types()
    if p.model.source == "gguf":
        try:
            modelsource.check_gguf(modelsource.gguf_path(p.model.path), supported)
        except modelsource.ModelSourceError as exc:
            raise ParamsError(f"{source}: {exc}") from None
    elif mtype is not None and mtype not in supported:
        raise ParamsError(
            f"{source}: model.path: expected a model type AutoAWQ supports "
            f"({', '.join(supported)}); found {mtype!r} in {where}"
        )
    for key in ("hidden_size", "intermediate_size") if check_group_size else ():
        width = cfg.get(key)
        if isinstance(width, int) and width % p.quantize.group_size:
            divisors = [g for g in (32, 64, 128, 256) if width % g == 0]
            raise ParamsError(
                f"{source}: quantize.group_size: expected a divisor of every quantized layer's input width "
                f"({key}={width} in {where}; e.g. {', '.join(map(str, divisors)) or 'none of 32-256'}); "
                f"found {p.quantize.group_size}"
            )


def check_input_files(p: StudyParams, source: str) -> None:
    """Files the study reads must exist before any step starts."""
    needed: list[tuple[str, str]] = [
        ("data.conversations", p.data.conversations),
        ("data.task_items", p.data.task_items),
    ]
    if p.rollout.logs is not None:
        needed.append(("rollout.logs", p.rollout.logs))
    if p.data.domain_lexicon is not None:
        needed.append(("data.domain_lexicon", p.data.domain_lexicon))
    for key, value in needed:
        if resolve(value).is_dir():
            raise ParamsError(f"{source}: {key}: expected a file; found {value!r}, which is a directory")
        if not resolve(value).is_file():
            raise ParamsError(
                f"{source}: {key}: expected an existing file; found {value!r} (missing). "
                "Fix the path, or run `make demo-data` for the embedded demo files"
            )
    check_input_contents(p, source)
    if p.model.source == "gguf":
        return  # checked with the model itself (check_model_source)
    if p.model.source == "embedded" and not (resolve(p.model.path) / "config.json").is_file():
        raise ParamsError(
            f"{source}: model.path: expected a model folder with config.json for "
            f"source 'embedded'; found {p.model.path!r}. Run `make demo-model` or fix the path"
        )


_CONFIG_TYPES = {
    "model_type": str,
    "hidden_size": int,
    "intermediate_size": int,
    "num_hidden_layers": int,
    "num_attention_heads": int,
    "vocab_size": int,
}


def check_input_contents(p: StudyParams, source: str) -> None:
    """Read and check every input the run will use, before any step starts: conversations,
    task items, the domain lexicon, rollout logs and a local model's config.json. A file with
    several bad lines reports them all (the first 20, and the count)."""
    from quantstudy import data  # file checks load data readers (pandas, torch) only when they run

    checks = [
        ("data.conversations", lambda: data.read_conversations(p.data.conversations)),
        ("data.task_items", lambda: data.read_task_items(p.data.task_items)),
    ]
    if p.data.domain_lexicon is not None:
        checks.append(("data.domain_lexicon", lambda: data.read_lexicon(p.data.domain_lexicon)))
    if p.rollout.logs is not None:

        def logs():
            # file checks load data readers (pandas, torch) only when they run
            from quantstudy.rollout_logs import read_logs, require_columns

            frame = read_logs(p.rollout.logs)
            require_columns(frame, p.rollout)  # every configured guardrail needs its column
            return frame

        checks.append(("rollout.logs", logs))
    for key, check in checks:
        try:
            check()
        except ValueError as exc:  # DataError, RolloutError
            raise ParamsError(f"{source}: {key}: {exc}") from None
    if p.model.source != "gguf":
        cfg_path = resolve(p.model.path) / "config.json"
        if cfg_path.is_file():
            try:
                cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ParamsError(
                    f"{source}: model.path: {cfg_path} is not valid JSON ({exc}); "
                    "restore the model folder's config.json"
                ) from None
            if not isinstance(cfg, dict):
                raise ParamsError(
                    f"{source}: model.path: {cfg_path}: expected a JSON object; found {type(cfg).__name__}"
                )
            for key, typ in _CONFIG_TYPES.items():
                if key in cfg and (not isinstance(cfg[key], typ) or isinstance(cfg[key], bool)):
                    raise ParamsError(
                        f"{source}: model.path: {cfg_path}: {key} must be {'a string' if typ is str else 'an integer'}; "
                        f"found {cfg[key]!r}"
                    )


# --------------------------------------------------------------------------- notebooks
def flatten(p: StudyParams, sections: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Papermill parameters for a notebook: ``<section>_<key>`` -> plain literal."""
    out: dict[str, Any] = {}
    dumped = p.model_dump(mode="json")
    for section in sections:
        for key, value in dumped[section].items():
            out[f"{section}_{key}"] = value
    return out


def step_parameters(p: StudyParams, step: str) -> dict[str, Any]:
    return flatten(p, STEP_SECTIONS[step])


def validate_notebook(namespace: dict[str, Any], step: str, source: str | None = None) -> StudyParams:
    """Rebuild and validate the params a notebook was given (its globals()).

    Sections the step does not use keep their defaults. Raises ParamsError naming the
    notebook variable at fault. The run-folder variables (``run_dir``, ``output_dir``,
    ``input_dirs``) are made absolute against the project root in the namespace itself, so a
    notebook run from ``notebooks/`` (JupyterLab's working directory) writes where a batch run does.
    """
    source = source or f"notebooks/{step}.ipynb parameters"
    for key in ("run_dir", "output_dir"):
        if isinstance(namespace.get(key), str) and namespace[key]:
            namespace[key] = str(resolve(namespace[key]))
    if isinstance(namespace.get("input_dirs"), dict):
        namespace["input_dirs"] = {k: str(resolve(v)) for k, v in namespace["input_dirs"].items()}
    raw: dict[str, dict[str, Any]] = {}
    for section in STEP_SECTIONS[step]:
        model = SECTION_MODELS[section]
        values = {}
        for key in model.model_fields:
            name = f"{section}_{key}"
            if name in namespace:
                values[key] = namespace[name]
        raw[section] = values
    try:
        params = StudyParams.model_validate(raw)
    except ValidationError as exc:
        msg = _format_validation_error(source, exc)
        # Show the notebook's variable name, not the nested path.
        for section in STEP_SECTIONS[step]:
            msg = msg.replace(f": {section}.", f": {section}_", 1)
        raise ParamsError(msg) from None
    check_combinations(params, source, STEP_SECTIONS[step])
    return params


def rollout_margin(p: StudyParams) -> float:
    """The rollout's non-inferiority margin (absolute satisfaction): rollout.margin when set,
    else the quality budget's satisfaction line (points / 100)."""
    if p.rollout.margin is not None:
        return p.rollout.margin
    line = next(b for b in p.evaluate.budget if b.metric == "satisfaction")
    return line.max_drop / 100.0


def to_yaml(p: StudyParams) -> str:
    return yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False)
