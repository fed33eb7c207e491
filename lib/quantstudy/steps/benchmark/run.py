"""The step's driver: benchmark every requested path of a checkpoint (:func:`run_benchmark`)
or of the production-shaped model (:func:`production_benchmark`), pick step 02's served
checkpoint, write step 04's metrics.json, and the ``quantstudy bench`` entry point."""

from __future__ import annotations

import gc
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import matplotlib
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from quantstudy import contracts, serving
from quantstudy.config.params import BenchmarkSection
from quantstudy.paths import resolve
from quantstudy.steps.benchmark.convert import LOADER, convert_model, load_tensors
from quantstudy.steps.benchmark.devices import BenchError, available_paths, resolve_device, short_error
from quantstudy.steps.benchmark.fleet import fleet_rows
from quantstudy.steps.benchmark.goals import targets, with_head
from quantstudy.steps.benchmark.memory import disk_bytes, free_memory, memory_row, quantized_linear_bytes
from quantstudy.steps.benchmark.probe import agreement, probe_logits
from quantstudy.steps.benchmark.production import production_model
from quantstudy.steps.benchmark.section import bench_section
from quantstudy.steps.benchmark.timing import time_graphed, time_model
from quantstudy.steps.benchmark.traps import flag_traps, harness_table, speedup_table
from quantstudy.steps.benchmark.views import plot_decode_scaling, plot_memory, plot_speedups
from quantstudy.steps.quantize import PeakRSS


@dataclass
class _Request:
    """What every path of one run is built and timed with."""

    folder: Path
    baseline: str | Path | nn.Module | None
    p: BenchmarkSection
    device: str
    full_num_layers: int | None
    seed: int
    inner_k_tiles: int
    lm_head: str


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # pragma: no cover - not on Linux/macOS
        return None


def _cpu_used_by_others(window_s: float = 1.0) -> float | None:
    """Cores' worth of CPU that other processes used during `window_s` (Linux ``/proc/stat``:
    all cores' busy time less this process's own), or None where that cannot be read.

    The load average cannot tell this: one minute after a study's step 03 it still counts the
    step's own finished work, and flagged every default study as busy."""

    def busy_s() -> float:
        with open("/proc/stat") as f:
            t = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return (sum(t) - t[3] - t[4]) / os.sysconf("SC_CLK_TCK")

    try:
        b0, own0, t0 = busy_s(), time.process_time(), time.monotonic()
        time.sleep(window_s)
        b1, own1, t1 = busy_s(), time.process_time(), time.monotonic()
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return None
    return round(max(0.0, (b1 - b0) - (own1 - own0)) / (t1 - t0), 2)


def _plan_paths(
    p: BenchmarkSection, device: str, avail: dict[str, str | None], lm_head: str
) -> tuple[list[str], list[str], dict[str, float | None]]:
    """(the paths to run, baseline first; the notes on what was added, skipped or disturbs the
    timing; how busy the machine was before timing). Raises :class:`BenchError` without a baseline."""
    ok = [k for k, v in avail.items() if v is None]
    notes: list[str] = []
    requested = list(dict.fromkeys(p.paths))
    if "baseline" not in requested:
        notes.append("baseline added: speed-ups need it")
    requested = ["baseline", *(q for q in requested if q != "baseline")]  # first: the others compare to it
    if avail["baseline"] is not None:
        raise BenchError(
            f"required path 'baseline' is unavailable on {device}: {avail['baseline']}; "
            f"available paths: {', '.join(ok) or 'none'}"
        )
    load = {"load_average": _load_average(), "cpu_used_by_others": _cpu_used_by_others()}
    cores = os.cpu_count() or 1
    others = load["cpu_used_by_others"]
    if others is None:  # no /proc/stat: the load average is the only sign
        others, how, limit = load["load_average"], "1-min load average", 0.5 * cores
    else:
        how, limit = "cores' worth of CPU used by other processes over 1 s", 0.25 * cores
    if others is not None and others > limit:
        notes.append(
            f"machine busy before timing ({others:.2f} {how}, on {cores} cores): other "
            "processes compete for the cores and memory bandwidth, so absolute tokens/s are low and noisy; "
            "ratios between paths are more robust but still affected"
        )
    if lm_head != "float" and "fast4" in requested and device == "cpu":
        notes.append(
            f"fast4 serves its output head as {lm_head} (serve.lm_head; in a study, step 03 scores that "
            "configuration as its own row)"
        )
    paths = []
    for path in requested:
        if avail.get(path):
            notes.append(f"{path} skipped: {avail[path]}")
        else:
            paths.append(path)
    if "graphed" in p.modes and device == "cpu":
        notes.append(
            "graphed mode on cpu: the static-cache loop of quantstudy.steps.benchmark.decode runs without "
            "CUDA graphs (a CPU has none), so it measures the loop, not graph replay"
        )
    return paths, notes, load


def _set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (when given) -> the count before, to restore."""
    prev_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise BenchError(f"threads: expected a positive count; found {threads}")
        torch.set_num_threads(threads)
    return prev_threads


def _time_path(model: nn.Module, path: str, req: _Request, bar, notes: list[str]) -> list[dict[str, Any]]:
    """The eager and/or graphed timing rows of one built model."""
    p = req.p
    timings: list[dict[str, Any]] = []
    if "eager" in p.modes:
        timings += time_model(
            model,
            path,
            p.batch_sizes,
            p.context_lengths,
            p.decode_tokens,
            p.warmup,
            p.repeats,
            req.device,
            full_num_layers=req.full_num_layers,
            seed=req.seed,
            progress=bar,
        )
    if "graphed" in p.modes:  # a shape that fails costs its graphed row only (noted), not the run
        timings += time_graphed(
            model,
            path,
            p.batch_sizes,
            p.context_lengths,
            p.decode_tokens,
            p.warmup,
            p.repeats,
            req.device,
            seed=req.seed,
            progress=bar,
            notes=notes,
        )
    return timings


def _bench_path(path: str, req: _Request, bar) -> dict[str, Any]:
    """Build one path's model, score the probe prompt, time it, account its memory, free it."""
    device, baseline = req.device, req.baseline
    free_memory(device)
    rss_before = PeakRSS.rss_bytes()
    with PeakRSS() as build_mem:
        src = baseline if (path == "baseline" and baseline is not None) else req.folder
        model = convert_model(src, path, device, inner_k_tiles=req.inner_k_tiles, lm_head=req.lm_head)
    gc.collect()
    rss_built = PeakRSS.rss_bytes()
    logits = probe_logits(model, device, seed=req.seed)
    notes: list[str] = []
    with PeakRSS() as run_mem:
        timings = _time_path(model, path, req, bar, notes)
    if path == "baseline":
        disk = disk_bytes(baseline) if isinstance(baseline, (str, Path)) else None
    else:
        disk = disk_bytes(req.folder)
    memory = memory_row(path, model, disk, req.full_num_layers, device, rss_before, build_mem, rss_built, run_mem)
    loader = getattr(model, "quantstudy_loader", LOADER)
    del model
    free_memory(device)
    return {"timings": timings, "memory": memory, "logits": logits, "loader": loader, "notes": notes}


def _reference_logits(req: _Request) -> torch.Tensor:
    """Probe logits of the dequantized checkpoint: the very weights the kernels hold."""
    ref_model = convert_model(req.folder, "baseline", req.device)
    ref_logits = probe_logits(ref_model, req.device, seed=req.seed)
    del ref_model
    free_memory(req.device)
    return ref_logits


def _measure_paths(paths: list[str], req: _Request, bar, notes: list[str]) -> tuple[list, list, list]:
    """(timing rows, memory rows, agreement rows) of every path that builds; an optional
    quantized path that breaks is noted in `notes` and skipped."""
    rows: list[dict[str, Any]] = []
    mem_rows: list[dict[str, Any]] = []
    agree_rows: list[dict[str, Any]] = []
    base_logits = ref_logits = None
    if req.baseline is not None and "baseline" in paths:
        # the kernels' reference is the dequantized checkpoint; a separate baseline (the
        # original model) adds the quantization error on top
        ref_logits = _reference_logits(req)
    for path in paths:
        bar.set_postfix_str(path)
        try:
            measured = _bench_path(path, req, bar)
        except Exception as exc:
            if path == "baseline" or isinstance(exc, (KeyboardInterrupt, MemoryError)):
                raise
            # a path that breaks (a kernel missing a shape, say) is skipped: the others' numbers are kept
            notes.append(f"{path} failed on {req.device} and was skipped: {short_error(exc)}")
            free_memory(req.device)
            continue
        rows += measured["timings"]
        notes += measured["notes"]
        mem_rows.append(measured["memory"])
        logits = measured.pop("logits")
        if path == "baseline":
            base_logits = logits
            ref_logits = ref_logits if ref_logits is not None else logits
        agree_rows.append(
            {
                **agreement(path, logits, ref_logits),
                "loader": measured["loader"],
                "rel_rms_diff_vs_baseline": agreement(path, logits, base_logits)["rel_rms_diff"],
            }
        )
    return rows, mem_rows, agree_rows


def _tables(rows: list, mem_rows: list, agree_rows: list, req: _Request, notes: list[str]) -> dict[str, Any]:
    """The run's tables: timings, memory, speed-ups, traps, agreement, harness, fleet, targets."""
    timings = pd.DataFrame(rows)
    memory = pd.DataFrame(mem_rows)
    speedups = speedup_table(timings)
    traps = flag_traps(speedups)
    harness = harness_table(timings)
    awq_ratio = quantized_linear_bytes(load_tensors(req.folder))["ratio_vs_fp16"]
    fleet = fleet_rows(timings, memory, req.p, notes)
    return {
        "timings": timings,
        "memory": memory,
        "speedups": speedups,
        "traps": traps,
        "agreement": pd.DataFrame(agree_rows),
        "harness": harness,
        "fleet": pd.DataFrame(fleet),
        "bytes_ratio": awq_ratio,
        "targets": with_head(targets(speedups, awq_ratio, req.device), req.lm_head, req.device),
        "notes": notes,
    }


def _env(
    req: _Request, threads_used: int, load: dict[str, float | None], avail: dict[str, str | None]
) -> dict[str, Any]:
    """Where and how the run measured: device, torch, threads, load before and after, paths."""
    return {
        "device": req.device,
        "hardware_label": req.p.hardware_label,
        "torch": torch.__version__,
        "threads": threads_used,
        "cpu": platform.processor() or platform.machine(),
        "load_average_before": load["load_average"],
        "cpu_used_by_others_before": load["cpu_used_by_others"],
        "load_average_after": _load_average(),
        "paths_available": avail,
        "checkpoint": str(req.folder),
        "full_num_layers": req.full_num_layers,
        "lm_head": req.lm_head,
        "gpu": torch.cuda.get_device_name() if req.device == "cuda" else None,
    }


def run_benchmark(
    checkpoint_folder: str | Path,
    bench_params: BenchmarkSection | Mapping[str, Any],
    device: str = "cpu",
    progress: bool = True,
    *,
    baseline: str | Path | nn.Module | None = None,
    full_num_layers: int | None = None,
    seed: int = 0,
    inner_k_tiles: int = 2,
    threads: int | None = None,
    lm_head: str = "float",
) -> dict[str, Any]:
    """Benchmark every requested path of one AWQ checkpoint; returns a dict of tables.

    ``lm_head`` is the served output head of ``fast4`` on a CPU (``serve.lm_head``: the
    configuration step 03 scores); the baseline keeps its own float head.

    ``baseline`` (a dense folder or module) replaces the dequantized checkpoint as the
    baseline model; ``full_num_layers`` extrapolates the ``full_model`` scope (see
    :mod:`.timing`). ``threads`` sets torch's intra-op threads for the run (restored afterwards);
    on a machine shared with other busy processes, fewer threads than cores avoids the
    OpenMP oversubscription that makes every small op wait. Paths are built, timed and freed one at a time. An unavailable optional path is
    skipped with a note; an unavailable ``baseline`` raises :class:`BenchError`.

    Every built path also scores one fixed random prompt; ``agreement`` compares its logits
    with the dequantized checkpoint's (``rel_rms_diff``: the kernel alone; a fast kernel that
    is wrong is worse than a slow one) and with the timed baseline's
    (``rel_rms_diff_vs_baseline``: plus the quantization error when ``baseline`` is the
    original model).

    Keys: timings (tidy DataFrame), memory (DataFrame per path), speedups, traps, agreement, fleet,
    bytes_ratio, targets, notes, env.
    """
    p = bench_section(bench_params)
    device = resolve_device(device)
    req = _Request(Path(checkpoint_folder), baseline, p, device, full_num_layers, seed, inner_k_tiles, lm_head)
    avail = available_paths(device)
    paths, notes, load = _plan_paths(p, device, avail, lm_head)
    prev_threads = _set_threads(threads)
    n_shapes = len(p.batch_sizes) * len(p.context_lengths) * len(p.modes)
    bar = tqdm(total=len(paths) * n_shapes, desc="benchmark", disable=not progress, leave=False)
    try:
        rows, mem_rows, agree_rows = _measure_paths(paths, req, bar, notes)
    finally:
        bar.close()
        threads_used = torch.get_num_threads()
        torch.set_num_threads(prev_threads)
    result = _tables(rows, mem_rows, agree_rows, req, notes)
    result["env"] = _env(req, threads_used, load, avail)
    return result


def production_benchmark(
    bench_params: BenchmarkSection | Mapping[str, Any],
    device: str = "cpu",
    progress: bool = True,
    out_dir: str | Path | None = None,
    seed: int = 0,
    threads: int | None = None,
    lm_head: str = "float",
) -> dict[str, Any]:
    """:func:`.production.production_model` + :func:`run_benchmark`, extrapolated to ``prod_num_layers``.

    The baseline is the dequantized checkpoint (same shapes and dtype as the random dense
    model, hence the same speed and memory); the dense model itself is freed before timing.
    Without `out_dir` the random-weight checkpoint (about 1 GB, rebuilt from `seed` in
    seconds) lives in a temporary folder that is removed afterwards, failure or not.
    """
    p = bench_section(bench_params)
    if p.production_paths is not None:  # e.g. without naive4, whose trap the study's own model already shows
        p = p.model_copy(update={"paths": p.production_paths})
    with tempfile.TemporaryDirectory(prefix="quantstudy-prod-") as scratch:
        dense, folder = production_model(p, out_dir=out_dir if out_dir is not None else scratch, seed=seed)
        del dense
        gc.collect()
        result = run_benchmark(
            folder, p, device, progress, full_num_layers=p.prod_num_layers, seed=seed, threads=threads, lm_head=lm_head
        )
    if out_dir is None:  # removed: nothing to point at (the contract's None = random weights)
        result["env"]["checkpoint"] = None
    result["env"]["production_folder"] = str(folder) if out_dir is not None else None
    return result


def pick_checkpoint(quantize_dir: str | Path) -> Path:
    """The packed 4-bit checkpoint from step 02 that a server would run (``serving.served_checkpoint``;
    step 03 scores the same one with the served head)."""
    folder = resolve(quantize_dir)
    metrics = folder / "metrics.json"
    recs = contracts.read("02_quantize", folder)["checkpoints"]
    try:
        return folder / "checkpoints" / serving.served_checkpoint(recs)["name"]
    except serving.ServingError as exc:
        raise BenchError(f"{metrics}: {exc}") from None


def _records(r: dict[str, Any]) -> dict[str, Any]:
    """One model's results as JSON-ready records (the raw per-repeat speeds left out)."""
    return {
        "speedups": json.loads(r["speedups"].to_json(orient="records")),
        "timings": json.loads(
            r["timings"].drop(columns=[c for c in r["timings"].columns if c.endswith("_raw")]).to_json(orient="records")
        ),
        "memory": json.loads(r["memory"].to_json(orient="records")),
        "agreement": json.loads(r["agreement"].to_json(orient="records")) if "agreement" in r else [],
        "harness": json.loads(r["harness"].to_json(orient="records")) if len(r.get("harness", [])) else [],
        "fleet": json.loads(r["fleet"].to_json(orient="records")),
        "traps": r["traps"],
        "targets": r["targets"],
        "bytes_ratio": r["bytes_ratio"],
        "notes": r["notes"],
        "env": r["env"],
    }


def write_metrics(output_dir: str | Path, results: dict[str, dict[str, Any]], wall_s: float, goals: Any = None) -> dict:
    """metrics.json of step 04; ``goals`` (the params' targets section) re-judges the targets."""
    if goals is not None:
        for r in results.values():
            env = r.get("env") or {}
            r["targets"] = with_head(
                targets(r["speedups"], r["bytes_ratio"], env.get("device", "cpu"), goals),
                env.get("lm_head", "float"),
                env.get("device", "cpu"),
            )
    metrics = {name: _records(r) for name, r in results.items()}
    prod = results.get("production")
    metrics["targets"] = prod["targets"] if prod else next(iter(results.values()))["targets"]
    metrics["traps"] = [{"model": n, **t} for n, r in results.items() for t in r["traps"]]
    metrics["wall_s"] = round(wall_s, 1)
    return contracts.write("04_benchmark", output_dir, metrics, default=str)


def benchmark_checkpoint(
    params,
    checkpoint: str | Path | None,
    out_dir: str | Path,
    baseline: str | Path | None = None,
    production: bool = True,
    progress: bool = True,
) -> dict:
    """Step 04 outside papermill (``quantstudy bench``): a checkpoint (``demo``) and/or the
    production-shaped model on ``params.study.device``; writes metrics.json and the two
    figures to `out_dir` and returns the metrics."""
    matplotlib.use("Agg")
    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(params.study.device)
    if checkpoint is None and not production:
        raise BenchError("nothing to benchmark: give a checkpoint, or leave the production-shaped model on")
    results = {}
    head = params.serve.lm_head
    if checkpoint is not None:
        results["demo"] = run_benchmark(checkpoint, params.benchmark, device, progress, baseline=baseline, lm_head=head)
    if production:
        results["production"] = production_benchmark(params.benchmark, device, progress, lm_head=head)
    metrics = write_metrics(out_dir, results, time.time() - started, goals=getattr(params, "targets", None))
    label = params.benchmark.hardware_label
    plot_speedups(results, label).savefig(out_dir / "speedups.png", dpi=110)
    plot_memory(results).savefig(out_dir / "memory.png", dpi=110)
    if "graphed" in params.benchmark.modes:
        for name, r in results.items():
            plot_decode_scaling(r, f"{name}: decode scaling on {label}").savefig(
                out_dir / f"decode_scaling_{name}.png", dpi=110
            )
    return metrics
