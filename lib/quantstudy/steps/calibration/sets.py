"""Calibration sets: draw equal-token sets per source and seed from the text pools, split
over-long samples (AutoAWQ would silently drop them), save and load them as Arrow, and
describe them (token lengths, domain-term coverage, n-gram overlap with evaluation text).

Sets are compared at equal size: each holds ``n_samples`` blocks of ``max_seq_len`` tokens,
which is exactly what AutoAWQ feeds its search (it concatenates the samples and re-cuts them
into blocks of ``max_calib_seq_len``).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from tqdm.auto import tqdm

from quantstudy.data import encode

SOURCES = ("generic", "in_domain", "mixed")


class CalibrationError(ValueError):
    """A calibration set that cannot be built as asked; the message names the set."""


# --------------------------------------------------------------------------- samples
def split_long(ids: list[int], max_len: int, mode: str = "split") -> list[list[int]]:
    """Cut a token list into pieces of at most max_len (mode 'split'), or keep its head ('truncate')."""
    if max_len < 1:
        raise CalibrationError("max_seq_len must be >= 1")
    if len(ids) <= max_len:
        return [list(ids)] if ids else []
    if mode == "truncate":
        return [list(ids[:max_len])]
    return [list(ids[i : i + max_len]) for i in range(0, len(ids), max_len)]


def autoawq_kept_tokens(samples: list[list[int]], max_seq_len: int) -> int:
    """Tokens AutoAWQ's get_calib_dataset actually uses: samples longer than max_seq_len are
    dropped, the rest concatenated and cut into whole blocks of max_seq_len."""
    total = sum(len(s) for s in samples if 0 < len(s) <= max_seq_len)
    return (total // max_seq_len) * max_seq_len


def draw_set(
    texts: list[str], tokenizer, n_blocks: int, max_seq_len: int, seed: int, name: str, mode: str = "split"
) -> dict:
    """Draw texts at random until n_blocks * max_seq_len tokens are collected.

    Returns {"texts", "samples" (token lists, each <= max_seq_len), "n_texts", "tokens", ...}.
    """
    if not texts:
        raise CalibrationError(f"calibration set {name!r} is empty after filtering: no text to draw from")
    budget = n_blocks * max_seq_len
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    chosen, samples, tokens, n_split_texts = [], [], 0, 0
    for idx in order:
        ids = encode(tokenizer, texts[idx])
        pieces = split_long(ids, max_seq_len, mode)
        n_split_texts += len(pieces) > 1
        if not pieces:
            continue
        chosen.append(texts[idx])
        for p in pieces:
            take = p[: budget - tokens]
            samples.append(take)
            tokens += len(take)
            if tokens >= budget:
                break
        if tokens >= budget:
            break
    if tokens < budget:
        raise CalibrationError(
            f"calibration set {name!r}: the pool holds only {tokens} tokens, fewer than the "
            f"{budget} asked ({n_blocks} samples x {max_seq_len}); lower calibration.n_samples"
        )
    return {
        "name": name,
        "texts": chosen,
        "samples": samples,
        "n_texts": len(chosen),
        "tokens": tokens,
        "texts_split": n_split_texts,
        "kept_by_autoawq": autoawq_kept_tokens(samples, max_seq_len),
        "seed": seed,
    }


def save_set(calib: dict, folder: Path) -> Path:
    """Arrow (Hugging Face datasets) with one row per token sample and the source texts."""
    from datasets import Dataset  # ~1.3 s to import; steps 02-03 import this package for other things

    folder = Path(folder)
    Dataset.from_dict({"input_ids": calib["samples"], "length": [len(s) for s in calib["samples"]]}).save_to_disk(
        str(folder / "samples")
    )
    Dataset.from_dict({"text": calib["texts"]}).save_to_disk(str(folder / "texts"))
    meta = {k: v for k, v in calib.items() if k not in ("texts", "samples")}
    (folder / "set.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_set(folder: str | Path) -> tuple[list[list[int]], dict]:
    from datasets import load_from_disk  # see save_set

    folder = Path(folder)
    if not (folder / "set.json").is_file():
        raise CalibrationError(f"{folder}: not a calibration set (no set.json); run step 01_calibration first")
    ds = load_from_disk(str(folder / "samples"))
    return [list(x) for x in ds["input_ids"]], json.loads((folder / "set.json").read_text())


# --------------------------------------------------------------------------- statistics
_WORD = re.compile(r"[A-Za-z0-9$%.\-]+")


def ngrams(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = [w.lower().strip(".") for w in _WORD.findall(text)]
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def ngram_overlap(texts: list[str], reference: set[tuple[str, ...]], n: int = 3) -> float:
    """Share of a set's distinct n-grams that also occur in the reference text."""
    grams: set[tuple[str, ...]] = set()
    for t in texts:
        grams |= ngrams(t, n)
    return round(len(grams & reference) / max(1, len(grams)), 4)


def term_coverage(texts: list[str], lexicon: dict[str, list[str]]) -> dict[str, dict]:
    """Per lexicon category: distinct terms present, of how many, and total mentions."""
    blob = "\n".join(texts).lower()
    out = {}
    for cat, terms in lexicon.items():
        uniq = sorted({t for t in terms if t})
        hits = {t: blob.count(t.lower()) for t in uniq}
        present = sum(1 for v in hits.values() if v)
        out[cat] = {
            "present": present,
            "of": len(uniq),
            "share": round(present / max(1, len(uniq)), 4),
            "mentions": int(sum(hits.values())),
        }
    return out


# --------------------------------------------------------------------------- the sets of a study
def set_name(source: str, draw: int, n_samples: int | None = None, default_n: int | None = None) -> str:
    """generic-d0, in_domain-d2, in_domain-n16-d0 (sweep sets carry their sample count)."""
    size = f"-n{n_samples}" if n_samples is not None and n_samples != default_n else ""
    return f"{source}{size}-d{draw}"


def plan_sets(P) -> list[dict]:
    """Every calibration set the params ask for: source x draw, plus the sample-count sweep
    on in-domain draw 0."""
    c = P.calibration
    plan = []
    for source in c.sources:
        for d in range(c.draws):
            plan.append({"name": set_name(source, d), "source": source, "draw": d, "n_samples": c.n_samples})
    for n in c.sample_sweep:
        if n != c.n_samples:
            plan.append(
                {
                    "name": set_name("in_domain", 0, n, c.n_samples),
                    "source": "in_domain",
                    "draw": 0,
                    "n_samples": n,
                    "sweep": True,
                }
            )
    return plan


def _seed(base: int, source: str, draw: int, n: int) -> int:
    return (base * 1_000_003 + SOURCES.index(source) * 10_007 + draw * 101 + n) % (2**31)


def _draw_mixed(c, pools: dict, tokenizer, spec: dict, seed: int) -> dict:
    """A mixed set: ``calibration.mixed_in_domain_fraction`` of its samples from the in-domain
    pool (seed), the rest from the generic pool (seed + 1), joined under one name."""
    n_in = round(spec["n_samples"] * c.mixed_in_domain_fraction)
    parts = [
        draw_set(pools["in_domain"], tokenizer, n_in, c.max_seq_len, seed, spec["name"], c.long_samples),
        draw_set(
            pools["generic"], tokenizer, spec["n_samples"] - n_in, c.max_seq_len, seed + 1, spec["name"], c.long_samples
        ),
    ]
    calib = {
        "name": spec["name"],
        "texts": parts[0]["texts"] + parts[1]["texts"],
        "samples": parts[0]["samples"] + parts[1]["samples"],
        "n_texts": parts[0]["n_texts"] + parts[1]["n_texts"],
        "tokens": parts[0]["tokens"] + parts[1]["tokens"],
        "texts_split": parts[0]["texts_split"] + parts[1]["texts_split"],
        "seed": seed,
    }
    calib["kept_by_autoawq"] = autoawq_kept_tokens(calib["samples"], c.max_seq_len)
    return calib


def build_sets(P, pools: dict, tokenizer, output_dir: str | Path) -> list[dict]:
    """Draw, split and save every planned set under output_dir/sets/<name>; return their records."""
    c = P.calibration
    if not pools["generic"] and any(s in ("generic", "mixed") for s in c.sources):
        raise CalibrationError("calibration set 'generic' is empty after filtering: the generic pool has no text")
    if not pools["in_domain"] and any(s in ("in_domain", "mixed") for s in c.sources):
        raise CalibrationError("calibration set 'in_domain' is empty after filtering: no in-domain conversations")
    out = Path(output_dir) / "sets"
    records = []
    for spec in tqdm(plan_sets(P), desc="calibration sets"):
        seed = _seed(P.study.seed, spec["source"], spec["draw"], spec["n_samples"])
        if spec["source"] == "mixed":
            calib = _draw_mixed(c, pools, tokenizer, spec, seed)
        else:
            calib = draw_set(
                pools[spec["source"]], tokenizer, spec["n_samples"], c.max_seq_len, seed, spec["name"], c.long_samples
            )
        calib.update(
            {k: spec[k] for k in ("source", "draw", "n_samples")},
            sweep=spec.get("sweep", False),
            max_seq_len=c.max_seq_len,
            long_samples=c.long_samples,
        )
        save_set(calib, out / spec["name"])
        records.append({k: v for k, v in calib.items() if k not in ("samples",)})
    return records


def set_statistics(records: list[dict], pools: dict, tokenizer) -> dict:
    """Token lengths per set, domain-term coverage, and 3-gram overlap with in-domain evaluation text."""
    reference: set[tuple[str, ...]] = set()
    for t in pools["eval_in_domain"]:
        reference |= ngrams(t)
    lengths, coverage, overlap = {}, {}, {}
    for r in records:
        lengths[r["name"]] = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in r["texts"]]
        coverage[r["name"]] = term_coverage(r["texts"], pools["lexicon"]) if pools["lexicon"] else {}
        overlap[r["name"]] = ngram_overlap(r["texts"], reference)
    return {"lengths": lengths, "coverage": coverage, "overlap_3gram": overlap}
