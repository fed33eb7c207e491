"""How the 4-bit model's output head (``lm_head``) is served: ``serve.lm_head`` in params.

AWQ quantizes the decoder's linears and leaves the head in float. On a CPU at batch 1 the head
is a large share of a token's time (a 128,256 x 2,048 float32 head reads 1 GB per token), so a
server may quantize it too. The rule that keeps this honest: the head that step 04 times is the
head that step 03 scores, as its own row under the quality budget.

``float``
    the model's own head, in the path's dtype (what AWQ leaves).
``bfloat16``
    a dense bfloat16 copy of the head (half the bytes of float32).
``int8``
    weight-only int8, one symmetric scale per output channel, through torch's
    ``aten._weight_int8pack_mm`` with bfloat16 activations (float32 activations take a slow
    path on this CPU). A quarter of float32's bytes.

A tied head (SmolLM2) keeps its float embedding for the input lookup; the served head is a
separate tensor beside it.
"""

from __future__ import annotations

import torch
from torch import nn

LM_HEADS = ("float", "bfloat16", "int8")


class ServingError(ValueError):
    """A head choice the serving code cannot build; the message names the fix."""


class BFloat16Head(nn.Module):
    """A dense bfloat16 head; the output is cast back to the activations' dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype=bfloat16"


class Int8Head(nn.Module):
    """Weight-only int8 head: ``w[o, :] ~= q[o, :] * scale[o]``, q in -127..127 (symmetric, per
    output channel), computed by ``aten._weight_int8pack_mm`` in bfloat16."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("qweight", q.contiguous())
        self.register_buffer("scales", scale.to(torch.bfloat16))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def dequantized(self) -> torch.Tensor:
        """The weight this head computes with, in float32 (a reference for tests)."""
        return self.qweight.float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if x2.device.type == "cpu":
            out = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scales)
        else:  # the same arithmetic where the CPU kernel does not run
            out = (x2 @ self.qweight.to(torch.bfloat16).t()) * self.scales
        if self.bias is not None:
            out = out + self.bias
        return out.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per output channel"


def served_head(head: nn.Module, kind: str) -> nn.Module | None:
    """The head module a server would run for ``kind``, built from the model's own head (an
    ``nn.Linear``); ``None`` for ``float`` (the model's head as it is)."""
    if kind not in LM_HEADS:
        raise ServingError(f"serve.lm_head: unknown head {kind!r}; one of {', '.join(LM_HEADS)}")
    if kind == "float":
        return None
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ServingError(
            f"serve.lm_head: the model's lm_head ({type(head).__name__}) has no 2-D weight to "
            "convert; use lm_head: float"
        )
    cls = Int8Head if kind == "int8" else BFloat16Head
    return cls(weight, getattr(head, "bias", None)).to(weight.device)


def apply_served_head(model: nn.Module, kind: str) -> nn.Module:
    """Replace ``model.lm_head`` by the served head (untying it from the input embedding); the
    model itself for ``float``. Records the choice as ``model.quantstudy_lm_head``."""
    new = served_head(model.get_output_embeddings(), kind)
    if new is not None:
        model.lm_head = new
        if getattr(model.config, "tie_word_embeddings", False):
            model.config.tie_word_embeddings = False  # the embedding stays float; the head is its own tensor now
    model.quantstudy_lm_head = kind
    return model


def served_name(checkpoint: str, kind: str) -> str:
    """The name of a checkpoint served with a non-float head, as a row of step 03."""
    return checkpoint if kind == "float" else f"{checkpoint}+head-{kind}"


def served_checkpoint(records: list[dict]) -> dict:
    """The checkpoint a server would run and step 04 times: a packed 4-bit AWQ checkpoint of
    the main comparison, in-domain first, then by name (speed does not depend on which: the
    shapes are the same). Raises ServingError when step 02 made none."""
    packed = [
        r
        for r in records
        if r["bits"] == 4
        and not r.get("simulated")
        and not r.get("sweep")
        and not r.get("variant")
        and not r.get("served_head")
        and r.get("backend", "autoawq") == "autoawq"  # the packed AutoAWQ layout the fast paths convert
    ]
    if not packed:
        raise ServingError("no packed 4-bit checkpoint to serve (3-bit runs are simulated); quantize with bits [4]")
    return sorted(packed, key=lambda r: (r["method"] != "awq", r.get("calibration_source") != "in_domain", r["name"]))[
        0
    ]
