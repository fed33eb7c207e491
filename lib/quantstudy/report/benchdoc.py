"""The tables of the committed benchmark pages, rendered from the ``metrics.json`` next to them.

    quantstudy bench-doc docs/gpu-benchmark-h100            # rewrite the page's tables
    quantstudy bench-doc docs/cpu-benchmark-1b-shapes --check  # exit 2 if the page has drifted

Each page (``FOLDER/README.md``) is hand-written prose around one generated block::

    <!-- BEGIN GENERATED: quantstudy bench-doc docs/gpu-benchmark-h100 -->
    ... tables rendered from metrics.json ...
    <!-- END GENERATED -->

Only the block is rewritten. Every number in it comes from the ``metrics.json`` files that
:func:`quantstudy.steps.benchmark.write_metrics` wrote; what those files do not record (a model's MLP
width, KV heads and vocabulary, the params file a run used) comes from the small explicit
:data:`PAGES` mapping below, which a test checks against the params files it names.
Rendering reads JSON only: no torch, no model loading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

END = "<!-- END GENERATED -->"
_BEGIN_PREFIX = "<!-- BEGIN GENERATED: quantstudy bench-doc "
PATH_ORDER = ("baseline", "naive4", "fast4")
# bytes per weight of the baseline model (quantstudy.steps.benchmark: float32 on a CPU, float16 on a GPU)
BASELINE_BYTES_PER_PARAM = {"cpu": 4, "cuda": 2}
_Metrics = list  # [(Run, path of its metrics.json, the parsed file)], in the page's run order


class BenchDocError(ValueError):
    """A page that cannot be rendered; the one-line message names the file and the fix."""


@dataclass(frozen=True)
class Shape:
    """What metrics.json does not record about a production-shaped model (its layer count it does)."""

    name: str  # "Llama-3.2-1B shape"
    intermediate_size: int  # the params' benchmark.prod_intermediate_size
    num_kv_heads: int  # benchmark.prod_num_kv_heads
    vocab_size: int  # benchmark.prod_vocab_size
    params: str  # the params file whose benchmark section has this shape


@dataclass(frozen=True)
class Run:
    """One ``quantstudy bench`` run of a page: its metrics.json and the command that wrote it."""

    subfolder: str  # metrics.json lives in FOLDER/subfolder ("" = FOLDER itself)
    shape: Shape  # the model of the run: the production-shaped one, or the checkpoint's (model="demo")
    command: str  # writes that metrics.json; "{out}" is the metrics folder
    model: str = "production"  # the metrics.json section the page reads: "production" or "demo" (--checkpoint)


@dataclass(frozen=True)
class Page:
    folder: str  # as the marker and the regenerate command name it
    runs: tuple[Run, ...]
    render: Callable[["Page", "_Metrics"], str]

    @property
    def begin(self) -> str:
        return f"{_BEGIN_PREFIX}{self.folder} -->"

    @property
    def regenerate(self) -> str:
        return f"quantstudy bench-doc {self.folder}"


# =========================================================================== formatting
def _f(v: float, digits: int) -> str:
    return f"{v:,.{digits}f}"


def _range(v: float, lo: float, hi: float, digits: int, unit: str = "") -> str:
    return f"{_f(v, digits)}{unit} [{_f(lo, digits)}, {_f(hi, digits)}]"


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _one_value(values: Iterable[Any]) -> str:
    """The value all runs share, or each run's value separated by ' / '."""
    values = list(values)
    distinct = list(dict.fromkeys(values))
    return str(distinct[0]) if len(distinct) == 1 else " / ".join(str(v) for v in values)


# =========================================================================== metrics access
class _Model:
    """One model's section of a metrics.json (``demo`` or ``production``), with lookups that
    fail with the file named instead of a bare KeyError."""

    def __init__(self, source: Path, name: str, section: Any):
        self.source, self.name = source, name
        if not isinstance(section, dict):
            raise self.error(f"no '{name}' section")
        self.section = section

    def error(self, what: str) -> BenchDocError:
        return BenchDocError(
            f"{self.source}: {what}; it is not a metrics.json written by `quantstudy bench`, "
            "rerun the benchmark or restore the file from git"
        )

    def records(self, key: str, **match: Any) -> list[dict[str, Any]]:
        recs = self.section.get(key)
        if not isinstance(recs, list):
            raise self.error(f"'{self.name}' has no '{key}' list")
        return [r for r in recs if all(r.get(k) == v for k, v in match.items())]

    def record(self, key: str, **match: Any) -> dict[str, Any]:
        found = self.records(key, **match)
        if len(found) != 1:
            where = ", ".join(f"{k}={v}" for k, v in match.items())
            raise self.error(f"'{self.name}.{key}' has {len(found)} rows for {where}, expected 1")
        return found[0]

    def value(self, rec: dict[str, Any], field: str, key: str) -> Any:
        if rec.get(field) is None:
            raise self.error(f"'{self.name}.{key}' row {rec.get('path')} lacks '{field}'")
        return rec[field]

    @property
    def env(self) -> dict[str, Any]:
        env = self.section.get("env")
        if not isinstance(env, dict):
            raise self.error(f"'{self.name}' has no 'env'")
        return env

    def paths(self, key: str = "speedups") -> list[str]:
        present = {r.get("path") for r in self.records(key)}
        return [p for p in PATH_ORDER if p in present] + sorted(p for p in present - set(PATH_ORDER) if p)

    def shapes(self, scope: str = "full_model") -> list[tuple[int, int]]:
        return sorted({(r["batch"], r["context"]) for r in self.records("speedups", scope=scope)})

    def layers(self) -> int:
        """The full model's decoder layers (the timed ones scaled up to it)."""
        full = self.env.get("full_num_layers")
        if full:
            return int(full)
        return int(self.value(self.records("timings")[0], "model_layers", "timings"))

    def timed_layers(self) -> int:
        return int(self.value(self.records("timings")[0], "timed_layers", "timings"))

    def setting(self, field: str) -> Any:
        return _one_value(self.value(r, field, "timings") for r in self.records("timings"))

    def million_params(self) -> str:
        """Parameters of the baseline model from its weight bytes (see BASELINE_BYTES_PER_PARAM)."""
        device = self.env.get("device")
        if device not in BASELINE_BYTES_PER_PARAM:
            raise self.error(f"'{self.name}.env.device' is {device!r}, expected cpu or cuda")
        wb = self.value(self.record("memory", path="baseline"), "weight_bytes_full_model", "memory")
        return f"{wb / BASELINE_BYTES_PER_PARAM[device] / 1e6:.1f}M"


def _load_metrics(path: Path, fix: str) -> dict[str, Any]:
    if not path.is_file():
        raise BenchDocError(f"{path} not found: write it with `{fix}` (or restore it from git)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BenchDocError(
            f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); rerun `{fix}` or restore it from git"
        ) from None
    if not isinstance(data, dict):
        raise BenchDocError(f"{path}: expected a JSON object written by `quantstudy bench`; rerun `{fix}`")
    return data


# =========================================================================== the CPU page
def _shape_label(m: _Model, shape: Shape) -> str:
    return (
        f"{shape.name}: {m.layers()} layers, MLP {shape.intermediate_size}, {shape.num_kv_heads} KV heads, "
        f"vocabulary {shape.vocab_size:,} (`{shape.params}`)"
    )


def render_cpu_shapes(page: Page, metrics: _Metrics) -> str:
    """fast4 vs float32 per production shape and batch: whole-model decode (median [min, max]
    of the repeats), decoder layers only, prefill."""
    models = [(_Model(src, "production", data.get("production")), run) for run, src, data in metrics]
    contexts = sorted({c for m, _ in models for _, c in m.shapes()})
    many_contexts = len(contexts) > 1
    rows = []
    for m, run in models:
        for batch, context in m.shapes():
            whole = m.record("speedups", path="fast4", batch=batch, context=context, scope="full_model")
            layers = m.record("speedups", path="fast4", batch=batch, context=context, scope="layers")
            rows.append(
                [
                    _shape_label(m, run.shape),
                    batch,
                    *([context] if many_contexts else []),
                    _range(
                        m.value(whole, "decode_speedup", "speedups"),
                        whole["decode_speedup_low"],
                        whole["decode_speedup_high"],
                        2,
                        "x",
                    ),
                    f"{m.value(layers, 'decode_speedup', 'speedups'):.2f}x",
                    f"{m.value(whole, 'prefill_speedup', 'speedups'):.2f}x",
                ]
            )
    timed = ", ".join(f"{m.timed_layers()} of {m.layers()} ({run.shape.name})" for m, run in models)
    lines = [
        f"Median of {_one_value(m.setting('repeats') for m, _ in models)} repeats, with the range of the repeats "
        f"in brackets; {_one_value(m.setting('decode_tokens') for m, _ in models)} decode tokens; context "
        f"{', '.join(str(c) for c in contexts)}. Decoder layers timed and scaled to the full depth: {timed}. "
        f"torch {_one_value(m.env.get('torch') for m, _ in models)}, "
        f"{_one_value(m.env.get('threads') for m, _ in models)} threads.",
        "",
        *_table(
            [
                "production shape",
                "batch",
                *(["context"] if many_contexts else []),
                "fast4 decode vs float32, whole model",
                "decoder layers only",
                "fast4 prefill vs float32",
            ],
            rows,
        ),
    ]
    notes = [(run, n) for (m, run) in models for n in (m.section.get("notes") or [])]
    if notes:
        lines += ["", "Notes the runs recorded:", ""]
        lines += [f"- `{run.subfolder or '.'}/metrics.json`: {n}" for run, n in notes]
    return "\n".join(lines)


# =========================================================================== the lm_head page
def _lm_head_row(run, src, data) -> list[Any]:
    """One model's row of the lm_head page: fast4 with its served head against the float32 baseline."""
    m = _Model(src, run.model, data.get(run.model))
    head = m.env.get("lm_head")
    if head is None:
        raise m.error("'env' lacks 'lm_head' (written by quantstudy bench since serve.lm_head)")
    batch, context = min(m.shapes())
    whole = m.record("speedups", path="fast4", batch=batch, context=context, scope="full_model")
    tok = m.record(
        "timings", path="fast4", batch=batch, context=context, scope="full_model", mode=whole.get("mode", "eager")
    )
    mem = m.record("memory", path="fast4")
    agree = m.record("agreement", path="fast4")
    label = (
        _shape_label(m, run.shape)
        if run.model == "production"
        else f"{run.shape.name}: {m.layers()} layers, vocabulary {run.shape.vocab_size:,} (`{run.shape.params}`)"
    )
    return [
        label,
        f"`{head}`",
        batch,
        _range(
            m.value(whole, "decode_speedup", "speedups"),
            whole["decode_speedup_low"],
            whole["decode_speedup_high"],
            2,
            "x",
        ),
        _range(m.value(tok, "decode_tok_s_median", "timings"), tok["decode_tok_s_min"], tok["decode_tok_s_max"], 2),
        _f(m.value(mem, "weight_bytes_full_model", "memory") / 1e6, 1),
        f"{m.value(agree, 'rel_rms_diff', 'agreement'):.4f}",
    ]


def render_lm_head(page: Page, metrics: _Metrics) -> str:
    """fast4 with each served output head (serve.lm_head) against the float32 baseline, per
    model: whole-model decode at batch 1 (median [min, max] of the repeats), tokens/s, the
    weights a full model holds in memory, and how far fast4's logits move from the
    dequantized checkpoint's on the probe prompt."""
    rows = [_lm_head_row(run, src, data) for run, src, data in metrics]
    models = [_Model(src, run.model, data.get(run.model)) for run, src, data in metrics]
    lines = [
        f"Median of {_one_value(m.setting('repeats') for m in models)} repeats, with the range of the repeats in "
        f"brackets; {_one_value(m.setting('decode_tokens') for m in models)} decode tokens; context "
        f"{_one_value(min(m.shapes())[1] for m in models)}; torch {_one_value(m.env.get('torch') for m in models)}, "
        f"{_one_value(m.env.get('threads') for m in models)} threads. Baseline: float32, its own float32 head.",
        "",
        *_table(
            [
                "model",
                "fast4 lm_head",
                "batch",
                "fast4 decode vs float32, whole model",
                "fast4 decode tokens/s",
                "fast4 weights in memory, full model (MB)",
                "fast4 logits vs dequantized checkpoint (rel. RMS)",
            ],
            rows,
        ),
    ]
    notes = [(run, n) for (run, _, data) in metrics for n in (data.get(run.model) or {}).get("notes") or []]
    if notes:
        lines += ["", "Notes the runs recorded:", ""]
        lines += [f"- `{run.subfolder or '.'}/metrics.json`: {n}" for run, n in notes]
    return "\n".join(lines)


# =========================================================================== the GPU page
def _gpu_speed_rows(models: dict[str, _Model], label: dict[str, str], with_modes: bool) -> list[list[Any]]:
    """Decode and prefill speed per model, path, timing mode and shape, against the baseline."""
    rows = []
    for name in ("production", "demo"):
        if name not in models:
            continue
        m = models[name]
        for path in m.paths():
            for mode in _modes(m):
                # eager rows: the whole model (scaled to full depth); graphed rows are measured whole
                scope = "measured" if mode == "graphed" else "full_model"
                for batch, context in m.shapes():
                    key = dict(path=path, batch=batch, context=context, scope=scope, **({"mode": mode} if mode else {}))
                    sp, t = m.record("speedups", **key), m.record("timings", **key)
                    rows.append(
                        [
                            label[name],
                            path,
                            *([mode] if with_modes else []),
                            batch,
                            context,
                            _range(
                                m.value(t, "decode_tok_s_median", "timings"),
                                t["decode_tok_s_min"],
                                t["decode_tok_s_max"],
                                1,
                            ),
                            _range(
                                m.value(sp, "decode_speedup", "speedups"),
                                sp["decode_speedup_low"],
                                sp["decode_speedup_high"],
                                2,
                            ),
                            _f(m.value(t, "prefill_tok_s_median", "timings"), 0),
                            _f(m.value(sp, "prefill_speedup", "speedups"), 2),
                        ]
                    )
    return rows


def _gpu_agreement_rows(models: dict[str, _Model], order: list[str]) -> tuple[list[list[Any]], set[Any]]:
    """Each path's logits against the baseline's, per model; and the prompt lengths used."""
    rows, tokens = [], set()
    for name in order:
        m = models[name]
        for path in m.paths("agreement"):
            a = m.record("agreement", path=path)
            tokens.add(a.get("tokens"))
            rows.append(
                [
                    name,
                    path,
                    f"{m.value(a, 'rel_rms_diff', 'agreement'):.4f}",
                    f"{m.value(a, 'top1_agreement', 'agreement'):.3f}",
                    a.get("loader", ""),
                ]
            )
    return rows, tokens


def _gpu_memory_rows(models: dict[str, _Model], order: list[str]) -> list[list[Any]]:
    """Weight MB and CUDA peak per model and path."""
    rows = []
    for name in order:
        m = models[name]
        for path in m.paths("memory"):
            r = m.record("memory", path=path)
            cuda = r.get("cuda_max_allocated_mb")
            rows.append(
                [
                    name,
                    path,
                    _f(m.value(r, "weight_bytes_full_model", "memory") / 1e6, 1),
                    "n/a" if cuda is None else _f(cuda, 1),
                ]
            )
    return rows


def _gpu_fleet_rows(prod: _Model) -> tuple[list[list[Any]], set[Any]]:
    """The production model's fleet per path and batch; and the contexts the estimates assume."""
    rows, contexts = [], set()
    for path in prod.paths("fleet"):
        for f in sorted(prod.records("fleet", path=path), key=lambda r: r.get("batch_size", 0)):
            contexts.add(f.get("context"))
            rows.append(
                [
                    path,
                    prod.value(f, "batch_size", "fleet"),
                    _f(prod.value(f, "decode_tokens_per_s_per_device", "fleet"), 1),
                    f"{prod.value(f, 'devices_at_peak', 'fleet'):,}",
                    f"${prod.value(f, 'cost_per_1000_conversations', 'fleet'):,.2f}",
                ]
            )
    return rows, contexts


def _gpu_models(run: Run, src: Path, data: dict[str, Any]) -> tuple[dict[str, _Model], dict[str, str]]:
    """The page's model sections (production required) and their labels."""
    models = {name: _Model(src, name, data.get(name)) for name in ("production", "demo") if name in data}
    if "production" not in models:
        raise BenchDocError(f"{src}: no 'production' section; rerun `{run.command}` without --no-production")
    prod = models["production"]
    label = {"production": f"{run.shape.name} ({prod.layers()} layers, vocab {run.shape.vocab_size:,})"}
    if "demo" in models:
        label["demo"] = f"demo ({models['demo'].million_params()})"
    return models, label


def render_gpu(page: Page, metrics: _Metrics) -> str:
    """Speed, agreement, memory and fleet tables of a `quantstudy bench --checkpoint` run."""
    ((run, src, data),) = metrics
    models, label = _gpu_models(run, src, data)
    with_modes = any(_modes(m) != [None] for m in models.values())
    speed_rows = _gpu_speed_rows(models, label, with_modes)
    order = [n for n in data if n in models]  # metrics.json's order (demo first)
    agree_rows, tokens = _gpu_agreement_rows(models, order)
    mem_rows = _gpu_memory_rows(models, order)
    fleet_rows, fleet_ctx = _gpu_fleet_rows(models["production"])
    every = list(models.values())
    lines = [
        f"## Speed (median [min, max] of {_one_value(m.setting('repeats') for m in every)} repeats; "
        f"{_one_value(m.setting('decode_tokens') for m in every)} decode tokens)",
        "",
        *_table(
            [
                "model",
                "path",
                *(["mode"] if with_modes else []),
                "batch",
                "context",
                "decode tok/s",
                f"decode x baseline{' (same mode)' if with_modes else ''}",
                "prefill tok/s",
                "prefill x baseline",
            ],
            speed_rows,
        ),
        "",
        *_harness_section(models, label),
        f"## Do the paths compute the same thing? (logits on one {_one_value(sorted(tokens, key=str))}-token "
        "prompt vs the baseline)",
        "",
        *_table(["model", "path", "RMS diff / RMS baseline", "top-1 agreement", "loader"], agree_rows),
        "",
        "## Memory",
        "",
        *_table(["model", "path", "weight MB (whole model)", "torch.cuda.max_memory_allocated MB"], mem_rows),
    ]
    if fleet_rows:
        lines += [
            "",
            f"## Fleet ({run.shape.name}, context {_one_value(sorted(fleet_ctx, key=str))}, price and traffic from "
            f"{run.shape.params}: assumptions)",
            "",
            *_table(
                ["path", "batch", "decode tok/s per GPU", "GPUs at peak", "cost per 1,000 conversations"], fleet_rows
            ),
        ]
    notes = [n for m in every for n in (m.section.get("notes") or [])]
    if notes:
        lines += ["", "Notes the run recorded:", "", *(f"- {n}" for n in notes)]
    return "\n".join(lines)


def _modes(m: _Model) -> list[str | None]:
    """The timing modes a model section holds, eager first ([None] for runs before modes existed)."""
    found = {r.get("mode") for r in m.records("timings")}
    return sorted(found, key=lambda v: (v != "eager", str(v)))


def _harness_section(models: dict[str, _Model], label: dict[str, str]) -> list[str]:
    """What the harness costs (graphed vs eager baseline) and the graphed 4-bit decode target."""
    rows = []
    for name, m in models.items():
        for h in m.section.get("harness") or []:
            rows.append(
                [
                    label[name],
                    h["batch"],
                    h["context"],
                    _range(
                        m.value(h, "decode_graphed_over_eager", "harness"),
                        h["decode_graphed_over_eager_low"],
                        h["decode_graphed_over_eager_high"],
                        2,
                        "x",
                    ),
                    f"{m.value(h, 'prefill_graphed_over_eager', 'harness'):.2f}x",
                ]
            )
    if not rows:
        return []
    lines = [
        "## What the harness costs (float16 baseline: CUDA-graphed decode vs HF eager, same weights)",
        "",
        *_table(["model", "batch", "context", "decode graphed / eager", "prefill graphed / eager"], rows),
        "",
    ]
    for name, m in models.items():
        goal = (m.section.get("targets") or {}).get("gpu_graphed_4bit_decode_speedup_b1")
        if goal:
            by_path = ", ".join(f"{p} {v:.2f}x" for p, v in sorted((goal.get("by_path") or {}).items()))
            lines += [
                f"Target ({label[name]}): graphed 4-bit decode at batch 1 at least {goal['target']:.1f}x the "
                f"graphed float16 baseline; measured {goal['measured']:.2f}x ({goal['where']}; by path: "
                f"{by_path}): **{'met' if goal['met'] else 'missed'}**.",
                "",
            ]
    return lines


# =========================================================================== the pages
LLAMA_1B = Shape(
    "Llama-3.2-1B shape", intermediate_size=8192, num_kv_heads=8, vocab_size=128256, params="params/tiny.yaml"
)
TINYLLAMA = Shape(
    "TinyLlama-1.1B shape",
    intermediate_size=5632,
    num_kv_heads=4,
    vocab_size=32000,
    params="params/cpu-tinyllama-shape.yaml",
)
GPU_1B = Shape("~1B-shaped", intermediate_size=8192, num_kv_heads=8, vocab_size=128256, params="params/gpu-demo.yaml")
GPU_1B_DEFAULT = Shape(
    "~1B-shaped", intermediate_size=8192, num_kv_heads=8, vocab_size=128256, params="params/gpu-default.yaml"
)

LLAMA_1B_DEFAULT = Shape(
    "Llama-3.2-1B shape", intermediate_size=8192, num_kv_heads=8, vocab_size=128256, params="params/default.yaml"
)
SMOLLM2 = Shape(
    "SmolLM2-135M-Instruct (the default study's model)",
    intermediate_size=1536,
    num_kv_heads=3,
    vocab_size=49152,
    params="params/default.yaml",
)
_SMOL_CKPT = (
    "--checkpoint outputs/default/02_quantize/checkpoints/awq-w4-g64-indomain-d0 "
    "--baseline outputs/default/02_quantize/baseline --no-production"
)


def _head_runs() -> tuple[Run, ...]:
    """Each model with each served head (float, bfloat16, int8), one `quantstudy bench` run each."""
    heads = ("float", "bfloat16", "int8")
    return tuple(
        [
            Run(f"llama-1b-{h}", LLAMA_1B_DEFAULT, f"quantstudy bench params/default.yaml --lm-head {h} --out {{out}}")
            for h in heads
        ]
        + [
            Run(
                f"tinyllama-{h}",
                TINYLLAMA,
                f"quantstudy bench params/cpu-tinyllama-shape.yaml --lm-head {h} --out {{out}}",
            )
            for h in heads
        ]
        + [
            Run(
                f"smollm2-{h}",
                SMOLLM2,
                f"quantstudy bench params/default.yaml --lm-head {h} {_SMOL_CKPT} --out {{out}}",
                model="demo",
            )
            for h in heads
        ]
    )


PAGES: dict[str, Page] = {
    p.folder.rsplit("/", 1)[-1]: p
    for p in (
        Page("docs/cpu-lm-head", _head_runs(), render_lm_head),
        Page(
            "docs/cpu-benchmark-1b-shapes",
            (
                Run("default", LLAMA_1B, "quantstudy bench params/tiny.yaml --out {out}"),
                Run("cpu-tinyllama-shape", TINYLLAMA, "quantstudy bench params/cpu-tinyllama-shape.yaml --out {out}"),
            ),
            render_cpu_shapes,
        ),
        Page(
            "docs/gpu-benchmark-h100",
            (
                Run(
                    "",
                    GPU_1B,
                    "quantstudy bench params/gpu-demo.yaml "
                    "--checkpoint outputs/smoke/02_quantize/checkpoints/awq-w4-g128-indomain-d0 --out {out}"
                    " (on a CUDA GPU)",
                ),
            ),
            render_gpu,
        ),
        Page(
            "docs/gpu-benchmark-h100-graphed",
            (
                Run(
                    "",
                    GPU_1B_DEFAULT,
                    "quantstudy bench params/gpu-default.yaml --out {out} (on a CUDA GPU; this run: "
                    "batch sizes [1, 32] and 2 repeats, to fit the lent machine's time)",
                ),
            ),
            render_gpu,
        ),
    )
}


def page_for(folder: str | Path) -> Page:
    """The page spec of a folder, by its name (a copy of the folder elsewhere renders the same)."""
    name = Path(folder).resolve().name
    if name not in PAGES:
        known = ", ".join(p.folder for p in PAGES.values())
        raise BenchDocError(
            f"{folder}: no bench-doc page for a folder named {name!r}; known pages: {known} "
            "(add one to quantstudy.report.benchdoc.PAGES)"
        )
    return PAGES[name]


def render_block(folder: str | Path) -> str:
    """The generated block's content (without the marker lines) from the folder's metrics.json."""
    folder = Path(folder)
    page = page_for(folder)
    metrics: _Metrics = []
    for run in page.runs:
        out = folder / run.subfolder if run.subfolder else folder
        metrics.append((run, out / "metrics.json", _load_metrics(out / "metrics.json", run.command.format(out=out))))
    return page.render(page, metrics)


def _split(readme: Path, page: Page) -> tuple[list[str], list[str]]:
    """(lines up to and including BEGIN, lines from END on) of the README."""
    if not readme.is_file():
        raise BenchDocError(
            f"{readme} not found: bench-doc fills the generated block of a hand-written page; "
            f"restore it from git or write one with the lines {page.begin!r} and {END!r}"
        )
    lines = readme.read_text(encoding="utf-8").splitlines()
    begins = [i for i, line in enumerate(lines) if line.strip() == page.begin]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        stray = [line.strip() for line in lines if line.strip().startswith(_BEGIN_PREFIX)]
        found = f" (found {stray[0]!r})" if stray and not begins else ""
        raise BenchDocError(
            f"{readme}: expected one line {page.begin!r} and, after it, one line {END!r} around the "
            f"generated tables{found}; add them (the tables go between)"
        )
    return lines[: begins[0] + 1], lines[ends[0] :]


def render_doc(folder: str | Path) -> str:
    """The whole README.md of `folder` with its generated block rendered from metrics.json."""
    folder = Path(folder)
    page = page_for(folder)
    head, tail = _split(folder / "README.md", page)
    return "\n".join([*head, render_block(folder), *tail]) + "\n"


def write_doc(folder: str | Path) -> bool:
    """Rewrite `folder`/README.md from its metrics.json; True if the file changed."""
    readme = Path(folder) / "README.md"
    text = render_doc(folder)
    if readme.read_text(encoding="utf-8") == text:
        return False
    readme.write_text(text, encoding="utf-8")
    return True


def check_doc(folder: str | Path) -> str | None:
    """None if `folder`/README.md is what its metrics give, else a one-line description of the drift."""
    readme = Path(folder) / "README.md"
    text = render_doc(folder)
    current = readme.read_text(encoding="utf-8")
    if current == text:
        return None
    old, new = current.splitlines(), text.splitlines()
    first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
    return (
        f"{readme} differs from its metrics.json (first at line {first + 1}); "
        f"run `quantstudy bench-doc {folder}` and commit the result"
    )
