"""Step 04 benchmark library: path modules, packer, memory accounting, trap detector,
fleet/cost arithmetic and a tiny end-to-end run (tiny shapes, seconds)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import pandas as pd
import pytest
import torch
from torch import nn

warnings.filterwarnings("ignore", category=DeprecationWarning)

from quantstudy.awqformat import pack_awq_gemm, rtn_quantize_linear  # noqa: E402
from quantstudy.config.params import BenchmarkSection  # noqa: E402
from quantstudy.contracts.benchmark import BenchEnv  # noqa: E402
from quantstudy.steps import benchmark as bench  # noqa: E402
from quantstudy.steps.benchmark import (  # noqa: E402
    convert,
    devices,
    fleet,
    goals,
    linears,
    memory,
    probe,
    production,
    run,
    timing,
    traps,
)

GROUP = 128


def _awq_linear(in_f: int = 256, out_f: int = 96, seed: int = 0):
    """A random linear quantized and packed by AutoAWQ itself (4-bit, g128, zero point):
    the exact steps of AwqQuantizer._apply_quant -> WQLinear_GEMM.from_linear."""
    from awq.modules.linear.gemm import WQLinear_GEMM
    from awq.quantize.quantizer import AwqQuantizer

    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=False).half()
    lin.original = lin.weight.data.clone()
    q = AwqQuantizer.__new__(AwqQuantizer)
    q.w_bit, q.group_size, q.zero_point = 4, GROUP, True
    lin.weight.data, scales, zeros = q.pseudo_quantize_tensor(lin.weight.data)
    scales, zeros = scales.t().contiguous(), zeros.t().contiguous()
    return lin, scales, zeros, WQLinear_GEMM.from_linear(lin, 4, GROUP, scales=scales, zeros=zeros)


def _dense_weight(awq) -> torch.Tensor:
    from awq.utils.packing_utils import dequantize_gemm

    return dequantize_gemm(awq.qweight, awq.qzeros, awq.scales.float(), 4, GROUP)  # [in, out]


# --------------------------------------------------------------------------- paths
class _Packed:
    def __init__(self, qweight, qzeros, scales):
        self.qweight, self.qzeros, self.scales = qweight, qzeros, scales


@pytest.mark.parametrize("out_f", [96, 40])
def test_fast4_int4_kernel_matches_dense_matmul(out_f):
    if bench.available_paths("cpu")["fast4"]:
        pytest.skip(bench.available_paths("cpu")["fast4"])
    if out_f % 32 == 0:
        _, _, _, awq = _awq_linear(256, out_f)
    else:  # from_linear mis-sizes qzeros unless out % 32 == 0; 40 exercises the kernel's N % 16 padding
        awq = _Packed(*rtn_quantize_linear(torch.randn(out_f, 256) * 0.02, GROUP))
    w = _dense_weight(awq)
    x = torch.randn(5, 3, 256)
    ref = x @ w
    exact = linears.Int4CPULinear.from_awq(
        awq.qweight, awq.qzeros, awq.scales, None, GROUP, compute_dtype=torch.float32
    )
    out = exact(x)
    assert out.shape == (5, 3, out_f) and out.dtype == torch.float32
    # float32 scales/zeros: zero_f = (8 - z) * s reproduces AWQ's (q - z) * s exactly
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    fast = linears.Int4CPULinear.from_awq(awq.qweight, awq.qzeros, awq.scales, None, GROUP)
    assert fast.compute_dtype == torch.bfloat16
    out = fast(x)
    assert out.dtype == torch.float32
    # bfloat16 activations and scales: ~0.3% of the output range
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 2e-2


def test_naive4_equals_dense_path():
    _, _, _, awq = _awq_linear()
    bias = torch.randn(96)
    naive = linears.NaiveAWQLinear(awq.qweight, awq.qzeros, awq.scales, bias, GROUP)
    x = torch.randn(2, 7, 256)
    torch.testing.assert_close(naive(x), x @ _dense_weight(awq) + bias, rtol=1e-6, atol=1e-6)
    assert naive.qweight.dtype == torch.int32 and naive.scales.dtype == torch.float16  # stays packed


def test_vectorized_packer_equals_from_linear():
    lin, scales, zeros, awq = _awq_linear(384, 64, seed=3)
    qw, qz, sc = pack_awq_gemm(lin.weight.data, scales, zeros, GROUP)
    assert torch.equal(qw, awq.qweight) and torch.equal(qz, awq.qzeros) and torch.equal(sc, awq.scales)
    qw2, qz2, sc2 = rtn_quantize_linear(lin.original.float(), GROUP)  # whole RTN from the raw weight
    assert torch.equal(qw2, awq.qweight) and torch.equal(qz2, awq.qzeros) and torch.equal(sc2, awq.scales)


def test_vectorized_from_linear_patch_builds_the_same_module():
    """quantize runs AutoAWQ with its packer swapped for ours: same module, same tensors, restored after."""
    from awq.modules.linear.gemm import WQLinear_GEMM

    from quantstudy.awqformat import vectorized_from_linear

    lin, scales, zeros, _ = _awq_linear(384, 64, seed=5)
    lin.bias = nn.Parameter(torch.randn(64).half())
    ref = WQLinear_GEMM.from_linear(lin, 4, GROUP, scales=scales, zeros=zeros)
    original = WQLinear_GEMM.__dict__["from_linear"]
    with vectorized_from_linear():
        assert WQLinear_GEMM.__dict__["from_linear"] is not original
        fast = WQLinear_GEMM.from_linear(lin, 4, GROUP, scales=scales, zeros=zeros)
        empty = WQLinear_GEMM.from_linear(lin, 4, GROUP, init_only=True)
    assert WQLinear_GEMM.__dict__["from_linear"] is original
    assert type(fast) is WQLinear_GEMM and (fast.in_features, fast.out_features) == (384, 64)
    for name in ("qweight", "qzeros", "scales", "bias"):
        assert torch.equal(getattr(fast, name), getattr(ref, name)), name
    assert not empty.qweight.any()  # init_only: AutoAWQ's own allocation, nothing packed


def test_available_paths_cpu():
    avail = bench.available_paths("cpu")
    assert set(avail) == set(devices.PATHS)
    assert avail["baseline"] is None and avail["naive4"] is None
    with pytest.raises(ValueError, match="device"):
        bench.available_paths("tpu")


# --------------------------------------------------------------------------- memory
def test_tensor_bytes_known_sizes():
    t = torch.zeros(1000, 3, dtype=torch.float32)
    assert memory.tensor_bytes(t) == 12000
    m = nn.Linear(10, 20)  # 200 + 20 float32
    m.register_buffer("q", torch.zeros(7, dtype=torch.int32))
    assert memory.tensor_bytes(m) == 220 * 4 + 7 * 4
    tied = nn.ModuleDict({"a": nn.Embedding(10, 4), "b": nn.Linear(4, 10, bias=False)})
    tied["b"].weight = tied["a"].weight
    assert memory.tensor_bytes(tied) == 160  # tied weight counted once
    assert memory.tensor_bytes({"x": torch.zeros(4, dtype=torch.float16), "y": torch.zeros(2, dtype=torch.int64)}) == 24


def test_quantized_linear_bytes_ratio():
    _, _, _, awq = _awq_linear(1024, 256)
    naive = linears.NaiveAWQLinear(awq.qweight, awq.qzeros, awq.scales, None, GROUP)
    info = memory.quantized_linear_bytes(nn.ModuleDict({"l": naive}))
    # 4 bits + 16/128 (scales) + 4/128 (zeros) per weight
    assert info["quantized_bytes"] == 1024 * 256 // 2 + 8 * 256 * 2 + 8 * 256 // 2
    assert info["fp16_bytes"] == 1024 * 256 * 2
    assert info["ratio_vs_fp16"] == pytest.approx(16 / (4 + 20 / 128), abs=1e-3)
    assert info["ratio_vs_fp16"] >= goals.TARGET_BYTES_RATIO
    state = {"l.qweight": awq.qweight, "l.qzeros": awq.qzeros, "l.scales": awq.scales}
    assert memory.quantized_linear_bytes(state) == info


# --------------------------------------------------------------------------- trap detector
def _timings(path_speeds: dict[str, tuple[float, float, float]]) -> pd.DataFrame:
    rows = []
    for path, (lo, med, hi) in path_speeds.items():
        rows.append(
            {
                "path": path,
                "batch": 1,
                "context": 128,
                "prefill_tok_s_median": 100.0 if path == "baseline" else med * 10,
                "prefill_tok_s_min": 99.0 if path == "baseline" else lo * 10,
                "prefill_tok_s_max": 101.0 if path == "baseline" else hi * 10,
                "decode_tok_s_median": med,
                "decode_tok_s_min": lo,
                "decode_tok_s_max": hi,
            }
        )
    return pd.DataFrame(rows)


def test_speedup_table_and_traps():
    df = _timings(
        {
            "baseline": (9.8, 10.0, 10.2),
            "slow": (4.0, 5.0, 5.5),
            "fast": (24.0, 25.0, 26.0),
            "same": (9.7, 10.0, 10.3),
            "hair": (9.5, 9.9, 10.4),
        }
    )
    table = traps.speedup_table(df).set_index("path")
    assert table.loc["slow", "decode_speedup"] == pytest.approx(0.5)
    assert table.loc["fast", "decode_speedup"] == pytest.approx(2.5)
    assert table.loc["fast", "decode_speedup_low"] == pytest.approx(24.0 / 10.2)
    assert table.loc["fast", "decode_speedup_high"] == pytest.approx(26.0 / 9.8)
    assert table.loc["slow", "prefill_speedup"] == pytest.approx(0.5)
    flags = traps.flag_traps(traps.speedup_table(df))
    flagged = {(f["path"], f["phase"]): f for f in flags}
    assert ("slow", "decode") in flagged and ("slow", "prefill") in flagged
    assert flagged[("slow", "decode")]["clear"] is True
    assert "0.50x" in flagged[("slow", "decode")]["explanation"]
    assert not any(p in ("fast", "same", "baseline") for p, _ in flagged)  # equal is not a trap
    assert flagged[("hair", "decode")]["clear"] is False  # 0.99x: slower, but within noise
    assert "noise" in flagged[("hair", "decode")]["explanation"]


def test_speedup_table_needs_baseline():
    with pytest.raises(ValueError, match="baseline"):
        traps.speedup_table(_timings({"fast": (1, 2, 3)}))


def test_targets():
    t = goals.targets(2.6, 3.85)
    assert t["cpu_fast_decode_speedup_1b_b1"]["met"] and t["quantized_linear_bytes_vs_fp16"]["met"]
    t = goals.targets(1.2, 3.7)
    assert not t["cpu_fast_decode_speedup_1b_b1"]["met"] and not t["quantized_linear_bytes_vs_fp16"]["met"]
    table = traps.speedup_table(_timings({"baseline": (9.8, 10.0, 10.2), "fast4": (29, 30, 31)}))
    assert goals.targets(table, 3.85)["cpu_fast_decode_speedup_1b_b1"]["measured"] == pytest.approx(3.0)
    gpu = goals.targets(0.6, 3.85, device="cuda")["cpu_fast_decode_speedup_1b_b1"]
    assert gpu["measured"] == 0.6 and gpu["met"] is None and "CPU path" in gpu["where"]


# --------------------------------------------------------------------------- fleet & cost
def _cost_params(**kw) -> BenchmarkSection:
    base = dict(
        device_memory_gb=80.0,
        price_per_device_hour=2.0,
        peak_conversations_per_s=10.0,
        tokens_per_conversation=1000,
        kv_bytes_per_token=100_000,
        hardware_label="test box",
    )
    base.update(kw)
    return BenchmarkSection(**base)


def test_fleet_cost_hand_computed():
    # R = 10 * 1000 = 10,000 tok/s; D_t = 10,000 / 2,000 = 5; KV/conv = 0.1 GB;
    # capacity = floor((80 - 16) / 0.1) = 640; C = 5 * 8 = 40; D_m = 40/640; devices = 5;
    # cost/1000 conv = 5 * 2 / (10 * 3600) * 1000 = 0.2777...
    out = fleet.fleet_cost(16e9, 2000.0, _cost_params(), "fast4", batch_size=8)
    assert out["required_tokens_per_s"] == 10_000
    assert out["devices_throughput_bound"] == pytest.approx(5.0)
    assert out["conversations_per_device_by_memory"] == 640
    assert out["devices_memory_bound"] == pytest.approx(40 / 640)
    assert out["devices_at_peak"] == 5 and out["bound_by"] == "throughput"
    assert out["cost_per_1000_conversations"] == pytest.approx(5 * 2 / 36000 * 1000)
    assert out["hardware"] == "test box" and out["label"] == "fast4"
    # memory-bound: 79.5 GB of weights leave room for 5 conversations, batch 64 in flight
    out = fleet.fleet_cost(79.5e9, 2000.0, _cost_params(), "baseline", batch_size=64)
    assert out["conversations_per_device_by_memory"] == 5
    assert out["devices_memory_bound"] == pytest.approx(5 * 64 / 5)
    assert out["devices_at_peak"] == 64 and out["bound_by"] == "memory"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"weight_bytes": -1}, "weight_bytes"),
        ({"decode_tokens_per_s": 0}, "decode_tokens_per_s"),
        ({"decode_tokens_per_s": float("nan")}, "decode_tokens_per_s"),
        ({"batch_size": 0}, "batch_size"),
        ({"weight_bytes": 81e9}, "device_memory_gb"),
        ({"params": {"kv_bytes_per_token": 10**9}}, "kv_bytes_per_token"),
        ({"params": {"price_per_device_hour": -2.0}}, "price_per_device_hour"),
        ({"params": {"peak_conversations_per_s": 0}}, "peak_conversations_per_s"),
    ],
)
def test_fleet_cost_rejects_bad_inputs(kwargs, name):
    args = {"weight_bytes": 1e9, "decode_tokens_per_s": 100.0, "batch_size": 1}
    params = _cost_params()
    if "params" in kwargs:
        params = BenchmarkSection.model_construct(**{**params.model_dump(), **kwargs.pop("params")})
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        fleet.fleet_cost(args["weight_bytes"], args["decode_tokens_per_s"], params, "x", batch_size=args["batch_size"])


# --------------------------------------------------------------------------- end to end
TINY = dict(
    prod_hidden_size=128,
    prod_intermediate_size=256,
    prod_num_layers=4,
    prod_num_heads=4,
    prod_num_kv_heads=2,
    prod_vocab_size=256,
    prod_bench_layers=2,
    batch_sizes=[1],
    context_lengths=[16],
    decode_tokens=2,
    warmup=1,
    repeats=2,
    hardware_label="ci cpu",
)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    dense, folder = production.production_model(BenchmarkSection(**TINY), out_dir=tmp_path_factory.mktemp("tiny-awq"))
    return dense, folder


def test_production_model_folder_and_paths_agree(tiny_checkpoint):
    from quantstudy.steps.quantize import checkpoint_kind

    dense, folder = tiny_checkpoint
    assert checkpoint_kind(folder) == "awq"
    assert len(dense.model.layers) == 2
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    logits = {}
    with torch.inference_mode():
        for path in devices.PATHS:
            if bench.available_paths("cpu")[path]:
                continue
            logits[path] = convert.convert_model(folder, path)(input_ids=ids).logits
    torch.testing.assert_close(logits["naive4"], logits["baseline"], rtol=1e-5, atol=1e-5)
    if "fast4" in logits:
        assert ((logits["fast4"] - logits["baseline"]).abs().max() / logits["baseline"].abs().max()) < 5e-2
    with pytest.raises(ValueError, match="unknown path"):
        convert.convert_model(folder, "turbo")
    with pytest.raises(ValueError, match="AWQ checkpoint"):
        convert.convert_model(dense, "naive4")


def test_production_benchmark_times_production_paths_only(tmp_path):
    """benchmark.production_paths narrows the production-shaped model's paths (not the study model's)."""
    p = BenchmarkSection(**TINY, paths=["baseline", "naive4"], production_paths=["baseline"])
    result = bench.production_benchmark(p, "cpu", progress=False, out_dir=tmp_path)
    assert set(result["speedups"]["path"]) == {"baseline"} and set(result["timings"]["path"]) == {"baseline"}
    with pytest.raises(ValueError, match="production_paths must include baseline"):
        BenchmarkSection(**TINY, production_paths=["naive4"])


def test_production_benchmark_removes_its_temporary_checkpoint(tmp_path, monkeypatch):
    """Without out_dir the ~1 GB random-weight checkpoint goes to a temporary folder that is
    removed afterwards (each study run used to leave one in /tmp)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    p = BenchmarkSection(**TINY, paths=["baseline"], production_paths=["baseline"])
    result = bench.production_benchmark(p, "cpu", progress=False)
    assert list(tmp_path.iterdir()) == []
    assert result["env"]["production_folder"] is None and result["env"]["checkpoint"] is None
    BenchEnv.model_validate(result["env"])


def test_run_benchmark_tiny(tiny_checkpoint):
    _, folder = tiny_checkpoint
    res = bench.run_benchmark(folder, BenchmarkSection(**TINY), progress=False, full_num_layers=4)
    t = res["timings"]
    ran = [p for p in devices.PATHS if not bench.available_paths("cpu")[p]]
    assert set(t["path"]) == set(ran)
    assert len(t) == len(ran) * len(timing.SCOPES)  # one row per path x batch x context x scope
    assert (t["decode_tok_s_median"] > 0).all() and (t["prefill_tok_s_median"] > 0).all()
    assert all(len(r) == 2 for r in t["decode_tok_s_raw"])
    assert (t["decode_tok_s_min"] <= t["decode_tok_s_median"]).all()
    assert (t["decode_tok_s_median"] <= t["decode_tok_s_max"]).all()
    full = t[t["scope"] == "full_model"].set_index("path")
    meas = t[t["scope"] == "measured"].set_index("path")
    assert (full["decode_tok_s_median"] < meas["decode_tok_s_median"]).all()  # 4 layers slower than 2
    mem = res["memory"].set_index("path")
    assert mem.loc["naive4", "weight_bytes_in_memory"] < mem.loc["baseline", "weight_bytes_in_memory"]
    assert mem.loc["naive4", "quantized_linear_ratio_vs_fp16"] == pytest.approx(3.8496, abs=1e-3)
    assert res["bytes_ratio"] >= 3.8
    assert set(res["targets"]) == {"cpu_fast_decode_speedup_1b_b1", "quantized_linear_bytes_vs_fp16"}
    if "fast4" in ran:
        assert res["targets"]["cpu_fast_decode_speedup_1b_b1"]["layers_only"] > 0
    mem_cols = {"peak_rss_build_mb", "peak_rss_run_mb", "weight_bytes_on_disk", "weight_bytes_full_model"}
    assert mem_cols <= set(res["memory"].columns)
    assert res["env"]["threads"] >= 1
    assert set(res["fleet"]["path"]) == set(ran)
    assert (res["fleet"]["hardware"] == "ci cpu").all()
    assert isinstance(res["traps"], list)
    sp = res["speedups"]
    assert math.isclose(sp[(sp["path"] == "baseline")]["decode_speedup"].iloc[0], 1.0)
    agree = res["agreement"].set_index("path")
    assert list(agree.index) == ran  # baseline first, every built path scored
    assert set(agree["loader"]) == {"quantstudy.steps.benchmark.convert.convert_model"}  # names the real function
    assert agree.loc["baseline", "rel_rms_diff"] == 0.0
    assert agree.loc["naive4", "rel_rms_diff"] < 1e-5  # same dequantized weights
    if "fast4" in ran:
        assert 0 < agree.loc["fast4", "rel_rms_diff"] < 0.05  # bfloat16 scales: rounding, not a bug
    table = bench.agreement_table({"tiny": res})
    assert list(table["model"].unique()) == ["tiny"] and list(table["path"]) == ran


def test_agreement_flags_a_wrong_kernel():
    base = torch.randn(16, 50, generator=torch.Generator().manual_seed(0))
    good = probe.agreement("fast4", base * 1.001, base)
    bad = probe.agreement("fast4", torch.randn(16, 50, generator=torch.Generator().manual_seed(1)), base)
    assert good["rel_rms_diff"] == pytest.approx(1e-3, rel=1e-3) and good["top1_agreement"] == 1.0
    assert bad["rel_rms_diff"] > 1.0 and bad["top1_agreement"] < 0.5


def test_run_benchmark_skips_a_path_that_breaks(tiny_checkpoint, monkeypatch):
    _, folder = tiny_checkpoint
    real = convert.convert_model

    def broken(src, path, *args, **kwargs):
        if path == "naive4":
            raise RuntimeError("kernel has no implementation for this shape")
        return real(src, path, *args, **kwargs)

    monkeypatch.setattr(run, "convert_model", broken)
    params = BenchmarkSection(**{**TINY, "paths": ["naive4", "baseline"], "repeats": 1, "warmup": 0})
    res = bench.run_benchmark(folder, params, progress=False)
    assert set(res["timings"]["path"]) == {"baseline"}
    assert any(n.startswith("naive4 failed on cpu and was skipped: RuntimeError: kernel has no") for n in res["notes"])
    monkeypatch.setattr(run, "convert_model", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no baseline")))
    with pytest.raises(RuntimeError, match="no baseline"):
        bench.run_benchmark(folder, params, progress=False)


def test_run_benchmark_skips_unavailable_and_requires_baseline(tiny_checkpoint, monkeypatch):
    _, folder = tiny_checkpoint
    real = bench.available_paths
    monkeypatch.setattr(
        run, "available_paths", lambda device="cpu": {**real(device), "fast4": "no int4 kernel in this test"}
    )
    params = BenchmarkSection(**{**TINY, "paths": ["baseline", "fast4"], "repeats": 1, "warmup": 0})
    res = bench.run_benchmark(folder, params, progress=False, threads=1)
    assert set(res["timings"]["path"]) == {"baseline"}
    assert res["env"]["threads"] == 1
    assert any("fast4 skipped" in n for n in res["notes"])
    monkeypatch.setattr(
        run, "available_paths", lambda device="cpu": {**real(device), "baseline": "broken in this test"}
    )
    with pytest.raises(ValueError, match="available paths: naive4"):
        bench.run_benchmark(folder, params, progress=False)


def test_bench_command_writes_metrics_and_figures(tiny_checkpoint, tmp_path, capsys):
    from quantstudy.cli import main

    _, folder = tiny_checkpoint
    assert main(["bench", "params/smoke.yaml", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    out = tmp_path / "bench"
    assert main(["bench", "params/smoke.yaml", "--checkpoint", str(folder), "--out", str(out), "--no-production"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["path"] for r in metrics["demo"]["agreement"]][:2] == ["baseline", "naive4"]
    assert (out / "speedups.png").stat().st_size > 10_000 and (out / "memory.png").is_file()
    assert main(["bench", "params/smoke.yaml", "--out", str(out), "--no-production"]) == 2
    assert "needs --checkpoint" in capsys.readouterr().err


def test_busy_check_counts_other_processes_not_this_one():
    """A spinning child process shows as CPU used by others; a spinning thread of this process does not."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert run._cpu_used_by_others(0.5) > 0.6
    finally:
        spinner.kill()
        spinner.wait()
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    worker = threading.Thread(target=spin)
    worker.start()
    try:
        assert run._cpu_used_by_others(0.5) < 0.5
    finally:
        stop.set()
        worker.join()


def test_busy_note_follows_other_processes_not_the_load_average(monkeypatch):
    """The load average still counts a finished step's work; the note follows what others use now."""
    p = BenchmarkSection(**TINY, paths=["baseline"])
    avail = {"baseline": None}
    cores = os.cpu_count() or 1
    monkeypatch.setattr(run, "_load_average", lambda: 4.0 * cores)
    monkeypatch.setattr(run, "_cpu_used_by_others", lambda window_s=1.0: 0.0)
    _, notes, load = run._plan_paths(p, "cpu", avail, "float")
    assert not any("busy" in n for n in notes) and load == {"load_average": 4.0 * cores, "cpu_used_by_others": 0.0}
    monkeypatch.setattr(run, "_cpu_used_by_others", lambda window_s=1.0: 0.5 * cores)
    _, notes, _ = run._plan_paths(p, "cpu", avail, "float")
    assert any(n.startswith(f"machine busy before timing ({0.5 * cores:.2f} cores' worth") for n in notes)
    monkeypatch.setattr(run, "_cpu_used_by_others", lambda window_s=1.0: None)  # no /proc/stat
    _, notes, _ = run._plan_paths(p, "cpu", avail, "float")
    assert any("1-min load average" in n for n in notes)
