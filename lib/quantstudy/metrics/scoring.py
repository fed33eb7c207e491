"""Model-facing measurement, shared by step 02's sanity check and step 03: token streams cut
into perplexity windows (NLL, and KL divergence and top-1 agreement against a baseline) and
multiple-choice task items scored by log-likelihood ranking.

Perplexity uses overlapping windows of ``window`` tokens advanced by ``stride``: the first
window scores all its tokens, every later window scores only its last ``stride`` tokens, so
each token of the stream is scored exactly once with at least ``window - stride`` tokens of
left context (the Hugging Face "perplexity of fixed-length models" recipe).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from quantstudy.data import encode, encode_with_offsets
from quantstudy.metrics.stats import CATEGORIES

_FIGURE = re.compile(r"\$?\d[\d,]*(?:\.\d+)?%?")
_ORDINARY = CATEGORIES.index("ordinary")


# --------------------------------------------------------------------------- streams
@dataclass
class Stream:
    """A token stream cut into scoring windows; `category` labels each scored token."""

    input_ids: torch.Tensor  # [n_windows, window]
    score_mask: torch.Tensor  # [n_windows, window] bool: position t predicts token t (t >= 1)
    category: np.ndarray  # [n_scored] int index into CATEGORIES
    window_of_token: np.ndarray  # [n_scored] window index (bootstrap unit)

    @property
    def n_tokens(self) -> int:
        return int(self.score_mask.sum())


def _char_categories(text: str, lexicon: dict[str, list[str]]) -> np.ndarray:
    cats = np.full(len(text), _ORDINARY, dtype=np.int8)
    lower = text.lower()
    # Order matters: a later category overwrites an earlier one (products win over figures).
    for m in _FIGURE.finditer(text):
        cats[m.start() : m.end()] = CATEGORIES.index("figure")
    for cat in ("figure", "jargon", "product"):
        for term in sorted(set(lexicon.get(cat, [])), key=len, reverse=True):
            t = term.lower()
            if not t:
                continue
            start = lower.find(t)
            while start >= 0:
                cats[start : start + len(t)] = CATEGORIES.index(cat)
                start = lower.find(t, start + len(t))
    return cats


def _labelled_tokens(
    tokenizer, texts: list[str], max_tokens: int, lexicon: dict[str, list[str]]
) -> tuple[list[int], list[int]]:
    """The texts' tokens (each with the tokenizer's own special tokens, joined by EOS), at most
    max_tokens, and each token's category."""
    ids: list[int] = []
    cats: list[int] = []
    eos = tokenizer.eos_token_id
    for text in texts:
        enc = encode_with_offsets(tokenizer, text)
        char_cat = _char_categories(text, lexicon)
        for tok, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
            ids.append(tok)
            # A token belongs to a category when any of its characters does (not ordinary wins).
            special = [c for c in char_cat[a:b].tolist() if c != _ORDINARY]
            cats.append(min(special) if special else _ORDINARY)
        if eos is not None:
            ids.append(eos)
            cats.append(_ORDINARY)
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens], cats[:max_tokens]


def _cut_windows(ids: list[int], cats: list[int], window: int, stride: int) -> Stream:
    """Overlapping windows over the stream, each token scored once (see the module docstring)."""
    window = min(window, len(ids))
    starts = list(range(0, max(1, len(ids) - window) + 1, stride))
    if starts[-1] + window < len(ids):
        starts.append(len(ids) - window)
    rows, masks, tok_cat, tok_win = [], [], [], []
    scored_until = 0  # stream index up to which tokens are already scored (exclusive)
    for w, s in enumerate(starts):
        row = ids[s : s + window]
        mask = torch.zeros(window, dtype=torch.bool)
        first = max(1, scored_until - s)
        mask[first : len(row)] = True
        for t in range(first, len(row)):
            tok_cat.append(cats[s + t])
            tok_win.append(w)
        scored_until = s + len(row)
        rows.append(torch.tensor(row))
        masks.append(mask)
    return Stream(torch.stack(rows), torch.stack(masks), np.array(tok_cat, dtype=np.int8), np.array(tok_win))


def build_stream(
    tokenizer, texts: list[str], window: int, stride: int, max_tokens: int, lexicon: dict[str, list[str]] | None = None
) -> Stream:
    """Tokenize texts (each with the tokenizer's own special tokens, joined by EOS) into one
    stream of at most max_tokens and cut it into scoring windows."""
    ids, cats = _labelled_tokens(tokenizer, texts, max_tokens, lexicon or {})
    if len(ids) < 2:
        raise ValueError("evaluation text is empty after tokenization")
    return _cut_windows(ids, cats, window, stride)


@torch.no_grad()
def head_logits(model, heads=(), logits_to_keep: int = 0, **inputs) -> list[torch.Tensor]:
    """Logits of the model's own head, then of each extra head (``serve.lm_head``) on the same
    hidden states: the decoder runs once, exactly as the model's forward runs it (a test
    checks the first entry equals ``model(...).logits`` bit for bit)."""
    if not heads:
        return [model(**inputs, logits_to_keep=logits_to_keep).logits]
    hidden = model.get_decoder()(**inputs).last_hidden_state
    if logits_to_keep:
        hidden = hidden[:, -logits_to_keep:]
    return [model.get_output_embeddings()(hidden)] + [h(hidden) for h in heads]


@torch.no_grad()
def _window_logprobs(model, x: torch.Tensor, heads=()) -> torch.Tensor | list[torch.Tensor]:
    """log-softmax over the vocabulary, predicting position t+1 at row t; float32. With extra
    heads, a list: the model's own head first."""
    lps = [F.log_softmax(lg.float(), dim=-1) for lg in head_logits(model, heads, input_ids=x)]
    return lps if heads else lps[0]


@torch.no_grad()
def score_stream(model, stream: Stream, baseline=None, batch_size: int = 8, desc: str = "ppl") -> dict:
    """Per scored token: NLL; and, given the baseline model, KL(baseline || model) and top-1 agreement."""
    nll, kl, agree = [], [], []
    dev = next(model.parameters()).device
    for i in tqdm(range(0, len(stream.input_ids), batch_size), desc=desc, leave=False):
        x = stream.input_ids[i : i + batch_size].to(dev)
        m = stream.score_mask[i : i + batch_size].to(dev)
        lp = _window_logprobs(model, x)[:, :-1]  # predicts tokens 1..T-1
        target = x[:, 1:]
        mask = m[:, 1:]
        nll.append((-lp.gather(-1, target[..., None])[..., 0])[mask].cpu())
        if baseline is not None:
            blp = _window_logprobs(baseline, x)[:, :-1]
            kl.append((blp.exp() * (blp - lp)).sum(-1)[mask].cpu())
            agree.append((blp.argmax(-1) == lp.argmax(-1))[mask].cpu())
    out = {"nll": torch.cat(nll).numpy().astype(np.float64)}
    if baseline is not None:
        out["kl"] = torch.cat(kl).numpy().astype(np.float64)
        out["agree"] = torch.cat(agree).numpy().astype(np.float64)
    return out


# --------------------------------------------------------------------------- tasks
def _encode_item(tokenizer, item: dict) -> tuple[list[int], list[list[int]]]:
    """An item's context tokens and each choice's tokens (no special tokens on the choices)."""
    return (
        encode(tokenizer, item["context"]),
        [tokenizer(c, add_special_tokens=False)["input_ids"] for c in item["choices"]],
    )


def batch_order(items: list[dict], tokenizer) -> list[int]:
    """The order score_items batches items in: by choice count, then packed length in tokens
    (context plus every choice), so a batch pads little (about 4% here, 16% when sorted by
    characters)."""
    return _row_order([_encode_item(tokenizer, it) for it in items])


def _row_order(rows: list[tuple[list[int], list[list[int]]]]) -> list[int]:
    sizes = [(len(ch), len(ctx) + sum(map(len, ch))) for ctx, ch in rows]
    return sorted(range(len(rows)), key=lambda i: sizes[i])


def fixed_shape(rows: list[tuple[list[int], list[list[int]]]]) -> tuple[int, int]:
    """(width, keep) that fits every item: the longest packed item (context plus every choice)
    and the most choice tokens plus one. Every batch of a fixed-shape call has this shape."""
    return max(len(c) + sum(map(len, ch)) for c, ch in rows), max(sum(map(len, ch)) for _, ch in rows) + 1


def _packed_batch(
    rows: list[tuple[list[int], list[list[int]]]],
    pad: int,
    sdpa: bool,
    dtype: torch.dtype,
    shape: tuple[int, int, int] | None = None,
):
    """One batch of items, each packed as context + every choice in a single row.

    Rows are left-padded to a common width, so every row ends at the same position and all
    scored positions lie in the last ``keep`` columns. A choice's tokens attend to the context
    and to their own earlier tokens, never to another choice, and continue the context's
    positions: the same arithmetic as scoring each choice after the context, one forward pass
    for all of them. Padding attends to itself only (a row with nothing to attend to gives NaN).
    ``shape`` (rows, width, keep) fixes the batch's shape instead of fitting it to these items;
    rows past the items are padding only.
    Returns input_ids, position_ids, the 4D mask, keep, and per row the column of the context's
    last token and each choice's first column."""
    n, width, keep = shape or (
        len(rows),
        max(len(c) + sum(map(len, ch)) for c, ch in rows),
        max(sum(map(len, ch)) for _, ch in rows) + 1,
    )
    x = torch.full((n, width), pad, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    allow = torch.zeros((n, 1, width, width), dtype=torch.bool)
    idx = torch.arange(width)
    layout = []
    for r in range(len(rows), n):
        allow[r, 0, idx, idx] = True
    for r, (ctx, choices) in enumerate(rows):
        off = width - len(ctx) - sum(map(len, choices))
        allow[r, 0, idx[:off], idx[:off]] = True
        L = len(ctx)
        x[r, off : off + L] = torch.tensor(ctx)
        pos[r, off : off + L] = torch.arange(L)
        allow[r, 0, off : off + L, off : off + L] = torch.ones(L, L, dtype=torch.bool).tril()
        starts, s = [], off + L
        for c in choices:
            n_c = len(c)
            x[r, s : s + n_c] = torch.tensor(c)
            pos[r, s : s + n_c] = torch.arange(L, L + n_c)
            allow[r, 0, s : s + n_c, off : off + L] = True
            allow[r, 0, s : s + n_c, s : s + n_c] = torch.ones(n_c, n_c, dtype=torch.bool).tril()
            starts.append(s)
            s += n_c
        layout.append((off + L - 1, starts))
    mask = allow if sdpa else torch.zeros(allow.shape, dtype=dtype).masked_fill(~allow, torch.finfo(dtype).min)
    return x, pos, mask, keep, layout


@torch.no_grad()
def score_items(model, tokenizer, items: list[dict], desc: str = "tasks", batch_items: int = 1) -> dict:
    """Log-likelihood ranking, as lm-eval-harness scores multiple choice.

    Score(choice) = sum of log p(choice tokens | context). Each item is one row holding its
    context followed by all its choices, with an attention mask that keeps the choices apart
    (``_packed_batch``): no repeated context. By default each item is its own forward pass
    (``batch_items=1``), so an item's score never depends on which items share its batch or
    how they are padded. In bfloat16 batches fitted to their items would: the logits are
    rounded to steps of 0.125 at their usual magnitude, and on SmolLM2 batches of 16 moved
    choice log-likelihoods by up to 0.6 nats against single items and changed 3 of the
    baseline's 100 grounded answers. With ``batch_items > 1`` every forward pass has one fixed
    shape (``batch_items`` rows, the longest item's width, the most choice tokens), so the
    kernels are the same for every batch and an item's score again does not depend on its
    companions (tested); it differs from the one-per-pass score by rounding only (bfloat16 on a
    CPU, 12 SmolLM2 items in batches of 4: up to 0.39 nats). That is for a GPU, where one small
    item per pass leaves the device idle (evaluate.item_batch). Returns
    per-item correctness (acc), length-normalised correctness (acc_norm, per character), the
    correct choice's margin over the best distractor (log-prob units), and each choice's
    summed log-likelihood (choice_ll: [items, most choices], NaN past an item's own choices).
    """
    return score_items_heads(model, tokenizer, items, (), desc, batch_items)[0]


@torch.no_grad()
def score_items_heads(
    model, tokenizer, items: list[dict], heads=(), desc: str = "tasks", batch_items: int = 1, fit: list | None = None
) -> list[dict]:
    """``score_items`` for the model's own head and each extra head (same forward passes).
    ``fit``: with ``batch_items > 1``, the items whose fixed shape the batches take (default:
    these items), so that re-scoring a few of them reproduces a larger run bit for bit."""
    if not items:
        return [
            {k: np.zeros(0) for k in ("acc", "acc_norm", "margin")} | {"choice_ll": np.zeros((0, 0))}
            for _ in range(1 + len(heads))
        ]
    rows = [_encode_item(tokenizer, it) for it in items]
    empty = [it.get("item_id", i) for i, (it, (_, ch)) in enumerate(zip(items, rows)) if not all(ch)]
    if empty:
        raise ValueError(f"task items {empty[:5]}: a choice encodes to no tokens")
    fit_rows = rows if fit is None else [_encode_item(tokenizer, it) for it in fit]
    shape = (batch_items, *fixed_shape(fit_rows)) if batch_items > 1 else None
    if len(items) == 1 and shape is None:
        return _score_batch(model, tokenizer, items, rows, heads, None)
    # Items of similar length together (less padding in fitted batches), then the given order.
    order = _row_order(rows)
    parts = [
        _score_batch(
            model,
            tokenizer,
            [items[i] for i in order[b : b + batch_items]],
            [rows[i] for i in order[b : b + batch_items]],
            heads,
            shape,
        )
        for b in tqdm(range(0, len(order), batch_items), desc=desc, leave=False)
    ]
    inverse = np.argsort(order)
    outs = []
    for h in range(1 + len(heads)):
        out = {k: np.concatenate([p[h][k] for p in parts])[inverse] for k in ("acc", "acc_norm", "margin")}
        out["choice_ll"] = _pad_rows([row for p in parts for row in p[h]["choice_ll"]])[inverse]
        outs.append(out)
    return outs


def _score_batch(model, tokenizer, items: list[dict], rows, heads, shape) -> list[dict]:
    """One forward pass over these items (shape: fixed (rows, width, keep), or None: fitted)."""
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sdpa = getattr(model.config, "_attn_implementation", "sdpa") == "sdpa"
    x, pos, mask, keep, layout = _packed_batch(rows, pad, sdpa, next(model.parameters()).dtype, shape)
    logits = head_logits(
        model, heads, keep, input_ids=x.to(dev), position_ids=pos.to(dev), attention_mask=mask.to(dev), use_cache=False
    )
    # column j of each log-prob tensor predicts token (width - keep + j + 1)
    return [_rank_choices(items, rows, layout, F.log_softmax(lg.float(), -1).cpu(), x.shape[1] - keep) for lg in logits]


def _rank_choices(items: list[dict], rows, layout, lp: torch.Tensor, first: int) -> dict:
    """Per item: each choice's summed log-likelihood, and the ranking measures built on it."""
    acc, acc_norm, margin, choice_ll = [], [], [], []
    for r, (it, (ctx, choices), (last, starts)) in enumerate(zip(items, rows, layout)):
        sc = []
        for c, s in zip(choices, starts):
            prev = [last] + list(range(s, s + len(c) - 1))  # the column predicting each choice token
            sc.append(float(sum(lp[r, p - first, t] for p, t in zip(prev, c))))
        sc = np.array(sc, dtype=np.float64)
        lens = np.array([max(1, len(c)) for c in it["choices"]])
        ans = int(it["answer"])
        acc.append(float(np.argmax(sc) == ans))
        acc_norm.append(float(np.argmax(sc / lens) == ans))
        margin.append(float(sc[ans] - np.delete(sc, ans).max()))
        choice_ll.append(sc)
    return {
        "acc": np.array(acc),
        "acc_norm": np.array(acc_norm),
        "margin": np.array(margin),
        "choice_ll": _pad_rows(choice_ll),
    }


def _pad_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of unequal length as one float64 array, NaN-padded on the right."""
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


# --------------------------------------------------------------------------- one model
@torch.no_grad()
def evaluate_model(
    model,
    tokenizer,
    streams: dict[str, Stream],
    items: dict[str, list[dict]],
    baseline_logprobs=None,
    batch_size: int = 8,
    name: str = "",
    keep_logprobs: bool = False,
    heads: dict | None = None,
    item_batch: int = 1,
    fit_items: dict[str, list[dict]] | None = None,
) -> dict:
    """All per-token and per-item arrays of one model. With baseline log-probs (cached per
    batch: {domain: [tensor per batch]}, or the baseline model itself), also KL and top-1
    agreement against the baseline. With ``heads`` ({name: module}, served output heads), the
    same arrays for the model with each head in place of its own, under ``out["heads"][name]``,
    from the same decoder passes. ``item_batch``: task items per forward pass (score_items);
    ``fit_items``: per task, the items whose fixed batch shape to use (score_items_heads' fit)."""
    extra = list((heads or {}).values())
    per_head: list[dict] = [{"streams": {}, "items": {}} for _ in range(1 + len(extra))]
    for dom, stream in streams.items():
        baseline = baseline_logprobs[dom] if isinstance(baseline_logprobs, dict) else baseline_logprobs
        recs = _stream_records(model, stream, extra, baseline, batch_size, f"{name} {dom}", keep_logprobs)
        for out, rec in zip(per_head, recs):
            out["streams"][dom] = rec
    for task, task_items in items.items():
        if task_items:
            fit = (fit_items or {}).get(task)
            scored = score_items_heads(model, tokenizer, task_items, extra, f"{name} {task}", item_batch, fit)
            for out, rec in zip(per_head, scored):
                out["items"][task] = rec
    out = per_head[0]
    if heads:
        out["heads"] = dict(zip(heads, per_head[1:]))
    return out


@torch.no_grad()
def _stream_records(
    model, stream: Stream, extra: list, baseline, batch_size: int, desc: str, keep_logprobs: bool
) -> list[dict]:
    """Per head (the model's own first, then each of `extra`): each scored token's NLL; given
    `baseline` (the baseline's log-probs per batch, or the baseline model), KL and top-1
    agreement; else with keep_logprobs, the own head's log-probs per batch under ``_logprobs``."""
    nll, kl, agree = ([[] for _ in range(1 + len(extra))] for _ in range(3))
    cache = []
    dev = next(model.parameters()).device
    for bi, i in enumerate(tqdm(range(0, len(stream.input_ids), batch_size), desc=desc, leave=False)):
        x = stream.input_ids[i : i + batch_size].to(dev)
        mask = stream.score_mask[i : i + batch_size][:, 1:].to(dev)
        lps = (
            [lp[:, :-1] for lp in _window_logprobs(model, x, extra)] if extra else [_window_logprobs(model, x)[:, :-1]]
        )
        blp = None
        if baseline is not None:
            # The cached tensor of this batch, or the baseline model when the cache would not fit.
            blp = _window_logprobs(baseline, x)[:, :-1] if isinstance(baseline, nn.Module) else baseline[bi]
        elif keep_logprobs:
            cache.append(lps[0])
        for h, lp in enumerate(lps):
            nll[h].append((-lp.gather(-1, x[:, 1:, None])[..., 0])[mask].cpu())
            if blp is not None:
                kl[h].append((blp.exp() * (blp - lp)).sum(-1)[mask].cpu())
                agree[h].append((blp.argmax(-1) == lp.argmax(-1))[mask].cpu())
    recs = []
    for h in range(1 + len(extra)):
        rec = {"nll": torch.cat(nll[h]).double().numpy()}
        if baseline is not None:
            rec["kl"] = torch.cat(kl[h]).double().numpy()
            rec["agree"] = torch.cat(agree[h]).double().numpy()
        elif keep_logprobs and h == 0:
            rec["_logprobs"] = cache
        recs.append(rec)
    return recs
