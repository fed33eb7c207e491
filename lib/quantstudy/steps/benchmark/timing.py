"""Timing, after AutoAWQ's ``examples/benchmark.py``: ``warmup`` untimed rounds, then
``repeats`` timed rounds; each round is one prefill forward over the prompt
(``use_cache=True``, ``logits_to_keep=1`` as ``generate`` does) and ``decode_tokens`` greedy
single-token steps that reuse the cache. Prefill tokens/s = batch*context / prefill time;
decode tokens/s = batch*decode_tokens / total decode time; each row keeps the median and the
range of the repeats.

Mode ``eager`` (:func:`time_model`) is Hugging Face's forward with its dynamic cache. Forward
hooks on the decoder layers also time the layers alone, which gives three *scopes*:

* ``measured``: the model as instantiated (``prod_bench_layers`` layers + embeddings + head);
* ``layers``: the decoder layers alone (what quantization changes);
* ``full_model``: extrapolated to ``full_num_layers``: time = (measured - layer time)
  + layer time * full_num_layers / timed layers (speed per layer is the same for every layer
  of a uniform decoder). Without ``full_num_layers`` it equals ``measured``.

Mode ``graphed`` (:func:`time_graphed`) runs the static-cache loop of :mod:`.decode`, each
decode step replayed from a CUDA graph (on a CPU the same loop without a graph); scope
``measured`` only.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Iterable

import torch
from torch import nn

from quantstudy.steps.benchmark.decode import Decoder, GraphedDecoder, cache_kwarg, returned_cache
from quantstudy.steps.benchmark.devices import resolve_device, short_error
from quantstudy.steps.benchmark.memory import decoder_layers, free_memory

SCOPES = ("measured", "layers", "full_model")


class _LayerTimer:
    """Accumulates wall time spent inside the decoder layers (forward hooks)."""

    def __init__(self, layers: list[nn.Module], cuda: bool):
        self.total = 0.0
        self.cuda = cuda
        self._t0 = 0.0
        self._handles = []
        for layer in layers:
            self._handles.append(layer.register_forward_pre_hook(self._pre))
            self._handles.append(layer.register_forward_hook(self._post))

    def _sync(self):
        if self.cuda:  # pragma: no cover
            torch.cuda.synchronize()

    def _pre(self, *_):
        self._sync()
        self._t0 = time.perf_counter()

    def _post(self, *_):
        self._sync()
        self.total += time.perf_counter() - self._t0

    def remove(self):
        for h in self._handles:
            h.remove()


def _sync(device: str) -> None:
    if device == "cuda":  # pragma: no cover
        torch.cuda.synchronize()


def _one_round(
    model: nn.Module, input_ids: torch.Tensor, decode_tokens: int, device: str, timer: _LayerTimer | None
) -> dict[str, float]:
    """One prefill + `decode_tokens` greedy steps -> seconds (total and inside decoder layers)."""
    if timer:
        timer.total = 0.0
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1:].argmax(-1)
    _sync(device)
    prefill = time.perf_counter() - t0
    prefill_layers = timer.total if timer else math.nan
    cache, cache_arg = returned_cache(out), cache_kwarg(model)
    if timer:
        timer.total = 0.0
    t0 = time.perf_counter()
    for _ in range(decode_tokens):
        out = model(input_ids=token, use_cache=True, **{cache_arg: cache})
        cache = returned_cache(out)
        token = out.logits[:, -1:].argmax(-1)
    _sync(device)
    decode = time.perf_counter() - t0
    decode_layers = timer.total if timer else math.nan
    return {
        "prefill_s": prefill,
        "prefill_layers_s": prefill_layers,
        "decode_s": decode,
        "decode_layers_s": decode_layers,
    }


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values))}


def _timing_row(
    path: str,
    mode: str,
    batch: int,
    context: int,
    scope: str,
    decode_tokens: int,
    repeats: int,
    timed_layers: int,
    model_layers: int,
    pre_t: list[float],
    dec_t: list[float],
) -> dict[str, Any]:
    ps, ds = _stats(pre_t), _stats(dec_t)
    return {
        "path": path,
        "mode": mode,
        "batch": batch,
        "context": context,
        "scope": scope,
        "decode_tokens": decode_tokens,
        "repeats": repeats,
        "timed_layers": timed_layers,
        "model_layers": model_layers,
        "prefill_tok_s_median": ps["median"],
        "prefill_tok_s_min": ps["min"],
        "prefill_tok_s_max": ps["max"],
        "decode_tok_s_median": ds["median"],
        "decode_tok_s_min": ds["min"],
        "decode_tok_s_max": ds["max"],
        "prefill_tok_s_raw": pre_t,
        "decode_tok_s_raw": dec_t,
    }


def _graphed_round(dec, steps, ids: torch.Tensor, decode_tokens: int, device: str) -> dict[str, float]:
    """One eager prefill into the static cache + `decode_tokens` steps replayed from the graph."""
    _sync(device)
    t0 = time.perf_counter()
    token = dec.prefill(ids).argmax(-1, keepdim=True)
    _sync(device)
    prefill = time.perf_counter() - t0
    steps.start(ids.shape[1])
    t0 = time.perf_counter()
    for _ in range(decode_tokens):
        token = steps.step(token).argmax(-1, keepdim=True)
    _sync(device)
    return {"prefill_s": prefill, "decode_s": time.perf_counter() - t0}


def _graph_check(dec, steps) -> float:
    """Max |logits| difference of the last replayed step from the same step run eagerly, relative
    to the eager logits' max (the eager rerun writes the same cache entries it read)."""
    graphed = steps.logits.float().clone()
    eager = dec.decode_step(steps.token, steps.pos - 1).float()
    return float((graphed - eager).abs().max() / eager.abs().max().clamp_min(1e-12))


def _eager_rounds(
    model: nn.Module,
    ids: torch.Tensor,
    decode_tokens: int,
    warmup: int,
    repeats: int,
    device: str,
    timer: _LayerTimer | None,
) -> list[dict[str, float]]:
    """`warmup` untimed rounds, then the seconds of `repeats` timed ones."""
    for _ in range(warmup):
        _one_round(model, ids, decode_tokens, device, timer)
    return [_one_round(model, ids, decode_tokens, device, timer) for _ in range(repeats)]


def _scope_seconds(r: dict[str, float], scope: str, scale: float, unhooked: bool) -> tuple[float, float]:
    """(prefill, decode) seconds of one round in `scope` (``full_model`` scales the layers' share)."""
    if scope == "measured":
        return r["prefill_s"], r["decode_s"]
    if scope == "layers":
        return r["prefill_layers_s"], r["decode_layers_s"]
    if unhooked:
        return r["prefill_s"], r["decode_s"]
    return (
        r["prefill_s"] + (scale - 1.0) * r["prefill_layers_s"],
        r["decode_s"] + (scale - 1.0) * r["decode_layers_s"],
    )


def time_model(
    model: nn.Module,
    path: str,
    batch_sizes: Iterable[int],
    context_lengths: Iterable[int],
    decode_tokens: int,
    warmup: int = 2,
    repeats: int = 5,
    device: str = "cpu",
    full_num_layers: int | None = None,
    vocab_size: int | None = None,
    seed: int = 0,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Time one model over every (batch, context) -> tidy rows (one per batch x context x scope)."""
    device = resolve_device(device)
    layers = decoder_layers(model)
    n_layers = len(layers)
    scale = (full_num_layers / n_layers) if (full_num_layers and n_layers) else 1.0
    # On a GPU the layer hooks synchronise twice per layer, which would slow the eager rows that
    # the graphed rows are compared with; with every layer instantiated no extrapolation needs
    # them, so the whole model is timed without hooks there (full_model = measured).
    unhooked = device == "cuda" and scale == 1.0
    timer = _LayerTimer(layers, device == "cuda") if layers and not unhooked else None
    scopes = [s for s in SCOPES if s == "measured" or timer is not None or (unhooked and s == "full_model")]
    vocab = vocab_size or model.config.vocab_size
    rows: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(seed)
    try:
        with torch.inference_mode():
            for batch in batch_sizes:
                for context in context_lengths:
                    ids = torch.randint(0, vocab, (batch, context), generator=gen).to(device)
                    raw = _eager_rounds(model, ids, decode_tokens, warmup, repeats, device, timer)
                    if progress is not None:
                        progress.update(1)
                    for scope in scopes:
                        secs = [_scope_seconds(r, scope, scale, unhooked) for r in raw]
                        rows.append(
                            _timing_row(
                                path,
                                "eager",
                                batch,
                                context,
                                scope,
                                decode_tokens,
                                repeats,
                                n_layers,
                                full_num_layers or n_layers,
                                [batch * context / pre for pre, _ in secs],
                                [batch * decode_tokens / dec for _, dec in secs],
                            )
                        )
    finally:
        if timer:
            timer.remove()
    return rows


def _graphed_shape(
    model: nn.Module, ids: torch.Tensor, decode_tokens: int, warmup: int, repeats: int, device: str
) -> tuple[list[dict[str, float]], float]:
    """One (batch, context) in mode graphed -> (seconds of the timed rounds, replay check)."""
    batch, context = ids.shape
    dec = Decoder(model, batch, context + decode_tokens)
    steps = GraphedDecoder(dec)
    for _ in range(1 + warmup):  # the first round captures the graph
        _graphed_round(dec, steps, ids, decode_tokens, device)
    raw = [_graphed_round(dec, steps, ids, decode_tokens, device) for _ in range(repeats)]
    return raw, _graph_check(dec, steps)


def _graphed_row(path, batch, context, decode_tokens, repeats, n_layers, raw, check) -> dict[str, Any]:
    """One graphed shape's timing row, with its replay-vs-eager check."""
    prefill = [batch * context / r["prefill_s"] for r in raw]
    decode = [batch * decode_tokens / r["decode_s"] for r in raw]
    row = _timing_row(
        path, "graphed", batch, context, "measured", decode_tokens, repeats, n_layers, n_layers, prefill, decode
    )
    return {**row, "graph_check_rel_diff": check}


def time_graphed(
    model: nn.Module,
    path: str,
    batch_sizes: Iterable[int],
    context_lengths: Iterable[int],
    decode_tokens: int,
    warmup: int = 2,
    repeats: int = 5,
    device: str = "cpu",
    seed: int = 0,
    progress: Any = None,
    notes: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Like :func:`time_model` in mode ``graphed`` (:mod:`quantstudy.steps.benchmark.decode`): a static
    cache of context + decode_tokens positions, eager prefill, decode steps replayed from one CUDA
    graph per shape (captured before the warm-up rounds; on a CPU the same loop runs eagerly).

    Only scope ``measured``: layer hooks would sync inside the graph's kernels (impossible in a
    replay), and the production shape times every layer anyway. With a `notes` list, a shape
    that fails (capture, memory) is noted there and skipped; without one it raises. Each row's
    ``graph_check_rel_diff`` compares the last replayed step with the same step run eagerly.
    """
    device = resolve_device(device)
    n_layers = len(decoder_layers(model))
    rows: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(seed)
    for batch in batch_sizes:
        for context in context_lengths:
            ids = torch.randint(0, model.config.vocab_size, (batch, context), generator=gen).to(device)
            try:
                raw, check = _graphed_shape(model, ids, decode_tokens, warmup, repeats, device)
            except Exception as exc:
                if notes is None or isinstance(exc, (KeyboardInterrupt, MemoryError)):
                    raise
                notes.append(
                    f"{path} graphed batch {batch} context {context} failed on {device} and was skipped: "
                    f"{short_error(exc)}"
                )
                continue
            finally:  # the shape's cache and graph are gone by now: free them before the next shape
                free_memory(device)
                if progress is not None:
                    progress.update(1)
            rows.append(_graphed_row(path, batch, context, decode_tokens, repeats, n_layers, raw, check))
            if notes is not None and not check < 1e-2:
                notes.append(
                    f"{path} graphed batch {batch} context {context}: the replayed step's logits differ "
                    f"from the eager step's by {check:.3g} of their range: check the captured graph"
                )
    return rows
