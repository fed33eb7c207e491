"""Fleet sizing: devices needed at peak and cost per 1000 conversations, per inference path,
from its measured decode speed and its weights' memory."""

from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

from quantstudy.config.params import BenchmarkSection
from quantstudy.steps.benchmark.section import bench_section


def _positive(name: str, value: Any, integer: bool = False) -> float:
    """`value` as a positive finite float (a whole number with `integer`); ValueError naming `name` else."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a positive number; found {value!r}") from None
    if not math.isfinite(v) or v <= 0 or (integer and v != int(v)):
        kind = "a positive integer" if integer else "a positive finite number"
        raise ValueError(f"{name}: expected {kind}; found {value!r}")
    return v


def _conversations_per_device(
    mem: float, wb: float, kv_tok: float, tokens: float, p: BenchmarkSection, label: str
) -> int:
    """How many conversations' KV cache fit beside the weights on one device (at least one, or ValueError)."""
    if wb >= mem:
        raise ValueError(
            f"device_memory_gb: {p.device_memory_gb} GB cannot hold the weights of {label!r} ({wb / 1e9:.2f} GB)"
        )
    kv_conv = kv_tok * tokens
    capacity = math.floor((mem - wb) / kv_conv)
    if capacity < 1:
        raise ValueError(
            f"kv_bytes_per_token: {kv_tok:.0f} B x tokens_per_conversation {tokens:.0f} = "
            f"{kv_conv / 1e9:.2f} GB of KV per conversation does not fit beside the weights "
            f"({(mem - wb) / 1e9:.2f} GB free per device)"
        )
    return capacity


def fleet_cost(
    weight_bytes: int | float,
    decode_tokens_per_s: float,
    bench_params: BenchmarkSection | Mapping[str, Any],
    label: str,
    batch_size: int = 1,
) -> dict[str, Any]:
    """Devices needed at peak and cost per 1000 conversations, for one inference path.

    Model (one replica per device, serving `batch_size` conversations at once, throughput
    `decode_tokens_per_s` measured for that batch on ``hardware_label``):

    * required throughput R = peak_conversations_per_s * tokens_per_conversation (tokens/s);
    * throughput-bound devices D_t = R / decode_tokens_per_s;
    * in-flight conversations (Little's law) C = D_t * batch_size (each stream runs at
      decode_tokens_per_s / batch_size, a conversation lasts tokens / that rate);
    * KV per conversation = kv_bytes_per_token * tokens_per_conversation (held in full);
      conversations one device can hold = floor((device_memory - weight_bytes) / KV per conv.);
    * memory-bound devices D_m = C / that capacity;
    * devices at peak = ceil(max(D_t, D_m)); cost per 1000 conversations =
      devices * price_per_device_hour / (peak_conversations_per_s * 3600) * 1000
      (the fleet is sized for, and billed at, the peak).

    GB means 10^9 bytes. Raises ValueError naming the bad input.
    """
    p = bench_section(bench_params)
    wb = _positive("weight_bytes", weight_bytes)
    tps = _positive("decode_tokens_per_s", decode_tokens_per_s)
    batch = int(_positive("batch_size", batch_size, integer=True))
    mem = _positive("device_memory_gb", p.device_memory_gb) * 1e9
    price = _positive("price_per_device_hour", p.price_per_device_hour)
    peak = _positive("peak_conversations_per_s", p.peak_conversations_per_s)
    tokens = _positive("tokens_per_conversation", p.tokens_per_conversation, integer=True)
    kv_tok = _positive("kv_bytes_per_token", p.kv_bytes_per_token, integer=True)
    capacity = _conversations_per_device(mem, wb, kv_tok, tokens, p, label)
    required = peak * tokens
    d_t = required / tps
    concurrent = d_t * batch
    d_m = concurrent / capacity
    devices = max(math.ceil(max(d_t, d_m) - 1e-9), 1)
    return {
        "label": label,
        "hardware": p.hardware_label,
        "weight_gb": wb / 1e9,
        "batch_size": batch,
        "decode_tokens_per_s_per_device": tps,
        "required_tokens_per_s": required,
        "kv_gb_per_conversation": kv_tok * tokens / 1e9,
        "conversations_per_device_by_memory": capacity,
        "concurrent_conversations": concurrent,
        "devices_throughput_bound": d_t,
        "devices_memory_bound": d_m,
        "bound_by": "memory" if d_m > d_t else "throughput",
        "devices_at_peak": devices,
        "cost_per_hour": devices * price,
        "cost_per_1000_conversations": devices * price / (peak * 3600) * 1000,
    }


def fleet_rows(timings: pd.DataFrame, memory: pd.DataFrame, p: BenchmarkSection, notes: list[str]) -> list[dict]:
    """One fleet row per path and batch at the smallest context; an input the fleet model refuses
    is noted in `notes` instead of a row.

    A server decodes as the graphed mode does (static cache, on a GPU a captured step), so the
    fleet is sized from the graphed rows when they exist; HF eager generation is the harness.
    """
    out = []
    fleet_mode = "graphed" if (timings["mode"] == "graphed").any() else "eager"
    rows = timings[timings["mode"] == fleet_mode]
    scope = "full_model" if "full_model" in set(rows["scope"]) else "measured"
    ctx = min(p.context_lengths)
    for _, r in rows[(rows["scope"] == scope) & (rows["context"] == ctx)].iterrows():
        wb = memory.loc[memory["path"] == r["path"], "weight_bytes_full_model"].iloc[0]
        try:
            out.append(
                {
                    "path": r["path"],
                    "mode": fleet_mode,
                    "context": ctx,
                    **fleet_cost(wb, r["decode_tok_s_median"], p, r["path"], int(r["batch"])),
                }
            )
        except ValueError as exc:
            notes.append(f"fleet for {r['path']} batch {r['batch']}: {exc}")
    return out
