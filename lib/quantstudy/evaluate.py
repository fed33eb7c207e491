"""Evaluation against the exact baseline: perplexity, KL divergence and top-1 agreement on
token streams, task accuracy by log-likelihood ranking, per-token-category damage, and the
quality-budget verdict with paired bootstrap confidence intervals.

Perplexity uses overlapping windows of ``window`` tokens advanced by ``stride``: the first
window scores all its tokens, every later window scores only its last ``stride`` tokens, so
each token of the stream is scored exactly once with at least ``window - stride`` tokens of
left context (the Hugging Face "perplexity of fixed-length models" recipe).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

CATEGORIES = ("product", "figure", "jargon", "ordinary")
_FIGURE = re.compile(r"\$?\d[\d,]*(?:\.\d+)?%?")


# --------------------------------------------------------------------------- streams
@dataclass
class Stream:
    """A token stream cut into scoring windows; `category` labels each scored token."""
    input_ids: torch.Tensor      # [n_windows, window]
    score_mask: torch.Tensor     # [n_windows, window] bool: position t predicts token t (t >= 1)
    category: np.ndarray         # [n_scored] int index into CATEGORIES
    window_of_token: np.ndarray  # [n_scored] window index (bootstrap unit)

    @property
    def n_tokens(self) -> int:
        return int(self.score_mask.sum())


def _char_categories(text: str, lexicon: dict[str, list[str]]) -> np.ndarray:
    cats = np.full(len(text), CATEGORIES.index("ordinary"), dtype=np.int8)
    lower = text.lower()
    # Order matters: a later category overwrites an earlier one (products win over figures).
    for m in _FIGURE.finditer(text):
        cats[m.start():m.end()] = CATEGORIES.index("figure")
    for cat in ("figure", "jargon", "product"):
        for term in sorted(set(lexicon.get(cat, [])), key=len, reverse=True):
            t = term.lower()
            if not t:
                continue
            start = lower.find(t)
            while start >= 0:
                cats[start:start + len(t)] = CATEGORIES.index(cat)
                start = lower.find(t, start + len(t))
    return cats


def build_stream(tokenizer, texts: list[str], window: int, stride: int, max_tokens: int,
                 lexicon: dict[str, list[str]] | None = None) -> Stream:
    """Tokenize texts (each with the tokenizer's own special tokens, joined by EOS) into one
    stream of at most max_tokens and cut it into scoring windows."""
    ids: list[int] = []
    cats: list[int] = []
    eos = tokenizer.eos_token_id
    for text in texts:
        enc = tokenizer(text, return_offsets_mapping=True)
        char_cat = _char_categories(text, lexicon or {})
        for tok, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
            ids.append(tok)
            seg = char_cat[a:b]
            # A token belongs to a category when any of its characters does (not ordinary wins).
            special = [c for c in seg.tolist() if c != CATEGORIES.index("ordinary")]
            cats.append(min(special) if special else CATEGORIES.index("ordinary"))
        if eos is not None:
            ids.append(eos)
            cats.append(CATEGORIES.index("ordinary"))
        if len(ids) >= max_tokens:
            break
    ids, cats = ids[:max_tokens], cats[:max_tokens]
    if len(ids) < 2:
        raise ValueError("evaluation text is empty after tokenization")
    window = min(window, len(ids))
    starts = list(range(0, max(1, len(ids) - window) + 1, stride))
    if starts[-1] + window < len(ids):
        starts.append(len(ids) - window)
    rows, masks, tok_cat, tok_win = [], [], [], []
    scored_until = 0  # stream index up to which tokens are already scored (exclusive)
    for w, s in enumerate(starts):
        row = ids[s:s + window]
        mask = torch.zeros(window, dtype=torch.bool)
        first = max(1, scored_until - s)
        mask[first:len(row)] = True
        for t in range(first, len(row)):
            tok_cat.append(cats[s + t])
            tok_win.append(w)
        scored_until = s + len(row)
        rows.append(torch.tensor(row))
        masks.append(mask)
    return Stream(torch.stack(rows), torch.stack(masks), np.array(tok_cat, dtype=np.int8), np.array(tok_win))


@torch.no_grad()
def _window_logprobs(model, x: torch.Tensor) -> torch.Tensor:
    """log-softmax over the vocabulary, predicting position t+1 at row t; float32."""
    logits = model(input_ids=x).logits.float()
    return F.log_softmax(logits, dim=-1)


@torch.no_grad()
def score_stream(model, stream: Stream, baseline=None, batch_size: int = 8, desc: str = "ppl") -> dict:
    """Per scored token: NLL; and, given the baseline model, KL(baseline || model) and top-1 agreement."""
    nll, kl, agree = [], [], []
    dev = next(model.parameters()).device
    for i in tqdm(range(0, len(stream.input_ids), batch_size), desc=desc, leave=False):
        x = stream.input_ids[i:i + batch_size].to(dev)
        m = stream.score_mask[i:i + batch_size].to(dev)
        lp = _window_logprobs(model, x)[:, :-1]        # predicts tokens 1..T-1
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


def perplexity(nll: np.ndarray) -> float:
    return float(math.exp(float(np.mean(nll))))


# --------------------------------------------------------------------------- tasks
@torch.no_grad()
def score_items(model, tokenizer, items: list[dict], desc: str = "tasks") -> dict:
    """Log-likelihood ranking, as lm-eval-harness scores multiple choice.

    Score(choice) = sum of log p(choice tokens | context). The context runs once; its KV cache
    is repeated for all choices. Returns per-item correctness (acc), length-normalised
    correctness (acc_norm, per character), and the correct choice's margin over the best
    distractor (log-prob units).
    """
    dev = next(model.parameters()).device
    acc, acc_norm, margin = [], [], []
    for item in tqdm(items, desc=desc, leave=False):
        ctx = tokenizer(item["context"])["input_ids"]
        choice_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in item["choices"]]
        out = model(input_ids=torch.tensor([ctx], device=dev), use_cache=True)
        first_lp = F.log_softmax(out.logits[0, -1].float(), -1)
        n = len(choice_ids)
        longest = max(len(c) for c in choice_ids)
        scores = []
        if longest > 1:
            cache = getattr(out, "cache", None) or out.past_key_values
            cache.batch_repeat_interleave(n)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            batch = torch.tensor([c + [pad] * (longest - len(c)) for c in choice_ids], device=dev)
            attn = torch.ones(n, len(ctx) + longest, dtype=torch.long, device=dev)
            lp = F.log_softmax(model(input_ids=batch, cache=cache, attention_mask=attn).logits.float(), -1)
            for j, c in enumerate(choice_ids):
                s = first_lp[c[0]].item()
                for t in range(1, len(c)):
                    s += lp[j, t - 1, c[t]].item()
                scores.append(s)
        else:
            scores = [first_lp[c[0]].item() for c in choice_ids]
        scores = np.array(scores)
        lens = np.array([max(1, len(c)) for c in item["choices"]])
        ans = int(item["answer"])
        acc.append(float(np.argmax(scores) == ans))
        acc_norm.append(float(np.argmax(scores / lens) == ans))
        others = np.delete(scores, ans)
        margin.append(float(scores[ans] - others.max()))
    return {"acc": np.array(acc), "acc_norm": np.array(acc_norm), "margin": np.array(margin)}


# --------------------------------------------------------------------------- statistics
def paired_bootstrap(base: np.ndarray, cand: np.ndarray, stat: str = "mean_diff", n: int = 1000, seed: int = 0,
                     confidence: float = 0.95, groups: np.ndarray | None = None) -> dict:
    """Paired bootstrap CI of a candidate-vs-baseline statistic over items (or over `groups`,
    e.g. evaluation windows, when items are correlated tokens).

    stat 'mean_diff': mean(cand) - mean(base)            (accuracy points when x100)
    stat 'ppl_pct'  : 100 * (exp(mean cand) / exp(mean base) - 1)   for NLL arrays
    """
    base, cand = np.asarray(base, float), np.asarray(cand, float)
    if base.shape != cand.shape:
        raise ValueError("paired bootstrap needs arrays of equal shape")
    if groups is None:
        groups = np.arange(len(base))
    uniq, inv = np.unique(groups, return_inverse=True)
    g = len(uniq)
    sb = np.bincount(inv, weights=base, minlength=g)
    sc = np.bincount(inv, weights=cand, minlength=g)
    cnt = np.bincount(inv, minlength=g).astype(float)

    def value(wb, wc, wn):
        if stat == "mean_diff":
            return wc / wn - wb / wn
        if stat == "ppl_pct":
            return 100.0 * (np.exp(wc / wn - wb / wn) - 1.0)
        raise ValueError(stat)

    point = float(value(sb.sum(), sc.sum(), cnt.sum()))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, g, size=(n, g))
    w = np.apply_along_axis(lambda r: np.bincount(r, minlength=g), 1, idx).astype(float)
    boots = value(w @ sb, w @ sc, w @ cnt)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return {"point": point, "lo": float(lo), "hi": float(hi), "n_units": int(g)}


def budget_verdict(line: dict, ci: dict) -> dict:
    """Pass only when the worse end of the CI stays inside the declared budget.

    Accuracy metrics: degradation = -(cand - base) in points; perplexity: % increase.
    """
    metric, limit = line["metric"], float(line["max_drop"])
    if metric.endswith("_ppl"):
        worst = ci["hi"]                      # % increase, larger is worse
        point = ci["point"]
    else:
        worst = -ci["lo"]                     # drop in points, larger is worse
        point = -ci["point"]
    verdict = "pass" if worst <= limit else ("fail" if point > limit else "inconclusive")
    return {"metric": metric, "limit": limit, "unit": line.get("unit", "points"), "degradation": round(point, 4),
            "worst_case": round(worst, 4), "verdict": verdict}


def category_damage(base_nll: np.ndarray, cand_nll: np.ndarray, category: np.ndarray) -> dict[str, dict]:
    """Mean NLL change (candidate - baseline, nats/token) per token category."""
    out = {}
    for i, cat in enumerate(CATEGORIES):
        sel = category == i
        if sel.any():
            d = cand_nll[sel] - base_nll[sel]
            out[cat] = {"delta_nll": float(d.mean()), "tokens": int(sel.sum()),
                        "se": float(d.std(ddof=1) / math.sqrt(sel.sum())) if sel.sum() > 1 else float("nan")}
    return out


def load_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
