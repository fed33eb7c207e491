"""Quantization: archive the baseline, AutoAWQ per calibration set, a round-to-nearest
reference, and one loader that turns any checkpoint back into a dense model for evaluation.

Checkpoints are standard AutoAWQ folders (``quantization_config`` in config.json, packed int32
``qweight``/``qzeros`` and float16 ``scales`` in safetensors, plus the tokenizer). At 3 bits
AutoAWQ packs nothing, so the AWQ search runs with ``export_compatible=True`` (scales and clipping
applied in float) and the weights are then rounded to 3 bits in simulation; such checkpoints are
dense float16 folders labelled ``"simulated": true`` in ``quantstudy_quant.json``.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantstudy import contracts
from quantstudy.metrics import scoring, stats
from quantstudy.awqformat.autoawq import quiet_awq
from quantstudy.paths import resolve

from quantstudy.awqformat import (CHECKSUMS, QUANT_META, CheckpointError, checkpoint_kind, checkpoint_size,  # noqa: F401
                                  dequantize_awq_state, load_checkpoint, pseudo_quantizer, read_tensors,
                                  resolve_device, sha256_file, vectorized_from_linear, verify_archive)


class QuantizeError(CheckpointError):
    """A model or setting the quantizer cannot handle; the message says what to change."""


_device = resolve_device
_tensors = read_tensors


# --------------------------------------------------------------------------- checks
# The model types AutoAWQ 0.2.9 quantizes (the keys of awq.models.auto.AWQ_CAUSAL_LM_MODEL_MAP),
# written out so that params validation does not import AutoAWQ (seconds, in every step); a
# test compares this list with the installed package's map.
AWQ_MODEL_TYPES = ("RefinedWeb", "RefinedWebModel", "Yi", "aquila", "baichuan", "bloom", "cohere", "deepseek_v2",
                   "deepseek_v3", "exaone", "falcon", "gemma", "gemma2", "gpt_bigcode", "gpt_neox", "gptj",
                   "internlm2", "llama", "llava", "llava_next", "minicpm", "minicpm3", "mistral", "mixtral", "mpt",
                   "opt", "phi3", "phi3_v", "qwen", "qwen2", "qwen2_5_omni", "qwen2_5_vl", "qwen2_vl", "qwen3",
                   "qwen3_moe", "stablelm", "starcoder2")


def supported_model_types() -> list[str]:
    return sorted(AWQ_MODEL_TYPES)


def read_config(model: Any) -> dict:
    """config.json of a local folder, the header of a GGUF file, or a hub id's config through
    transformers (needs network). ``model`` is the params' model section or a folder path."""
    from quantstudy import modelsource

    if not isinstance(model, (str, Path)):
        found = modelsource.model_config(model)
        if found is not None:
            return found[1]
        model_path = model.path
    else:
        model_path = model
    folder = resolve(model_path)
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text())
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(model_path)).to_dict()
    except Exception as exc:  # network or unknown id
        raise QuantizeError(f"model.path: cannot read a config for {model_path!r} ({exc.__class__.__name__}); "
                            "give a local model folder, or a hub id on a machine with network") from None


def check_model(config: dict, group_size: int, bits: list[int] | tuple[int, ...] = (4,)) -> None:
    """Fail before any search: unsupported architecture, or a group size that splits a row."""
    mtype = config.get("model_type")
    supported = supported_model_types()
    if mtype not in supported:
        raise QuantizeError(f"model type {mtype!r} is not supported by AutoAWQ 0.2.9; "
                            f"supported types: {', '.join(supported)}")
    widths = {k: config.get(k) for k in ("hidden_size", "intermediate_size")}
    for key, width in widths.items():
        if isinstance(width, int) and width % group_size:
            raise QuantizeError(f"quantize.group_size={group_size} does not divide {key}={width}: every quantized "
                                f"layer's input width must be a multiple of the group size; choose a divisor of {width}")
    for b in bits:
        if b not in (3, 4):
            raise QuantizeError(f"quantize.bits: {b} is not supported; use 4 (packed) or 3 (simulated)")


def checkpoint_name(method: str, bits: int, group_size: int, source: str | None = None, draw: int | None = None,
                    tag: str | None = None) -> str:
    """e.g. awq-w4-g128-indomain-d0, rtn-w4-g128, awq-w3-g128-generic-d1-sim."""
    parts = [method, f"w{bits}", f"g{group_size}"]
    if source:
        parts.append(source.replace("_", ""))
    if draw is not None:
        parts.append(f"d{draw}")
    if tag:
        parts.append(tag)
    if bits < 4:
        parts.append("sim")
    return "-".join(parts)


# --------------------------------------------------------------------------- archive
def archive_baseline(model: Any, dst: str | Path) -> dict[str, str]:
    """Write the full-precision model as a local folder (a copy of an embedded folder; a hub
    model or a GGUF file converted once to float weights) and its SHA256SUMS.

    ``model`` is the params' model section (or, for an embedded folder, its path).
    Returns {file: sha256}.
    """
    from quantstudy import modelsource
    from quantstudy.config.params import ModelSection

    if isinstance(model, (str, Path)):
        model = ModelSection(source="embedded", path=str(model))
    dst = Path(dst)
    try:
        modelsource.materialize(model, dst, dtype=model.dtype)
    except modelsource.ModelSourceError as exc:
        raise QuantizeError(str(exc)) from None
    sums = {str(p.relative_to(dst)): sha256_file(p) for p in sorted(dst.rglob("*")) if p.is_file()}
    (dst / CHECKSUMS).write_text("".join(f"{h}  {name}\n" for name, h in sums.items()))
    return sums



# --------------------------------------------------------------------------- memory
class PeakRSS:
    """Samples this process's resident memory in a thread; `.peak_mb` after the block."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss_bytes() -> int:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self.rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_bytes())

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


# --------------------------------------------------------------------------- quantizers
def _load_awq_model(model_path: str, dtype: torch.dtype, trust_remote_code: bool = False):
    quiet_awq()
    from awq import AutoAWQForCausalLM

    src = resolve(model_path)
    path = str(src) if src.exists() else model_path
    return AutoAWQForCausalLM.from_pretrained(path, torch_dtype=dtype, device_map=None,
                                              trust_remote_code=trust_remote_code, safetensors=True,
                                              low_cpu_mem_usage=True, use_cache=False)


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


@dataclass
class QuantRequest:
    model_path: str
    out_dir: Path
    bits: int = 4
    group_size: int = 128
    zero_point: bool = True
    version: str = "GEMM"
    duo_scaling: bool = False
    apply_clip: bool = False
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    search_autocast: str | None = None  # e.g. "bfloat16": the search's matmuls only; weights stay in dtype


def _quant_config(req: QuantRequest) -> dict:
    return {"zero_point": req.zero_point, "q_group_size": req.group_size, "w_bit": req.bits, "version": req.version}


def _save(awq_model, tokenizer, req: QuantRequest, meta: dict) -> None:
    out = Path(req.out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if meta["simulated"]:
        # Dense fake-quantized weights, stored in float16 like any 16-bit model.
        awq_model.model.config.torch_dtype = "float16"
        awq_model.model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    else:
        awq_model.model.to(torch.float16)  # float scales -> float16, as AutoAWQ checkpoints ship
        awq_model.save_quantized(str(out))
    tokenizer.save_pretrained(out)
    (out / QUANT_META).write_text(json.dumps(meta, indent=2))
    follow_umask(out)


def follow_umask(folder: Path) -> None:
    """AutoAWQ writes its safetensors readable by the owner only (0600); results meant to be
    shared get the user's umask like every other file."""
    mask = os.umask(0)
    os.umask(mask)
    for f in Path(folder).rglob("*"):
        if f.is_file():
            os.chmod(f, 0o666 & ~mask)


def _simulate_low_bits(awq_model, bits: int, group_size: int, zero_point: bool) -> None:
    """Round every decoder linear to `bits` in place (AutoAWQ's own pseudo-quantizer)."""
    quiet_awq()
    from awq.utils.module import get_named_linears

    q = pseudo_quantizer(bits, group_size, zero_point)
    for layer in awq_model.get_model_layers(awq_model.model):
        for _, lin in get_named_linears(layer).items():
            lin.weight.data = q.pseudo_quantize_tensor(lin.weight.data.float())[0].to(lin.weight.dtype)


def search_precision(req: QuantRequest):
    """The precision of the AWQ search's forward passes.

    ``search_autocast: bfloat16`` runs the matmuls of the grid search under autocast (bfloat16
    inputs, float32 accumulation), as AutoAWQ's search runs in float16 on a GPU; the weights,
    the scales, the pseudo-quantizer and the loss stay in ``model.dtype``. On this CPU a
    bfloat16 matmul is about 2.5x a float32 one. ``None``: the model's own dtype throughout.

    The autocast weight cache must be off: the search rewrites ``weight.data`` in place for
    every grid point, and a cached low-precision copy of the original weight would make every
    candidate score alike, so the search would silently pick scale 1 (plain rounding)."""
    import contextlib

    if not req.search_autocast:
        return contextlib.nullcontext()
    return torch.autocast(device_type=_device(req.device), dtype=_dtype(req.search_autocast), cache_enabled=False)


def quantize_awq(req: QuantRequest, tokenizer, samples: list[list[int]], max_seq_len: int,
                 source: str = "", draw: int | None = None) -> dict:
    """Run AutoAWQ's search on token-id samples (each <= max_seq_len) and save the checkpoint."""
    if not samples:
        raise QuantizeError(f"calibration set {source or '?'} is empty: nothing to calibrate on")
    too_long = [len(s) for s in samples if len(s) > max_seq_len]
    if too_long:
        raise QuantizeError(f"{len(too_long)} calibration samples exceed max_seq_len={max_seq_len}; "
                            "AutoAWQ would silently discard them: split them first (quantstudy.steps.calibration)")
    simulated = req.bits < 4
    t0 = time.time()
    with PeakRSS() as mem:
        model = _load_awq_model(req.model_path, _dtype(req.dtype), req.trust_remote_code)
        model.model.to(_device(req.device))
        t_search = time.time()
        with search_precision(req), vectorized_from_linear():
            model.quantize(tokenizer, quant_config=_quant_config(req), calib_data=samples,
                           max_calib_samples=len(samples), max_calib_seq_len=max_seq_len,
                           duo_scaling=req.duo_scaling, apply_clip=req.apply_clip,
                           export_compatible=simulated, n_parallel_calib_samples=None)
        search_s = time.time() - t_search
        if simulated:
            _simulate_low_bits(model, req.bits, req.group_size, req.zero_point)
        meta = {"method": "awq", "bits": req.bits, "group_size": req.group_size, "zero_point": req.zero_point,
                "version": req.version, "duo_scaling": req.duo_scaling, "apply_clip": req.apply_clip,
                "search_autocast": req.search_autocast, "simulated": simulated, "calibration_source": source, "draw": draw,
                "calibration_samples": len(samples), "calibration_tokens": int(sum(map(len, samples))),
                "base_model": str(req.model_path)}
        _save(model, tokenizer, req, meta)
    record = {**meta, "name": Path(req.out_dir).name, "search_wall_s": round(search_s, 2),
              "total_wall_s": round(time.time() - t0, 2), "peak_rss_mb": mem.peak_mb,
              **checkpoint_size(req.out_dir)}
    _write_meta(req.out_dir, record)
    return record


class _RoundToNearest:
    """AutoAWQ's own per-layer quantize-and-pack (`_apply_quant`) with no search at all."""

    def __init__(self, awq_model, bits: int, group_size: int, zero_point: bool, version: str):
        self.q = pseudo_quantizer(bits, group_size, zero_point)
        self.q.awq_model, self.q.model = awq_model, awq_model.model
        self.q.version = version.lower()
        self.q.modules_to_not_convert = getattr(awq_model, "modules_to_not_convert", None) or []

    def run(self) -> None:
        from tqdm.auto import tqdm
        quiet_awq()
        from awq.utils.module import exclude_layers_to_not_quantize, get_named_linears

        for layer in tqdm(self.q.awq_model.get_model_layers(self.q.model), desc="RTN", leave=False):
            linears = exclude_layers_to_not_quantize(get_named_linears(layer), self.q.modules_to_not_convert)
            self.q._apply_quant(layer, linears)


def quantize_rtn(req: QuantRequest, tokenizer) -> dict:
    """Round-to-nearest reference, no calibration, same packed AutoAWQ format (4-bit) or simulated (3-bit)."""
    quiet_awq()
    from awq.models._config import AwqConfig

    simulated = req.bits < 4
    t0 = time.time()
    with PeakRSS() as mem:
        model = _load_awq_model(req.model_path, _dtype(req.dtype), req.trust_remote_code)
        if simulated:
            _simulate_low_bits(model, req.bits, req.group_size, req.zero_point)
        else:
            with vectorized_from_linear():
                _RoundToNearest(model, req.bits, req.group_size, req.zero_point, req.version).run()
            model.quant_config = AwqConfig.from_dict(_quant_config(req))
            model.is_quantized = True
        meta = {"method": "rtn", "bits": req.bits, "group_size": req.group_size, "zero_point": req.zero_point,
                "version": req.version, "simulated": simulated, "calibration_source": None, "draw": None,
                "calibration_samples": 0, "calibration_tokens": 0, "base_model": str(req.model_path)}
        _save(model, tokenizer, req, meta)
    record = {**meta, "name": Path(req.out_dir).name, "search_wall_s": 0.0,
              "total_wall_s": round(time.time() - t0, 2), "peak_rss_mb": mem.peak_mb, **checkpoint_size(req.out_dir)}
    _write_meta(req.out_dir, record)
    return record


def _write_meta(out_dir: Path, record: dict) -> None:
    (Path(out_dir) / QUANT_META).write_text(json.dumps(record, indent=2))


# --------------------------------------------------------------------------- diagnostics
@torch.no_grad()
def activation_outliers(model, batches: list[torch.Tensor]) -> list[dict]:
    """Per linear layer: max / median of the per-input-channel mean |x| over the batches.

    Real LLMs show a few channels tens to hundreds of times the median: those are the
    channels AWQ's scales protect.
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook(name):
        def fn(_mod, inp, _out):
            x = inp[0].detach().float().reshape(-1, inp[0].shape[-1])
            sums[name] = sums.get(name, 0) + x.abs().sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and name != "lm_head":
            hooks.append(mod.register_forward_hook(hook(name)))
    try:
        for b in batches:
            model(input_ids=b)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for name, s in sums.items():
        mean_abs = s / counts[name]
        med = mean_abs.median().item()
        rows.append({"layer": name, "max_over_median": round(mean_abs.max().item() / max(med, 1e-12), 2),
                     "top_channel": int(mean_abs.argmax()), "median_mean_abs": round(med, 5)})
    return rows


def env_info() -> dict[str, Any]:
    return {"torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), "pid": os.getpid()}


# --------------------------------------------------------------------------- the step
SEARCH_VARIANTS = ((False, False), (True, False), (False, True), (True, True))  # (duo_scaling, apply_clip)


def plan_checkpoints(P, set_records: list[dict]) -> list[dict]:
    """AWQ per calibration set x bit width, RTN per bit width, and (optionally) the other
    AutoAWQ search settings on in-domain draw 0, so the default is chosen from measurements."""
    q = P.quantize
    plan = []
    for bits in q.bits:
        if q.rtn_reference:
            plan.append({"method": "rtn", "bits": bits, "set": None, "duo_scaling": None, "apply_clip": None,
                         "name": checkpoint_name("rtn", bits, q.group_size)})
        for rec in set_records:
            tag = f"n{rec['n_samples']}" if rec.get("sweep") else None
            plan.append({"method": "awq", "bits": bits, "set": rec["name"], "source": rec["source"], "draw": rec["draw"],
                         "n_samples": rec["n_samples"], "sweep": rec.get("sweep", False),
                         "duo_scaling": q.duo_scaling, "apply_clip": q.apply_clip,
                         "name": checkpoint_name("awq", bits, q.group_size, rec["source"], rec["draw"], tag)})
    if q.compare_search_settings:
        base = next((r for r in set_records if r["source"] == "in_domain" and r["draw"] == 0 and not r.get("sweep")),
                    set_records[0] if set_records else None)
        if base is not None:
            for duo, clip in SEARCH_VARIANTS:
                if (duo, clip) == (q.duo_scaling, q.apply_clip):
                    continue
                tag = f"duo{int(duo)}-clip{int(clip)}"
                plan.append({"method": "awq", "bits": 4, "set": base["name"], "source": base["source"],
                             "draw": base["draw"], "n_samples": base["n_samples"], "sweep": False, "variant": True,
                             "duo_scaling": duo, "apply_clip": clip,
                             "name": checkpoint_name("awq", 4, q.group_size, base["source"], base["draw"], tag)})
    return plan


def run_plan(P, plan: list[dict], baseline_dir: Path, sets_dir: Path, output_dir: Path) -> list[dict]:
    """Quantize every planned checkpoint under output_dir/checkpoints; a record per checkpoint is
    written as soon as it exists (records.jsonl), so a later failure loses nothing."""
    from transformers import AutoTokenizer

    from quantstudy.steps.calibration import load_set

    tokenizer = AutoTokenizer.from_pretrained(str(baseline_dir))
    out = Path(output_dir) / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    log = Path(output_dir) / "records.jsonl"
    records = []
    from tqdm.auto import tqdm

    for spec in tqdm(plan, desc="quantize"):
        req = QuantRequest(model_path=str(baseline_dir), out_dir=out / spec["name"], bits=spec["bits"],
                           group_size=P.quantize.group_size, zero_point=P.quantize.zero_point,
                           version=P.quantize.version, duo_scaling=bool(spec["duo_scaling"]),
                           apply_clip=bool(spec["apply_clip"]), dtype=P.model.dtype, device=P.study.device,
                           trust_remote_code=P.model.trust_remote_code,
                           search_autocast=P.quantize.search_autocast)
        if spec["method"] == "rtn":
            rec = quantize_rtn(req, tokenizer)
        else:
            samples, meta = load_set(Path(sets_dir) / spec["set"])
            rec = quantize_awq(req, tokenizer, samples, meta["max_seq_len"], spec["source"], spec["draw"])
        rec.update({k: spec.get(k) for k in ("set", "sweep", "variant", "n_samples")})
        if rec["simulated"] and rec.get("effective_bits_per_weight") is None:
            # What it would take if packed: bits + (fp16 scale + packed zero) per group.
            rec["effective_bits_per_weight"] = round(rec["bits"] + (16 + rec["bits"]) / P.quantize.group_size, 4)
            rec["effective_bits_note"] = "nominal (simulated, not packed)"
        records.append(rec)
        with open(log, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
    return records


def sanity_perplexities(P, records: list[dict], baseline_dir: Path, output_dir: Path, texts: dict[str, list[str]],
                        max_tokens: int | None = None) -> list[dict]:
    """Perplexity of the baseline and every checkpoint on held-out text of each domain
    (``quantize.sanity_tokens`` tokens each, in ``model.eval_dtype``), and the flag: an AWQ
    checkpoint worse than RTN (same bits) on its own calibration domain."""
    from tqdm.auto import tqdm

    max_tokens = max_tokens or P.quantize.sanity_tokens
    dtype = _dtype(P.model.eval_dtype)
    base, tok, _ = load_checkpoint(baseline_dir, device=P.study.device, dtype=dtype)
    streams = {d: scoring.build_stream(tok, t, P.evaluate.window, P.evaluate.stride, max_tokens) for d, t in texts.items()}
    base_nll = {d: scoring.score_stream(base, s)["nll"] for d, s in streams.items()}
    rows = [{"name": "baseline", "method": "baseline", "bits": 16,
             **{f"ppl_{d}": stats.perplexity(v) for d, v in base_nll.items()}}]
    del base
    nll: dict[str, dict[str, np.ndarray]] = {}
    for rec in tqdm(records, desc="sanity ppl"):
        model, _, _ = load_checkpoint(Path(output_dir) / "checkpoints" / rec["name"], device=P.study.device, dtype=dtype)
        nll[rec["name"]] = {d: scoring.score_stream(model, s)["nll"] for d, s in streams.items()}
        rows.append({"name": rec["name"], "method": rec["method"], "bits": rec["bits"],
                     **{f"ppl_{d}": stats.perplexity(v) for d, v in nll[rec["name"]].items()}})
        del model
    by_name = {r["name"]: r for r in rows}
    for rec in records:
        if rec["method"] != "awq":
            continue
        rtn = checkpoint_name("rtn", rec["bits"], rec["group_size"])
        own = {"generic": ["generic"], "in_domain": ["in_domain"], "mixed": ["generic", "in_domain"]}[rec["calibration_source"]]
        row = by_name[rec["name"]]
        row["own_domains"] = own
        if rtn in nll:
            worse = []
            for d in own:
                ci = stats.paired_bootstrap(nll[rtn][d], nll[rec["name"]][d], "ppl_pct", n=P.evaluate.bootstrap_samples,
                                            seed=P.study.seed, groups=streams[d].window_of_token)
                row[f"vs_rtn_pct_{d}"] = ci
                if ci["point"] > 0:
                    worse.append(d)
            row["worse_than_rtn_on_own_domain"] = bool(worse)
            row["worse_domains"] = worse
    return rows


def calibration_sets(calibration_dir: str | Path) -> list[dict]:
    """The set records step 01 wrote (its metrics.json), checked to exist on disk."""
    folder = resolve(calibration_dir)
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        raise QuantizeError(f"{metrics} not found: run step 01_calibration first (input_dirs['01_calibration'])")
    sets = contracts.read("01_calibration", folder)["sets"]
    for s in sets:
        if not (folder / "sets" / s["name"] / "set.json").is_file():
            raise QuantizeError(f"calibration set {s['name']!r} is missing under {folder / 'sets'}; re-run step 01")
    return sets


def rollback_line(baseline_dir: Path) -> str:
    """The one line that verifies the archived baseline and points serving back at it."""
    rel = _rel(baseline_dir)
    return f"(cd {rel} && sha256sum --quiet -c {CHECKSUMS}) && export MODEL_PATH={rel}"


def _rel(path: Path) -> str:
    from quantstudy.paths import project_root

    try:
        return str(Path(path).resolve().relative_to(project_root()))
    except ValueError:
        return str(path)


def sanity_texts(P, baseline_dir: Path, max_docs: int = 400) -> dict[str, list[str]]:
    """Held-out text of each calibration domain (never calibration text); conversations in the
    model's chat template when it has one, as evaluation renders them."""
    from transformers import AutoTokenizer

    from quantstudy import data

    tok = AutoTokenizer.from_pretrained(str(baseline_dir))
    generic = data.load_generic_texts(P.data, "eval")[:max_docs]
    convs = data.load_in_domain(P.data, "eval", seed=P.study.seed)[:max_docs]
    return {"generic": generic, "in_domain": [data.conversation_to_text(c, tok) for c in convs]}


def plan_table(plan: list[dict]):
    import pandas as pd

    return pd.DataFrame(plan).set_index("name")


def records_table(records: list[dict]):
    import pandas as pd

    cols = ["method", "bits", "calibration_source", "draw", "n_samples", "duo_scaling", "apply_clip", "simulated",
            "search_wall_s", "peak_rss_mb", "checkpoint_bytes", "effective_bits_per_weight"]
    return pd.DataFrame([{"name": r["name"], **{c: r.get(c) for c in cols}} for r in records]).set_index("name")


def sanity_table(rows: list[dict]):
    import pandas as pd

    out = []
    for r in rows:
        row = {"name": r["name"], "method": r["method"], "bits": r["bits"],
               "ppl generic": round(r.get("ppl_generic", float("nan")), 3),
               "ppl in-domain": round(r.get("ppl_in_domain", float("nan")), 4)}
        for d in ("generic", "in_domain"):
            ci = r.get(f"vs_rtn_pct_{d}")
            row[f"vs RTN, {d} (%)"] = f"{ci['point']:+.2f} [{ci['lo']:+.2f}, {ci['hi']:+.2f}]" if ci else ""
        row["worse than RTN on own domain"] = r.get("worse_than_rtn_on_own_domain", "")
        out.append(row)
    return pd.DataFrame(out).set_index("name")


def plot_search_settings(records: list[dict], sanity: list[dict]):
    """AutoAWQ search settings on the same calibration set: quality (in-domain perplexity vs RTN)
    against search wall time."""
    import matplotlib.pyplot as plt

    by = {r["name"]: r for r in sanity}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ref = next((r for r in records if r.get("variant")), None)
    chosen = [r for r in records if r["method"] == "awq" and ref and r["set"] == ref["set"] and r["bits"] == 4]
    for r in chosen:
        s = by[r["name"]]
        ci = s.get("vs_rtn_pct_in_domain") or {"point": float("nan"), "lo": float("nan"), "hi": float("nan")}
        label = f"duo_scaling={r['duo_scaling']}, apply_clip={r['apply_clip']}"
        ax.errorbar(r["search_wall_s"], ci["point"], yerr=[[ci["point"] - ci["lo"]], [ci["hi"] - ci["point"]]],
                    fmt="o", capsize=4, label=label)
    ax.axhline(0, color="grey", lw=1, ls="--", label="round-to-nearest")
    ax.set(title="AutoAWQ search settings (same in-domain calibration set)", xlabel="search wall time (s)",
           ylabel="in-domain perplexity vs RTN (%, 95% CI)\nbelow 0 = better than RTN")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_metrics(output_dir: str | Path, P, records: list[dict], sanity: list[dict], archive: dict,
                  wall_s: float, calibration_dir: str | Path | None = None) -> dict:
    """metrics.json of step 02, with the performance targets checked as measured figures."""
    awq = [r for r in records if r["method"] == "awq"]
    default_search = [r["search_wall_s"] for r in awq if not r.get("variant")]
    cal_wall = None
    if calibration_dir and (resolve(calibration_dir) / contracts.FILENAME).is_file():
        cal_wall = contracts.read("01_calibration", calibration_dir)["wall_s"]
    flagged = [r["name"] for r in sanity if r.get("worse_than_rtn_on_own_domain")]
    variants = []
    by = {r["name"]: r for r in sanity}
    for r in awq:
        if r.get("variant") or (awq and r["set"] == next((v["set"] for v in awq if v.get("variant")), None) and r["bits"] == 4):
            variants.append({"name": r["name"], "duo_scaling": r["duo_scaling"], "apply_clip": r["apply_clip"],
                             "search_wall_s": r["search_wall_s"], "vs_rtn_in_domain": by[r["name"]].get("vs_rtn_pct_in_domain"),
                             "ppl_in_domain": by[r["name"]].get("ppl_in_domain")})
    metrics = {
        "baseline_archive": {"files": archive, "rollback": rollback_line(Path(output_dir) / "baseline")},
        "checkpoints": records, "sanity": sanity, "worse_than_rtn_on_own_domain": flagged,
        "search_settings": variants,
        "targets": {
            "awq_search_s_max": {"measured": max(default_search) if default_search else None,
                                 "target": P.targets.awq_search_s_max,
                                 "met": bool(default_search) and max(default_search) <= P.targets.awq_search_s_max},
            "steps_01_02_wall_s": {"measured": round(wall_s + (cal_wall or 0), 1), "target": P.targets.steps_01_02_wall_s,
                                   "met": (wall_s + (cal_wall or 0)) <= P.targets.steps_01_02_wall_s, "step_01_s": cal_wall,
                                   "step_02_s": round(wall_s, 1)},
        },
        "wall_s": round(wall_s, 1),
    }
    return contracts.write("02_quantize", output_dir, metrics, default=str)
