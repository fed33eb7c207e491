"""Greedy decoding with a static KV cache, one decode step capturable in a CUDA graph.

Hugging Face eager generation spends most of a small-batch decode step in Python and kernel
launches; serving engines capture the step in a CUDA graph and replay it. This module is a
small, readable loop (nanoGPT-style) for Llama-family models (``LlamaForCausalLM``: GQA, tied
embeddings, SmolLM2 / TinyLlama / Llama-3.2-1B shapes). It calls the model's own submodules
(embeddings, norms, q/k/v/o projections, MLP, lm_head), so whatever module an inference path
put in place of a linear (nn.Linear, an int4 kernel, AutoAWQ's WQLinear_GEMM) simply runs.

* :class:`Decoder` holds the cache, per layer K and V of shape [B, n_kv, max_len, head_dim],
  and the rotary cos/sin of every position (computed once by the model's ``rotary_emb``).
  ``prefill(ids)`` is eager and causal; ``decode_step(token, pos)`` writes position ``pos``
  with ``index_copy_`` and attends over the whole cache under the mask ``arange <= pos``:
  no Python int from a tensor, no data-dependent shape, so it can be captured.
* :class:`GraphedDecoder` captures one step with ``torch.cuda.CUDAGraph`` into static
  token/position/logits buffers and replays it per token; on a CPU it calls the same step
  eagerly (the same logic, which the tests cover).
* :func:`generate` is greedy decoding with either.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn


class DecodeError(ValueError):
    """A model this loop does not support; the message says why."""


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin  # cos/sin [T, head_dim] broadcast over [B, H, T, head_dim]


def _check_llama(model: nn.Module) -> None:
    cfg = getattr(model, "config", None)
    inner = getattr(model, "model", None)
    if getattr(cfg, "model_type", None) not in ("llama", "mistral"):
        raise DecodeError(
            f"static-cache decoding supports Llama-family models; found model_type {getattr(cfg, 'model_type', None)!r}"
        )
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if inner is None or any(not hasattr(inner, n) for n in needed) or not hasattr(model, "lm_head"):
        raise DecodeError(f"model lacks one of model.{{{', '.join(needed)}}} or lm_head")
    attn = inner.layers[0].self_attn
    if any(hasattr(attn, n) for n in ("q_norm", "k_norm")) or getattr(cfg, "sliding_window", None):
        raise DecodeError("query/key norms or sliding-window attention are not supported")


class Decoder:
    """Static KV cache for `batch` sequences of up to `max_len` tokens of a Llama-family `model`."""

    @torch.inference_mode()
    def __init__(self, model: nn.Module, batch: int, max_len: int):
        _check_llama(model)
        cfg, inner = model.config, model.model
        self.model, self.layers = model, list(inner.layers)
        self.embed, self.norm, self.lm_head = inner.embed_tokens, inner.norm, model.lm_head
        attn = self.layers[0].self_attn
        self.head_dim, self.scale = attn.head_dim, attn.scaling
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.batch, self.max_len = batch, max_len
        w = self.embed.weight
        self.device, self.dtype = w.device, w.dtype
        shape = (batch, self.n_kv, max_len, self.head_dim)
        self.k = [torch.zeros(shape, dtype=w.dtype, device=w.device) for _ in self.layers]
        self.v = [torch.zeros(shape, dtype=w.dtype, device=w.device) for _ in self.layers]
        self.positions = torch.arange(max_len, device=w.device)
        cos, sin = inner.rotary_emb(self.k[0], self.positions[None])  # [1, max_len, head_dim]
        self.cos, self.sin = cos[0], sin[0]

    def _qkv(self, attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        b, t, _ = x.shape
        q = attn.q_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        return _rope(q, cos, sin), _rope(k, cos, sin), v

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(h))[:, -1]  # [B, V]

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Fill positions 0..T-1 from `ids` [B, T] (eager, causal) -> last-position logits [B, V]."""
        b, t = ids.shape
        if b != self.batch or t > self.max_len:
            raise DecodeError(
                f"prefill of {tuple(ids.shape)} does not fit a cache of batch {self.batch}, max_len {self.max_len}"
            )
        h = self.embed(ids)
        cos, sin = self.cos[:t], self.sin[:t]
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = self._qkv(attn, layer.input_layernorm(h), cos, sin)
            self.k[i][:, :, :t] = k
            self.v[i][:, :, :t] = v
            o = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=self.scale, enable_gqa=self.n_kv != self.n_heads
            )
            h = h + attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self._logits(h)

    @torch.inference_mode()
    def decode_step(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One token per sequence, `token` [B, 1] at position `pos` (a 1-element tensor) -> logits [B, V].

        Capturable: the cache write is ``index_copy_`` at ``pos`` and attention runs over the
        whole cache under the mask ``arange(max_len) <= pos``. Query heads are grouped per KV
        head ([B, n_kv, heads per kv, head_dim]): exact for one query position, and no KV copy.
        """
        b = token.shape[0]
        h = self.embed(token)
        cos, sin = self.cos.index_select(0, pos), self.sin.index_select(0, pos)
        mask = (self.positions <= pos)[None]  # [1, max_len], True = attend
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = self._qkv(attn, layer.input_layernorm(h), cos, sin)
            self.k[i].index_copy_(2, pos, k)
            self.v[i].index_copy_(2, pos, v)
            qg = q.reshape(b, self.n_kv, self.n_heads // self.n_kv, self.head_dim)
            o = F.scaled_dot_product_attention(qg, self.k[i], self.v[i], attn_mask=mask, scale=self.scale)
            h = h + attn.o_proj(o.reshape(b, 1, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self._logits(h)


class GraphedDecoder:
    """Replays :meth:`Decoder.decode_step` from a CUDA graph (on a CPU: calls it eagerly).

    ``start(pos)`` sets the next position (after a prefill of `pos` tokens); each ``step(token)``
    copies `token` into the static input, runs the step and advances the position in place.
    The returned logits are the static output buffer: read them before the next step.
    """

    def __init__(self, decoder: Decoder, graphed: bool | None = None, warmup_steps: int = 3):
        self.dec = decoder
        self.graphed = decoder.device.type == "cuda" if graphed is None else graphed
        if self.graphed and decoder.device.type != "cuda":
            raise DecodeError("CUDA graph capture needs a model on a CUDA device")
        self.warmup_steps = warmup_steps
        self.token = torch.zeros(decoder.batch, 1, dtype=torch.long, device=decoder.device)
        self.pos = torch.zeros(1, dtype=torch.long, device=decoder.device)
        self.logits: torch.Tensor | None = None
        self.graph = None

    def start(self, pos: int) -> None:
        if not 0 <= pos < self.dec.max_len:
            raise DecodeError(f"position {pos} is outside the cache (max_len {self.dec.max_len})")
        self.pos.fill_(pos)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.token.copy_(token)
        if not self.graphed:
            self.logits = self.dec.decode_step(self.token, self.pos)
        else:  # pragma: no cover - needs a GPU
            if self.graph is None:
                self._capture()
            self.graph.replay()
        self.pos.add_(1)
        return self.logits

    def _capture(self) -> None:  # pragma: no cover - needs a GPU
        # warm-up steps on a side stream (as torch.cuda.graphs documents); each one recomputes
        # the same position from the same inputs, so the cache holds the same values after
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup_steps):
                self.dec.decode_step(self.token, self.pos)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.dec.decode_step(self.token, self.pos)


@torch.inference_mode()
def cache_kwarg(model: nn.Module) -> str:
    """The forward argument of a Hugging Face model that takes its KV cache (the reference the
    tests compare with): ``cache`` from transformers 5.24, ``past_key_values`` before (5.17 is
    pinned for llm-compressor)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(out):
    """The KV cache a Hugging Face forward returned (``cache``, or ``past_key_values`` before 5.24)."""
    return out.cache if hasattr(out, "cache") else out.past_key_values


def generate(model: nn.Module, ids: torch.Tensor, n_new: int, graphed: bool | None = None) -> torch.Tensor:
    """Greedy decoding of `n_new` tokens after `ids` [B, T] -> [B, T + n_new] (as ``model.generate``)."""
    if n_new < 1:
        raise DecodeError(f"n_new: expected at least 1 token; found {n_new}")
    b, t = ids.shape
    dec = Decoder(model, b, t + n_new)
    token = dec.prefill(ids).argmax(-1, keepdim=True)
    out = [ids, token]
    steps = GraphedDecoder(dec, graphed)
    steps.start(t)
    for _ in range(n_new - 1):
        token = steps.step(token).argmax(-1, keepdim=True)
        out.append(token)
    return torch.cat(out, dim=1)
