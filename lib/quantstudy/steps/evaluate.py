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

from quantstudy import contracts, serving
from quantstudy.data import encode
from quantstudy.metrics.registry import METRIC_TASK, TASKS

CATEGORIES = ("product", "figure", "jargon", "ordinary")
# Baseline log-probs are cached in memory up to this size; beyond it the baseline model is
# kept and re-run per batch (real vocabularies of 100k+ tokens).
CACHE_LIMIT_BYTES = 6 * 2**30
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
    from quantstudy.data import encode_with_offsets

    for text in texts:
        enc = encode_with_offsets(tokenizer, text)
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
def _encode_item(tokenizer, item: dict) -> tuple[list[int], list[list[int]]]:
    """An item's context tokens and each choice's tokens (no special tokens on the choices)."""
    return (encode(tokenizer, item["context"]),
            [tokenizer(c, add_special_tokens=False)["input_ids"] for c in item["choices"]])


def batch_order(items: list[dict], tokenizer) -> list[int]:
    """The order score_items batches items in: by choice count, then packed length in tokens
    (context plus every choice), so a batch pads little (about 4% here, 16% when sorted by
    characters)."""
    sizes = [(len(ch), len(ctx) + sum(map(len, ch))) for ctx, ch in (_encode_item(tokenizer, it) for it in items)]
    return sorted(range(len(items)), key=lambda i: sizes[i])


def _packed_batch(rows: list[tuple[list[int], list[list[int]]]], pad: int, sdpa: bool, dtype: torch.dtype):
    """One batch of items, each packed as context + every choice in a single row.

    Rows are left-padded to a common width, so every row ends at the same position and all
    scored positions lie in the last ``keep`` columns. A choice's tokens attend to the context
    and to their own earlier tokens, never to another choice, and continue the context's
    positions: the same arithmetic as scoring each choice after the context, one forward pass
    for all of them. Padding attends to itself only (a row with nothing to attend to gives NaN).
    Returns input_ids, position_ids, the 4D mask, keep, and per row the column of the context's
    last token and each choice's first column."""
    width = max(len(c) + sum(map(len, ch)) for c, ch in rows)
    keep = max(sum(map(len, ch)) for _, ch in rows) + 1
    x = torch.full((len(rows), width), pad, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    allow = torch.zeros((len(rows), 1, width, width), dtype=torch.bool)
    idx = torch.arange(width)
    layout = []
    for r, (ctx, choices) in enumerate(rows):
        off = width - len(ctx) - sum(map(len, choices))
        allow[r, 0, idx[:off], idx[:off]] = True
        L = len(ctx)
        x[r, off:off + L] = torch.tensor(ctx)
        pos[r, off:off + L] = torch.arange(L)
        allow[r, 0, off:off + L, off:off + L] = torch.ones(L, L, dtype=torch.bool).tril()
        starts, s = [], off + L
        for c in choices:
            n = len(c)
            x[r, s:s + n] = torch.tensor(c)
            pos[r, s:s + n] = torch.arange(L, L + n)
            allow[r, 0, s:s + n, off:off + L] = True
            allow[r, 0, s:s + n, s:s + n] = torch.ones(n, n, dtype=torch.bool).tril()
            starts.append(s)
            s += n
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
    how they are padded. In bfloat16 it would: the logits are rounded to steps of 0.125 at
    their usual magnitude, and on SmolLM2 batches of 16 moved choice log-likelihoods by up to
    0.6 nats against single items and changed 3 of the baseline's 100 grounded answers, for
    about 15% less time. Returns
    per-item correctness (acc), length-normalised correctness (acc_norm, per character), the
    correct choice's margin over the best distractor (log-prob units), and each choice's
    summed log-likelihood (choice_ll: [items, most choices], NaN past an item's own choices).
    """
    return score_items_heads(model, tokenizer, items, (), desc, batch_items)[0]


@torch.no_grad()
def score_items_heads(model, tokenizer, items: list[dict], heads=(), desc: str = "tasks",
                      batch_items: int = 1) -> list[dict]:
    """``score_items`` for the model's own head and each extra head (same forward passes)."""
    n_heads = 1 + len(heads)
    if len(items) > batch_items:
        # Items of similar length together (less padding when batch_items > 1), then the given order.
        order = batch_order(items, tokenizer)
        parts = [score_items_heads(model, tokenizer, [items[i] for i in order[b:b + batch_items]], heads, desc,
                                   batch_items)
                 for b in tqdm(range(0, len(order), batch_items), desc=desc, leave=False)]
        inverse = np.argsort(order)
        outs = []
        for h in range(n_heads):
            out = {k: np.concatenate([p[h][k] for p in parts])[inverse] for k in ("acc", "acc_norm", "margin")}
            out["choice_ll"] = _pad_rows([row for p in parts for row in p[h]["choice_ll"]])[inverse]
            outs.append(out)
        return outs
    if not items:
        return [{k: np.zeros(0) for k in ("acc", "acc_norm", "margin")} | {"choice_ll": np.zeros((0, 0))}
                for _ in range(n_heads)]
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = [_encode_item(tokenizer, it) for it in items]
    empty = [it.get("item_id", i) for i, (it, (_, ch)) in enumerate(zip(items, rows)) if not all(ch)]
    if empty:
        raise ValueError(f"task items {empty[:5]}: a choice encodes to no tokens")
    sdpa = getattr(model.config, "_attn_implementation", "sdpa") == "sdpa"
    x, pos, mask, keep, layout = _packed_batch(rows, pad, sdpa, next(model.parameters()).dtype)
    logits = head_logits(model, heads, keep, input_ids=x.to(dev), position_ids=pos.to(dev),
                         attention_mask=mask.to(dev), use_cache=False)
    # column j of each log-prob tensor predicts token (width - keep + j + 1)
    return [_rank_choices(items, rows, layout, F.log_softmax(lg.float(), -1).cpu(), x.shape[1] - keep)
            for lg in logits]


def _rank_choices(items: list[dict], rows, layout, lp: torch.Tensor, first: int) -> dict:
    """Per item: each choice's summed log-likelihood, and the ranking measures built on it."""
    acc, acc_norm, margin, choice_ll = [], [], [], []
    for r, (it, (ctx, choices), (last, starts)) in enumerate(zip(items, rows, layout)):
        sc = []
        for c, s in zip(choices, starts):
            prev = [last] + list(range(s, s + len(c) - 1))   # the column predicting each choice token
            sc.append(float(sum(lp[r, p - first, t] for p, t in zip(prev, c))))
        sc = np.array(sc, dtype=np.float64)
        lens = np.array([max(1, len(c)) for c in it["choices"]])
        ans = int(it["answer"])
        acc.append(float(np.argmax(sc) == ans))
        acc_norm.append(float(np.argmax(sc / lens) == ans))
        margin.append(float(sc[ans] - np.delete(sc, ans).max()))
        choice_ll.append(sc)
    return {"acc": np.array(acc), "acc_norm": np.array(acc_norm), "margin": np.array(margin),
            "choice_ll": _pad_rows(choice_ll)}


def _pad_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of unequal length as one float64 array, NaN-padded on the right."""
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), np.nan)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


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


# --------------------------------------------------------------------------- the step


def checkpoint_list(quantize_dir: str | Path) -> list[dict]:
    """Checkpoint records written by step 02 (records of checkpoints present on disk)."""
    from quantstudy.paths import resolve

    folder = resolve(quantize_dir)
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} not found: run step 02_quantize first (input_dirs['02_quantize'])")
    recs = contracts.read("02_quantize", folder)["checkpoints"]
    missing = [r["name"] for r in recs if not (folder / "checkpoints" / r["name"] / "config.json").is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoints missing under {folder / 'checkpoints'}: {', '.join(missing)}; re-run step 02")
    return recs


def load_eval_data(P, tokenizer=None) -> dict:
    """Evaluation texts of both domains and the task items (validated, optionally capped per
    task), rendered as the model will see them: conversations and structured items through the
    tokenizer's chat template when it has one. Reference tasks (``evaluate.reference_tasks``)
    are kept apart: the baseline alone scores them, against chance."""
    from quantstudy import data, modelsource
    from quantstudy.steps.calibration import domain_lexicon_for

    tokenizer = tokenizer if tokenizer is not None else modelsource.load_tokenizer(P.model)
    items = data.read_task_items(P.data.task_items)
    by_task: dict[str, list[dict]] = {t: [] for t in TASKS}
    for it in items:
        rendered = {**it, "context": data.item_context(it, tokenizer)}
        by_task.setdefault(it["task"], []).append(rendered)
    if P.evaluate.max_items_per_task:
        by_task = {t: v[: P.evaluate.max_items_per_task] for t, v in by_task.items()}
    reference = {t: by_task.pop(t) for t in P.evaluate.reference_tasks if t in by_task}
    convs = data.load_in_domain(P.data, "eval", seed=P.study.seed)
    return {"generic": data.load_generic_texts(P.data, "eval"),
            "in_domain": [data.conversation_to_text(c, tokenizer) for c in convs],
            "items": by_task, "reference_items": reference, "lexicon": domain_lexicon_for(P),
            "tokenizer": tokenizer, "chat_template": data.has_chat_template(tokenizer)}


@torch.no_grad()
def evaluate_model(model, tokenizer, streams: dict[str, Stream], items: dict[str, list[dict]],
                   baseline_logprobs=None, batch_size: int = 8, name: str = "", keep_logprobs: bool = False,
                   heads: dict | None = None) -> dict:
    """All per-token and per-item arrays of one model. With baseline log-probs (cached per
    batch), also KL and top-1 agreement against the baseline. With ``heads`` ({name: module},
    served output heads), the same arrays for the model with each head in place of its own,
    under ``out["heads"][name]``, from the same decoder passes."""
    extra = list((heads or {}).values())
    per_head: list[dict] = [{"streams": {}, "items": {}} for _ in range(1 + len(extra))]
    dev = next(model.parameters()).device
    for dom, stream in streams.items():
        nll, kl, agree = ([[] for _ in per_head] for _ in range(3))
        cache = []
        for bi, i in enumerate(tqdm(range(0, len(stream.input_ids), batch_size), desc=f"{name} {dom}", leave=False)):
            x = stream.input_ids[i:i + batch_size].to(dev)
            mask = stream.score_mask[i:i + batch_size][:, 1:].to(dev)
            lps = [lp[:, :-1] for lp in _window_logprobs(model, x, extra)] if extra else \
                [_window_logprobs(model, x)[:, :-1]]
            blp = None
            if baseline_logprobs is not None:
                # A cached tensor per batch, or the baseline model itself when the cache would not fit.
                blp = (baseline_logprobs[dom][bi] if isinstance(baseline_logprobs, dict)
                       else _window_logprobs(baseline_logprobs, x)[:, :-1])
            elif keep_logprobs:
                cache.append(lps[0])
            for h, lp in enumerate(lps):
                nll[h].append((-lp.gather(-1, x[:, 1:, None])[..., 0])[mask].cpu())
                if blp is not None:
                    kl[h].append((blp.exp() * (blp - lp)).sum(-1)[mask].cpu())
                    agree[h].append((blp.argmax(-1) == lp.argmax(-1))[mask].cpu())
        for h, out in enumerate(per_head):
            rec = {"nll": torch.cat(nll[h]).double().numpy()}
            if baseline_logprobs is not None:
                rec["kl"] = torch.cat(kl[h]).double().numpy()
                rec["agree"] = torch.cat(agree[h]).double().numpy()
            elif keep_logprobs and h == 0:
                rec["_logprobs"] = cache
            out["streams"][dom] = rec
    for task, task_items in items.items():
        if task_items:
            scored = score_items_heads(model, tokenizer, task_items, extra, desc=f"{name} {task}")
            for out, rec in zip(per_head, scored):
                out["items"][task] = rec
    out = per_head[0]
    if heads:
        out["heads"] = dict(zip(heads, per_head[1:]))
    return out


def summarize(arrays: dict) -> dict:
    s = {}
    for dom, rec in arrays["streams"].items():
        s[f"ppl_{dom}"] = perplexity(rec["nll"])
        if "kl" in rec:
            s[f"kl_{dom}"] = float(rec["kl"].mean())
            s[f"top1_{dom}"] = float(rec["agree"].mean())
    for task, rec in arrays["items"].items():
        s[f"{task}_acc"] = float(rec["acc"].mean())
    return s


def flips(base_acc: np.ndarray, cand_acc: np.ndarray) -> dict:
    """Items whose correctness differs from the baseline's: right->wrong and wrong->right.
    Equal accuracy can hide many flips (Dutta et al., NeurIPS 2024)."""
    b, c = np.asarray(base_acc) > 0.5, np.asarray(cand_acc) > 0.5
    return {"right_to_wrong": int((b & ~c).sum()), "wrong_to_right": int((~b & c).sum()), "n_items": int(len(b)),
            "flip_rate": float((b != c).mean()) if len(b) else float("nan")}


def metric_pair(metric: str, base: dict, cand: dict, streams: dict[str, Stream]) -> tuple[np.ndarray, np.ndarray, str, np.ndarray | None]:
    """(baseline array, candidate array, bootstrap statistic, groups) for a metric.

    ``<task>_flip_rate``: the candidate array is 100 where an item's correctness differs from
    the baseline's and 0 elsewhere, against a baseline of zeros, so the mean difference is the
    flip rate in points with a paired CI over items.
    """
    if metric in METRIC_TASK:
        t = METRIC_TASK[metric]
        return base["items"][t]["acc"] * 100, cand["items"][t]["acc"] * 100, "mean_diff", None
    if metric.endswith("_flip_rate"):
        t = metric.removesuffix("_flip_rate")
        flipped = (base["items"][t]["acc"] > 0.5) != (cand["items"][t]["acc"] > 0.5)
        return np.zeros(len(flipped)), flipped * 100.0, "mean_diff", None
    if metric in ("indomain_ppl", "generic_ppl"):
        dom = "in_domain" if metric == "indomain_ppl" else "generic"
        return base["streams"][dom]["nll"], cand["streams"][dom]["nll"], "ppl_pct", streams[dom].window_of_token
    if metric == "indomain_top1_agreement":
        a = cand["streams"]["in_domain"]["agree"] * 100
        return np.full_like(a, 100.0), a, "mean_diff", streams["in_domain"].window_of_token
    raise ValueError(f"unknown metric {metric!r}")


def budget_table(P, base: dict, cands: dict[str, dict], streams: dict[str, Stream]) -> list[dict]:
    rows = []
    for name, cand in cands.items():
        for line in P.evaluate.budget:
            if line.metric == "satisfaction":  # a live metric: judged by the rollout (step 05)
                continue
            b, c, stat, groups = metric_pair(line.metric, base, cand, streams)
            ci = paired_bootstrap(b, c, stat, n=P.evaluate.bootstrap_samples, seed=P.study.seed,
                                  confidence=P.evaluate.confidence, groups=groups)
            if stat == "ppl_pct" and line.unit == "points":
                raise ValueError(f"evaluate.budget: {line.metric} is a perplexity; use unit: percent")
            rows.append({"checkpoint": name, **budget_verdict(line.model_dump(), ci), "ci": ci})
    return rows


def source_effect(per_source: dict[str, list[np.ndarray]], a: str, b: str, stat: str = "mean_diff", n: int = 1000,
                  seed: int = 0, confidence: float = 0.95, groups: np.ndarray | None = None) -> dict:
    """Effect of calibration source a vs b (mean over draws), with a CI that resamples both the
    evaluation units (paired) and the draws, so draw-to-draw noise widens it."""
    A, B = np.array(per_source[a]), np.array(per_source[b])   # [draws, units]
    if groups is None:
        groups = np.arange(A.shape[1])
    uniq, inv = np.unique(groups, return_inverse=True)
    g = len(uniq)
    cnt = np.bincount(inv, minlength=g).astype(float)
    SA = np.stack([np.bincount(inv, weights=r, minlength=g) for r in A])
    SB = np.stack([np.bincount(inv, weights=r, minlength=g) for r in B])

    def val(sa, sb, c):
        if stat == "mean_diff":
            return sa / c - sb / c
        return 100.0 * (np.exp(sa / c - sb / c) - 1.0)

    point = float(val(SA.mean(0).sum(), SB.mean(0).sum(), cnt.sum()))
    rng = np.random.default_rng(seed)
    boots = np.empty(n)
    for k in range(n):
        w = np.bincount(rng.integers(0, g, g), minlength=g).astype(float)
        da = rng.integers(0, len(A), len(A))
        db = rng.integers(0, len(B), len(B))
        boots[k] = val(SA[da].mean(0) @ w, SB[db].mean(0) @ w, cnt @ w)
    lo, hi = np.quantile(boots, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    per_draw_a = [float(val(s.sum(), 0 * s.sum(), cnt.sum())) if stat == "mean_diff" else None for s in SA]
    return {"a": a, "b": b, "point": point, "lo": float(lo), "hi": float(hi), "draws": [len(A), len(B)],
            "within_noise": bool(lo <= 0 <= hi), "per_draw_a": per_draw_a}


def eval_dtype(P) -> torch.dtype:
    return getattr(torch, P.model.eval_dtype)


def load_baseline(P, tokenizer=None):
    """The full-precision model from its source (a GGUF file is dequantized again, so the
    rollback check compares the archive with the source), in the evaluation dtype; with its
    tokenizer, or the one given (loading a GGUF's tokenizer takes seconds)."""
    from quantstudy import modelsource
    from quantstudy import awqformat

    if P.model.source == "gguf":
        model = modelsource.load_float_model(P.model).to(awqformat.resolve_device(P.study.device))
        tok = tokenizer if tokenizer is not None else modelsource.load_tokenizer(P.model)
    else:
        model, tok, _ = awqformat.load_checkpoint(P.model.path, device=P.study.device)
        tok = tokenizer if tokenizer is not None else tok
    return awqformat.cast_model(model, eval_dtype(P)).eval(), tok


def weight_fingerprint(model) -> dict[str, str]:
    """SHA-256 of every tensor's bytes, by state-dict name: the rollback check compares the
    archive with the evaluated baseline through these instead of loading the source again."""
    import hashlib

    return {name: hashlib.sha256(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()
            for name, t in model.state_dict().items()}


def _served_row(P, records: list[dict]) -> dict | None:
    """The record of the served configuration (``serve.lm_head``) when its head is not the
    model's own: the checkpoint step 04 times, with that head, as a row of its own."""
    if P.serve.lm_head == "float":
        return None
    try:
        rec = serving.served_checkpoint(records)
    except serving.ServingError:
        return None
    return {**rec, "name": serving.served_name(rec["name"], P.serve.lm_head), "served_head": P.serve.lm_head,
            "served_from": rec["name"]}


def run_evaluation(P, quantize_dir: str | Path, data: dict) -> dict:
    """Evaluate the baseline (the original model.path) and every checkpoint of step 02."""
    from quantstudy import awqformat
    from quantstudy.paths import resolve

    quantize_dir = resolve(quantize_dir)
    # Search-setting variants and sample-count sweeps were compared in step 02's sanity check;
    # the full evaluation covers the main comparison (RTN and AWQ per source and draw).
    records = main_checkpoints(checkpoint_list(quantize_dir))
    base_model, tok = load_baseline(P, data.get("tokenizer"))
    fingerprint = weight_fingerprint(base_model)
    streams = {dom: build_stream(tok, data[dom], P.evaluate.window, P.evaluate.stride, P.evaluate.max_eval_tokens,
                                 data["lexicon"]) for dom in ("generic", "in_domain")}
    cache_bytes = sum(s.input_ids.numel() for s in streams.values()) * base_model.config.vocab_size * 4
    keep = cache_bytes <= CACHE_LIMIT_BYTES
    base = evaluate_model(base_model, tok, streams, data["items"], name="baseline", keep_logprobs=keep)
    reference = {t: score_items(base_model, tok, v, desc=f"baseline {t} (reference)")
                 for t, v in data.get("reference_items", {}).items() if v}
    base_lp = {dom: base["streams"][dom].pop("_logprobs") for dom in streams} if keep else base_model
    cands = {}
    served = _served_row(P, records)
    for rec in tqdm(records, desc="evaluate checkpoints"):
        model, _, _ = awqformat.load_checkpoint(quantize_dir / "checkpoints" / rec["name"], device=P.study.device,
                                        dtype=eval_dtype(P))
        heads = None
        if served and rec["name"] == served["served_from"]:
            heads = {served["name"]: serving.served_head(model.get_output_embeddings(), served["served_head"])}
        cands[rec["name"]] = evaluate_model(model, tok, streams, data["items"], base_lp, name=rec["name"], heads=heads)
        if heads:
            cands[served["name"]] = cands[rec["name"]].pop("heads")[served["name"]]
        del model
    del base_lp
    records = records + ([served] if served else [])
    return {"records": records, "streams": streams, "base": base, "cands": cands, "items_used": data["items"],
            "reference": reference, "reference_items": data.get("reference_items", {}), "base_fingerprint": fingerprint,
            "eval_dtype": P.model.eval_dtype, "chat_template": data.get("chat_template", False)}


def reference_table(result: dict):
    """Reference tasks: the baseline's accuracy against chance, with a 95% bootstrap CI."""
    import pandas as pd

    rows = []
    for task, rec in result.get("reference", {}).items():
        items = result["reference_items"][task]
        chance = float(np.mean([1 / len(i["choices"]) for i in items]))
        ci = paired_bootstrap(np.full(len(rec["acc"]), chance * 100), rec["acc"] * 100, "mean_diff", n=1000, seed=0)
        rows.append({"task": task, "items": len(items), "baseline accuracy (%)": round(100 * rec["acc"].mean(), 1),
                     "chance (%)": round(100 * chance, 1),
                     "above chance (pts, 95% CI)": f"{ci['point']:+.1f} [{ci['lo']:+.1f}, {ci['hi']:+.1f}]",
                     "above_chance_ci": ci})
    return pd.DataFrame(rows).set_index("task") if rows else pd.DataFrame()


def flip_table(P, result: dict):
    """Per checkpoint and task: accuracy change, flip rate with a paired 95% CI over items, and
    the flips in each direction."""
    import pandas as pd

    rows = []
    for name, cand in result["cands"].items():
        for task in cand["items"]:
            b, c = result["base"]["items"][task]["acc"], cand["items"][task]["acc"]
            f = flips(b, c)
            _, arr, _, _ = metric_pair(f"{task}_flip_rate", result["base"], cand, result["streams"])
            ci = paired_bootstrap(np.zeros(len(arr)), arr, "mean_diff", n=P.evaluate.bootstrap_samples,
                                  seed=P.study.seed, confidence=P.evaluate.confidence)
            rows.append({"checkpoint": name, "task": task, "accuracy change (pts)": round(100 * (c.mean() - b.mean()), 1),
                         "flip rate (%)": round(ci["point"], 1), "CI low": round(ci["lo"], 1),
                         "CI high": round(ci["hi"], 1), "right->wrong": f["right_to_wrong"],
                         "wrong->right": f["wrong_to_right"], "items": f["n_items"]})
    return pd.DataFrame(rows).set_index(["checkpoint", "task"]) if rows else pd.DataFrame()


def _head_of_stream(stream: Stream, n_windows: int) -> tuple[Stream, int]:
    """The first n_windows of a stream, and how many scored tokens they hold."""
    mask = stream.score_mask[:n_windows]
    n = int(mask.sum())
    return Stream(stream.input_ids[:n_windows], mask, stream.category[:n], stream.window_of_token[:n]), n


def rollback_check(P, quantize_dir: str | Path, result: dict, n_windows: int = 8, n_items: int = 16) -> dict:
    """Reload the archived baseline after verifying its checksums: every tensor must equal the
    evaluated baseline's bit for bit (same names, same SHA-256 of its bytes), and re-scoring
    the first windows of each domain and the first items of each task must reproduce the
    baseline's numbers exactly."""
    from quantstudy import awqformat
    from quantstudy.paths import resolve

    archive = resolve(quantize_dir) / "baseline"
    awqformat.verify_archive(archive)
    model, tok, _ = awqformat.load_checkpoint(archive, device=P.study.device)
    model = awqformat.cast_model(model, eval_dtype(P))
    weights_equal = weight_fingerprint(model) == result["base_fingerprint"]
    heads = {dom: _head_of_stream(s, n_windows) for dom, s in result["streams"].items()}
    # The first items in the order score_items takes them (each scored alone, so every bit matches).
    picked = {t: batch_order(v, tok)[:n_items] for t, v in result["items_used"].items()}
    again = evaluate_model(model, tok, {d: h[0] for d, h in heads.items()},
                           {t: [v[i] for i in picked[t]] for t, v in result["items_used"].items()}, name="archive")
    checks = {"weights": bool(weights_equal)}
    for dom, rec in again["streams"].items():
        rec.pop("_logprobs", None)
        checks[f"nll_{dom}"] = bool(np.array_equal(rec["nll"], result["base"]["streams"][dom]["nll"][:heads[dom][1]]))
    for task, rec in again["items"].items():
        checks[f"{task}_scores"] = bool(np.array_equal(rec["margin"], result["base"]["items"][task]["margin"][picked[task]]))
    return {"archive": str(archive), "checksums_verified": True, "identical": all(checks.values()), "checks": checks,
            "rescored": {"windows_per_domain": n_windows, "items_per_task": n_items},
            "baseline_metrics": summarize(result["base"])}


def summary_table(result: dict):
    import pandas as pd

    rows = [{"name": "baseline", "method": "baseline", "source": "", "draw": None, "bits": 16, "lm_head": "float",
             **summarize(result["base"])}]
    for rec in result["records"]:
        rows.append({"name": rec["name"], "method": rec["method"], "source": rec.get("calibration_source") or "",
                     "draw": rec.get("draw"), "bits": rec["bits"], "lm_head": rec.get("served_head", "float"),
                     **summarize(result["cands"][rec["name"]])})
    return pd.DataFrame(rows).set_index("name")


def main_checkpoints(records: list[dict]) -> list[dict]:
    """Checkpoints of the main comparison: no sweep sets, no search-setting variants, no
    served-head rows (those are a serving choice, scored against the budget only)."""
    return [r for r in records if not r.get("sweep") and not r.get("variant") and not r.get("served_head")]


def source_groups(records: list[dict], bits: int = 4) -> dict[str, list[str]]:
    """{'RTN': [...], 'generic': [draw names], 'in_domain': [...], 'mixed': [...]} at one bit width."""
    groups: dict[str, list[str]] = {}
    for r in main_checkpoints(records):
        if r["bits"] != bits:
            continue
        key = "RTN" if r["method"] == "rtn" else r["calibration_source"]
        groups.setdefault(key, []).append(r["name"])
    return groups


def calibration_effects(P, result: dict, bits: int = 4) -> list[dict]:
    """In-domain vs generic (and mixed vs generic) per budget metric, resampling items and draws."""
    groups = source_groups(result["records"], bits)
    out = []
    pairs = [("in_domain", "generic"), ("mixed", "generic"), ("in_domain", "RTN"), ("generic", "RTN")]
    metrics = list(dict.fromkeys([b.metric for b in P.evaluate.budget if b.metric != "satisfaction"] + [
        "policy_closed_book_acc", "policy_grounded_acc", "retention_acc", "indomain_ppl", "generic_ppl",
        "policy_grounded_flip_rate", "retention_flip_rate", "policy_closed_book_flip_rate"]))
    for a, b in pairs:
        if a not in groups or b not in groups:
            continue
        for metric in metrics:
            try:
                per_source = {}
                for src in (a, b):
                    arrs = []
                    for name in groups[src]:
                        _, c, stat, g = metric_pair(metric, result["base"], result["cands"][name], result["streams"])
                        arrs.append(c)
                    per_source[src] = arrs
            except KeyError:
                continue
            eff = source_effect(per_source, a, b, stat, n=P.evaluate.bootstrap_samples, seed=P.study.seed,
                                confidence=P.evaluate.confidence, groups=g)
            spread = {src: [float(np.mean(x)) if stat == "mean_diff" else float(np.exp(np.mean(x))) for x in per_source[src]]
                      for src in (a, b)}
            out.append({"metric": metric, "unit": "points" if stat == "mean_diff" else "% perplexity", **eff,
                        "per_draw": spread})
    return out


def cross_domain_matrix(result: dict, bits: int = 4):
    """Rows: calibration source (mean over draws); columns: evaluation domain/task; values:
    change against the baseline (perplexity %, accuracy points)."""
    import pandas as pd

    base = summarize(result["base"])
    groups = source_groups(result["records"], bits)
    cols = {"generic ppl (%)": "ppl_generic", "in-domain ppl (%)": "ppl_in_domain",
            "closed-book policy (pts)": "policy_closed_book_acc", "grounded policy (pts)": "policy_grounded_acc",
            "retention (pts)": "retention_acc"}
    rows = {}
    for src in ("generic", "in_domain", "mixed", "RTN"):
        if src not in groups:
            continue
        vals = {}
        for label, key in cols.items():
            if key not in base:
                continue
            xs = [summarize(result["cands"][n])[key] for n in groups[src]]
            m = float(np.mean(xs))
            vals[label] = 100 * (m / base[key] - 1) if key.startswith("ppl") else 100 * (m - base[key])
        rows[src] = vals
    return pd.DataFrame(rows).T


def plot_matrix(matrix):
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(9, 3.6))
    # Colour by harm: perplexity up and accuracy down are both bad (red).
    harm = matrix.copy()
    for c in harm.columns:
        if "pts" in c:
            harm[c] = -harm[c]
    sns.heatmap(harm, annot=matrix.round(2), fmt="", cmap="RdBu_r", center=0, ax=ax,
                cbar_kws={"label": "harm (ppl % up / accuracy pts down)"})
    ax.set(title="Cross-domain matrix: change vs baseline by calibration source (mean over draws)",
           xlabel="evaluation", ylabel="calibration source")
    fig.tight_layout()
    return fig


def plot_category_damage(result: dict, bits: int = 4):
    """Mean NLL increase per token category on in-domain text, per calibration source."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    groups = source_groups(result["records"], bits)
    stream = result["streams"]["in_domain"]
    rows = []
    for src, names in groups.items():
        for n in names:
            dmg = category_damage(result["base"]["streams"]["in_domain"]["nll"],
                                  result["cands"][n]["streams"]["in_domain"]["nll"], stream.category)
            for cat, v in dmg.items():
                rows.append({"calibration": src, "checkpoint": n, "category": f"{cat} ({v['tokens']} tok)",
                             "delta_nll_mnats": 1000 * v["delta_nll"]})
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    sns.barplot(data=df, x="category", y="delta_nll_mnats", hue="calibration", ax=ax, errorbar=("pi", 100), capsize=0.1)
    ax.axhline(0, color="grey", lw=1)
    ax.set(title=f"Where {bits}-bit quantization hurts: NLL increase per token category (in-domain text)",
           xlabel="token category", ylabel="mean NLL change vs baseline\n(millinats/token; bars: range over draws)")
    ax.legend(title="calibration source")
    fig.tight_layout()
    return fig, df


def plot_budget(rows: list[dict]):
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 0.42 * len(rows) / max(1, len(metrics)) + 2.2),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        sub = [r for r in rows if r["metric"] == metric]
        for i, r in enumerate(sub):
            ci = r["ci"]
            if metric.endswith("_ppl"):
                point, lo, hi = ci["point"], ci["lo"], ci["hi"]
            else:
                point, lo, hi = -ci["point"], -ci["hi"], -ci["lo"]
            color = {"pass": "#2ca02c", "fail": "#d62728", "inconclusive": "#ff7f0e"}[r["verdict"]]
            ax.errorbar(point, i, xerr=[[point - lo], [hi - point]], fmt="o", color=color, capsize=3)
        ax.axvline(sub[0]["limit"], color="#d62728", ls="--", label=f"budget ({sub[0]['limit']} {sub[0]['unit']})")
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(range(len(sub)), [r["checkpoint"] for r in sub], fontsize=8)
        ax.set(title=metric, xlabel=f"degradation ({sub[0]['unit']}), 95% CI")
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Quality budget: pass only when the worse end of the CI is inside the budget (green pass, red fail, orange inconclusive)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def write_metrics(output_dir: str | Path, P, result: dict, budget: list[dict], effects: list[dict], matrix,
                  damage, rollback: dict, wall_s: float, lm_eval: dict | None = None) -> dict:
    table = summary_table(result)
    verdicts: dict[str, str] = {}
    for r in budget:
        prev = verdicts.get(r["checkpoint"], "pass")
        verdicts[r["checkpoint"]] = "pass" if prev == "pass" and r["verdict"] == "pass" else "fail"
    metrics = {
        "budget_declared": [b.model_dump() for b in P.evaluate.budget],
        "budget": budget, "verdict_by_checkpoint": verdicts,
        "summary": json.loads(table.reset_index().to_json(orient="records")),
        "calibration_effects": effects,
        "cross_domain_matrix": json.loads(matrix.to_json(orient="index")),
        "category_damage": json.loads(damage.to_json(orient="records")),
        "rollback_check": rollback,
        "flips": json.loads(flip_table(P, result).reset_index().to_json(orient="records")),
        "reference_tasks": {t: {k: v for k, v in row.items()} for t, row in
                            json.loads(reference_table(result).to_json(orient="index")).items()},
        "eval_dtype": result.get("eval_dtype", "float32"), "chat_template": bool(result.get("chat_template")),
        "chance_levels": {t: float(np.mean([1 / len(i["choices"]) for i in v])) for t, v in result["items_used"].items() if v},
        "n_items": {t: len(v) for t, v in result["items_used"].items()},
        "n_tokens": {d: s.n_tokens for d, s in result["streams"].items()},
        "window": P.evaluate.window, "stride": P.evaluate.stride,
        "targets": {"evaluation_wall_s": {"measured": round(wall_s, 1), "target": P.targets.evaluation_wall_s,
                                          "met": wall_s <= P.targets.evaluation_wall_s}},
        "wall_s": round(wall_s, 1),
    }
    if lm_eval is not None:  # model -> task -> {acc, acc_stderr, study_acc, agree_items, ...}
        metrics["lm_eval"] = lm_eval
    contracts.write("03_evaluate", output_dir, metrics, default=float)
    arrays = {}
    for name, arr in [("baseline", result["base"]), *result["cands"].items()]:
        for dom, rec in arr["streams"].items():
            for k, v in rec.items():
                if not k.startswith("_"):
                    arrays[f"{name}|{dom}|{k}"] = v
        for task, rec in arr["items"].items():
            for k, v in rec.items():
                arrays[f"{name}|{task}|{k}"] = v
    np.savez_compressed(Path(output_dir) / "per_item.npz", **arrays)
    return metrics


def effects_table(effects: list[dict]):
    import pandas as pd

    rows = [{"comparison": f"{e['a']} vs {e['b']}", "metric": e["metric"], "unit": e["unit"],
             "effect": round(e["point"], 3), "CI low": round(e["lo"], 3), "CI high": round(e["hi"], 3),
             "draws": f"{e['draws'][0]} vs {e['draws'][1]}", "within noise": e["within_noise"]} for e in effects]
    return pd.DataFrame(rows)


def run_lm_eval(P, quantize_dir: str | Path, result: dict | None = None) -> dict | None:
    """lm-eval-harness next to the study's own scorer (:mod:`quantstudy.steps.lmeval`): the study's
    task items as local lm-eval tasks (``quantstudy_<task>``) plus ``evaluate.lm_eval_tasks``,
    on the baseline and every checkpoint. Given step 03's ``result``, each task also carries the
    study's accuracy on the same items and the items both scorers judge alike.

    Runs when ``evaluate.lm_eval_tasks`` lists anything (``[quantstudy]``: the study's tasks
    alone); lm-eval takes 2-3x the study's task-scoring time, so the default lists nothing.
    Returns {model: {task: {acc, acc_stderr, study_acc, agree_items, n_items, max_abs_ll_diff}}},
    or None when no tasks are listed.
    """
    from quantstudy.steps import lmeval

    if not P.evaluate.lm_eval_tasks:
        return None
    if not lmeval.available():
        raise RuntimeError("evaluate.lm_eval_tasks names tasks but lm-eval-harness is not installed: "
                           "run `make setup`, or set lm_eval_tasks: []")
    if result is not None:
        items, reference = result["items_used"], result.get("reference_items", {})
    else:
        data = load_eval_data(P)
        items, reference = data["items"], data["reference_items"]
    return lmeval.run(P, quantize_dir, items, result, reference)
