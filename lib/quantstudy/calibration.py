"""Calibration sets: scrub personal data, format conversations, draw equal-token sets per
source and seed, split over-long samples (AutoAWQ would silently drop them), save as Arrow.

Sets are compared at equal size: each holds ``n_samples`` blocks of ``max_seq_len`` tokens,
which is exactly what AutoAWQ feeds its search (it concatenates the samples and re-cuts them
into blocks of ``max_calib_seq_len``).
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm.auto import tqdm

from quantstudy.data import encode

PLACEHOLDER = "[{}]"  # typed placeholder, e.g. [EMAIL]


class CalibrationError(ValueError):
    """A calibration set that cannot be built as asked; the message names the set."""


# --------------------------------------------------------------------------- scrubbing
# Project recognizers for what generic PII libraries do not know: this company's
# identifiers, card fragments in prose, street addresses, and names introduced in dialogue.
_STREET = r"(?:Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Drive|Dr|Court|Ct|Boulevard|Blvd|Way|Place|Pl|Terrace|Circle|Parkway|Pkwy|Square|Sq)\.?"
_CAP = r"(?:[A-Z]'[A-Z][a-z]+|(?:Mc|Mac)?[A-Z][a-z]+(?:-[A-Z][a-z]+)?)"
PROJECT_PATTERNS: dict[str, list[str]] = {
    "ORDER_ID": [r"\b(?:ORD|ORDER|RMA|INV|TKT)[- ]?\d{3,6}(?:[- ]\d{3,6})?\b", r"\b[A-Z]{2,4}-\d{4}-\d{4}\b"],
    "CARD": [r"(?i:\b(?:card|visa|mastercard|amex|ending|last (?:four|4)(?: digits)?)\b[^.\n\d]{0,25})(\d{4})\b",
             r"\b(?:\*{2,4}|x{2,4}|X{2,4})[- ]?(\d{4})\b"],
    "ADDRESS": [rf"\b\d{{1,5}}\s+(?:{_CAP}\s+){{1,3}}{_STREET}(?:,?\s+(?:Apt|Unit|Suite|#)\s*\w+)?(?:,\s*{_CAP}(?:\s{_CAP})?)?(?:,\s*[A-Z]{{2}})?(?:\s+\d{{5}}(?:-\d{{4}})?)?"],
    "PHONE": [r"(?<![\w-])(?:\+1[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]\d{4}\b"],
    "NAME": [
        # introduced: "my name is X", "it's X and", "under X", "Name: X"
        rf"(?i:\b(?:my name is|name's|name:|this is|i am|i'm|call me|speaking with|it's|it is|under|in the name of|account holder is)\s+)({_CAP}(?:\s+{_CAP})?)",
        # salutations and sign-offs: "Thanks, X", "Got it, X.", "Cheers, X Y!"
        rf"\b(?:[A-Z][a-z]+(?:\s[a-z]+){{0,3}}),\s+({_CAP}(?:\s+{_CAP})?)(?=\s*[.!?,]|$)",
        rf"\b(?:Hi|Hello|Hey|Dear)\s+({_CAP}(?:\s+{_CAP})?)(?=[,!.])",
        rf"\b(?:Mr|Mrs|Ms|Miss|Dr|Mx)\.?\s+({_CAP}(?:\s+{_CAP})?)",
        # a full name anywhere: two capitalised words that are not a known product or phrase
        rf"\b({_CAP}\s+{_CAP})\b",
    ],
}
# Capitalised words that the NAME cues must never swallow.
_NOT_NAMES = {"I", "The", "This", "That", "Thanks", "Thank", "Hi", "Hello", "Hey", "Yes", "No", "Sure", "Okay",
              "Great", "Sorry", "Please", "Team", "Support", "Agent", "There", "Everyone", "All", "Again", "So",
              "Just", "Well", "Also", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
              "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December", "Order", "Orders", "Account", "Email", "Phone", "Address", "Name", "Card",
              "Assistant", "User", "Customer", "Nimbus", "Home", "Networks", "Wi", "Fi", "Got", "It", "Perfect",
              "Cheers", "Best", "Regards", "Sincerely", "Welcome", "Good", "Morning", "Afternoon", "Evening",
              "Happy", "Of", "Course", "Absolutely", "Right", "Alright", "Here", "You", "Go", "What", "How",
              "When", "Where", "Why", "Which", "Can", "Could", "Would", "Will", "Do", "Does", "Is", "Are", "My",
              "Your", "Our", "We", "Not", "Any", "And", "But", "Or", "If", "One", "Another", "Quick", "Question",
              "Hmm", "Oh", "Ah", "Ugh", "Wow", "Cool", "Nice", "Awesome", "Appreciate", "Confirming", "Reaching",
              "Out", "Dear", "Under", "Settings", "Wi-Fi", "For", "To", "In", "On", "At", "By", "With", "From", "As", "Ok", "Yeah", "Yep", "Nope"}


@dataclass
class ScrubResult:
    text: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, type) in the original


class Scrubber:
    """scrubadub's detectors (email, phone, credit card, url...) plus project recognizers."""

    def __init__(self, extra_patterns: dict[str, list[str]] | None = None, product_terms: Iterable[str] = ()):
        import scrubadub

        self._scrubadub = scrubadub.Scrubber()
        patterns = {k: list(v) for k, v in PROJECT_PATTERNS.items()}
        for k, v in (extra_patterns or {}).items():
            patterns.setdefault(k, []).extend(v)
        self.patterns = {k: [re.compile(p) for p in v] for k, v in patterns.items()}
        # Product names look like person names ("Lumen Max"): never scrub them.
        self.keep = {t.lower() for t in product_terms}

    _TYPES = {"email": "EMAIL", "phone": "PHONE", "credit_card": "CARD", "url": "URL", "twitter": "HANDLE",
              "social_security_number": "ID", "credential": "CREDENTIAL", "skype": "HANDLE"}

    def find(self, text: str) -> list[tuple[int, int, str]]:
        spans: list[tuple[int, int, str]] = []
        for f in self._scrubadub.iter_filth(text):
            spans.append((f.beg, f.end, self._TYPES.get(f.type, f.type.upper())))
        lower = text.lower()
        protected = [(m.start(), m.end()) for term in self.keep for m in re.finditer(re.escape(term), lower)]
        for kind, regexes in self.patterns.items():
            for rx in regexes:
                for m in rx.finditer(text):
                    g = 1 if m.groups() and m.group(1) else 0
                    start, end = m.span(g)
                    value = text[start:end]
                    if kind == "NAME":
                        span = self._name_span(text, start, end, protected)
                        if span is None:
                            continue
                        start, end = span
                    spans.append((start, end, kind))
        return _merge(spans)

    @staticmethod
    def _name_span(text: str, start: int, end: int, protected: list[tuple[int, int]]) -> tuple[int, int] | None:
        """Trim cue words off a NAME candidate; None when nothing name-like is left or it
        overlaps a protected term (a product or plan name such as "Halo Mesh Node")."""
        words = text[start:end].split()
        while words and words[0] in _NOT_NAMES:
            start += len(words[0]) + 1
            words = words[1:]
        while words and words[-1] in _NOT_NAMES:
            words = words[:-1]
        if not words:
            return None
        end = start + len(" ".join(words))
        if any(a < end and start < b for a, b in protected):
            return None
        return start, end

    def scrub(self, text: str) -> ScrubResult:
        spans = self.find(text)
        out, pos = [], 0
        for start, end, kind in spans:
            out.append(text[pos:start])
            out.append(PLACEHOLDER.format(kind))
            pos = end
        out.append(text[pos:])
        return ScrubResult("".join(out), spans)


def _merge(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Overlapping detections become one span (the longer one's type)."""
    spans = sorted(spans, key=lambda s: (s[0], -(s[1] - s[0])))
    merged: list[tuple[int, int, str]] = []
    for s in spans:
        if merged and s[0] < merged[-1][1]:
            last = merged[-1]
            kind = last[2] if (last[1] - last[0]) >= (s[1] - s[0]) else s[2]
            merged[-1] = (last[0], max(last[1], s[1]), kind)
        else:
            merged.append(s)
    return merged


def scrub_conversations(convs: list[dict], scrubber: Scrubber) -> tuple[list[dict], dict]:
    """Scrubbed copies + report: counts by type, and recall against planted PII when recorded.

    A planted instance survives when any of its characters is left unscrubbed.
    """
    out, counts = [], Counter()
    planted, caught = Counter(), Counter()
    survivors: list[dict] = []
    for conv in tqdm(convs, desc="scrub", leave=False):
        turns = []
        pii = conv.get("metadata", {}).get("pii", [])
        for i, turn in enumerate(conv["turns"]):
            res = scrubber.scrub(turn["text"])
            counts.update(kind for _, _, kind in res.spans)
            for inst in (p for p in pii if p["turn"] == i):
                planted[inst["type"]] += 1
                covered = all(any(s <= c < e for s, e, _ in res.spans) for c in range(inst["start"], inst["end"]))
                if covered:
                    caught[inst["type"]] += 1
                else:
                    survivors.append({"conversation_id": conv["conversation_id"], "turn": i, "type": inst["type"],
                                      "text": inst["text"]})
            turns.append({**turn, "text": res.text})
        meta = {k: v for k, v in conv.get("metadata", {}).items() if k != "pii"}
        out.append({"conversation_id": conv["conversation_id"], "turns": turns, "metadata": meta})
    recall = {t: round(caught[t] / n, 4) for t, n in sorted(planted.items())}
    report = {"replaced_by_type": dict(sorted(counts.items())), "planted_by_type": dict(sorted(planted.items())),
              "recall_by_type": recall, "survivors": survivors, "n_survivors": len(survivors),
              "scored": bool(planted)}
    return out, report


# --------------------------------------------------------------------------- samples
def split_long(ids: list[int], max_len: int, mode: str = "split") -> list[list[int]]:
    """Cut a token list into pieces of at most max_len (mode 'split'), or keep its head ('truncate')."""
    if max_len < 1:
        raise CalibrationError("max_seq_len must be >= 1")
    if len(ids) <= max_len:
        return [list(ids)] if ids else []
    if mode == "truncate":
        return [list(ids[:max_len])]
    return [list(ids[i:i + max_len]) for i in range(0, len(ids), max_len)]


def autoawq_kept_tokens(samples: list[list[int]], max_seq_len: int) -> int:
    """Tokens AutoAWQ's get_calib_dataset actually uses: samples longer than max_seq_len are
    dropped, the rest concatenated and cut into whole blocks of max_seq_len."""
    total = sum(len(s) for s in samples if 0 < len(s) <= max_seq_len)
    return (total // max_seq_len) * max_seq_len


def draw_set(texts: list[str], tokenizer, n_blocks: int, max_seq_len: int, seed: int, name: str,
             mode: str = "split") -> dict:
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
        raise CalibrationError(f"calibration set {name!r}: the pool holds only {tokens} tokens, fewer than the "
                               f"{budget} asked ({n_blocks} samples x {max_seq_len}); lower calibration.n_samples")
    return {"name": name, "texts": chosen, "samples": samples, "n_texts": len(chosen), "tokens": tokens,
            "texts_split": n_split_texts, "kept_by_autoawq": autoawq_kept_tokens(samples, max_seq_len),
            "seed": seed}


def save_set(calib: dict, folder: Path) -> Path:
    """Arrow (Hugging Face datasets) with one row per token sample and the source texts."""
    from datasets import Dataset

    folder = Path(folder)
    Dataset.from_dict({"input_ids": calib["samples"], "length": [len(s) for s in calib["samples"]]}).save_to_disk(
        str(folder / "samples"))
    Dataset.from_dict({"text": calib["texts"]}).save_to_disk(str(folder / "texts"))
    meta = {k: v for k, v in calib.items() if k not in ("texts", "samples")}
    (folder / "set.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_set(folder: str | Path) -> tuple[list[list[int]], dict]:
    from datasets import load_from_disk

    folder = Path(folder)
    if not (folder / "set.json").is_file():
        raise CalibrationError(f"{folder}: not a calibration set (no set.json); run step 01_calibration first")
    ds = load_from_disk(str(folder / "samples"))
    return [list(x) for x in ds["input_ids"]], json.loads((folder / "set.json").read_text())


# --------------------------------------------------------------------------- statistics
_WORD = re.compile(r"[A-Za-z0-9$%.\-]+")


def ngrams(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = [w.lower().strip(".") for w in _WORD.findall(text)]
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


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
        out[cat] = {"present": present, "of": len(uniq), "share": round(present / max(1, len(uniq)), 4),
                    "mentions": int(sum(hits.values()))}
    return out


def load_lexicon(path: str | Path | None) -> dict[str, list[str]]:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        return {}
    data = json.loads(p.read_text())
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise CalibrationError(f"{p}: expected a JSON object {{category: [terms, ...]}}")
    return {k: [str(t) for t in v] for k, v in data.items()}


# --------------------------------------------------------------------------- the step
SOURCES = ("generic", "in_domain", "mixed")


def set_name(source: str, draw: int, n_samples: int | None = None, default_n: int | None = None) -> str:
    """generic-d0, in_domain-d2, in_domain-n16-d0 (sweep sets carry their sample count)."""
    size = f"-n{n_samples}" if n_samples is not None and n_samples != default_n else ""
    return f"{source}{size}-d{draw}"


def load_pools(P, tokenizer=None) -> dict:
    """Generic and in-domain text pools (in-domain scrubbed first), plus evaluation text and
    the scrub report. Nothing here touches the evaluation or task splits' text beyond reading it."""
    from quantstudy import data

    generic = data.load_generic_texts(P.data, "calib")
    calib_convs = data.load_in_domain(P.data, "calib", seed=P.study.seed)
    if not calib_convs:
        raise CalibrationError(f"{P.data.conversations}: no conversations in the calibration split")
    lexicon = domain_lexicon_for(P)
    report = {"scored": False, "replaced_by_type": {}, "survivors": [], "n_survivors": 0}
    if P.calibration.scrub:
        scrubber = Scrubber(product_terms=lexicon.get("product", []))
        calib_convs, report = scrub_conversations(calib_convs, scrubber)
    template = P.calibration.chat_template
    in_domain = [data.conversation_to_text(c, tokenizer, template) for c in calib_convs]
    eval_convs = data.load_in_domain(P.data, "eval", seed=P.study.seed)
    eval_text = [data.conversation_to_text(c, tokenizer, template) for c in eval_convs]
    return {"generic": generic, "in_domain": in_domain, "eval_in_domain": eval_text,
            "scrub": report, "lexicon": lexicon,
            "chat_template": bool(template and data.has_chat_template(tokenizer))}


def domain_lexicon_for(P) -> dict[str, list[str]]:
    """Domain terms ({category: [terms]}) from data.domain_lexicon, for coverage and per-token damage."""
    from quantstudy.paths import resolve

    return load_lexicon(resolve(P.data.domain_lexicon)) if P.data.domain_lexicon else {}


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
            plan.append({"name": set_name("in_domain", 0, n, c.n_samples), "source": "in_domain", "draw": 0,
                         "n_samples": n, "sweep": True})
    return plan


def _seed(base: int, source: str, draw: int, n: int) -> int:
    return (base * 1_000_003 + SOURCES.index(source) * 10_007 + draw * 101 + n) % (2**31)


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
            n_in = round(spec["n_samples"] * c.mixed_in_domain_fraction)
            parts = [draw_set(pools["in_domain"], tokenizer, n_in, c.max_seq_len, seed, spec["name"], c.long_samples),
                     draw_set(pools["generic"], tokenizer, spec["n_samples"] - n_in, c.max_seq_len, seed + 1,
                              spec["name"], c.long_samples)]
            calib = {"name": spec["name"], "texts": parts[0]["texts"] + parts[1]["texts"],
                     "samples": parts[0]["samples"] + parts[1]["samples"],
                     "n_texts": parts[0]["n_texts"] + parts[1]["n_texts"], "tokens": parts[0]["tokens"] + parts[1]["tokens"],
                     "texts_split": parts[0]["texts_split"] + parts[1]["texts_split"], "seed": seed}
            calib["kept_by_autoawq"] = autoawq_kept_tokens(calib["samples"], c.max_seq_len)
        else:
            calib = draw_set(pools[spec["source"]], tokenizer, spec["n_samples"], c.max_seq_len, seed, spec["name"],
                             c.long_samples)
        calib.update({k: spec[k] for k in ("source", "draw", "n_samples")}, sweep=spec.get("sweep", False),
                     max_seq_len=c.max_seq_len, long_samples=c.long_samples)
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


# --------------------------------------------------------------------------- tables, figures, metrics
def load_tokenizer(model):
    """The model's tokenizer; ``model`` is the params' model section (or a local folder path)."""
    from quantstudy import modelsource
    from quantstudy.params import ModelSection

    if isinstance(model, (str, Path)):
        model = ModelSection(source="embedded", path=str(model))
    return modelsource.load_tokenizer(model)


def scrub_table(report: dict):
    import pandas as pd

    types = sorted(set(report.get("replaced_by_type", {})) | set(report.get("planted_by_type", {})))
    return pd.DataFrame([{"type": t, "replaced": report["replaced_by_type"].get(t, 0),
                          "planted (demo record)": report.get("planted_by_type", {}).get(t, None),
                          "recall": report.get("recall_by_type", {}).get(t, None)} for t in types]).set_index("type")


def sets_table(records: list[dict]):
    import pandas as pd

    cols = ["name", "source", "draw", "n_samples", "n_texts", "texts_split", "tokens", "kept_by_autoawq", "max_seq_len"]
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in records]).set_index("name")


def plot_statistics(stats: dict, records: list[dict]):
    """Three panels: token lengths per set, domain-term coverage, 3-gram overlap with in-domain eval."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    main = [r["name"] for r in records if not r.get("sweep")]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    lengths = pd.DataFrame([{"set": n, "tokens": v} for n in main for v in stats["lengths"][n]])
    sns.boxplot(data=lengths, y="set", x="tokens", ax=axes[0], color="#9ecae1", fliersize=2)
    axes[0].set(title="Sample length per calibration set", xlabel="tokens per source text (before splitting)", ylabel="")
    cov = pd.DataFrame([{"set": n, "category": cat, "share": v["share"] * 100}
                        for n in main for cat, v in stats["coverage"].get(n, {}).items()])
    if not cov.empty:
        sns.barplot(data=cov, y="set", x="share", hue="category", ax=axes[1])
        axes[1].set(title="Domain-term coverage", xlabel="% of lexicon terms present in the set", ylabel="")
        axes[1].legend(title="term category", loc="lower right")
    else:
        axes[1].text(0.5, 0.5, "no domain lexicon (data.domain_lexicon)", ha="center")
        axes[1].set_title("Domain-term coverage")
    ov = pd.DataFrame([{"set": n, "overlap": stats["overlap_3gram"][n] * 100} for n in main])
    sns.barplot(data=ov, y="set", x="overlap", ax=axes[2], color="#fdae6b")
    axes[2].set(title="Overlap with in-domain evaluation text", xlabel="% of the set's word 3-grams found in eval text",
                ylabel="")
    fig.tight_layout()
    return fig


def write_metrics(output_dir: str | Path, pools: dict, records: list[dict], stats: dict, wall_s: float) -> dict:
    metrics = {
        "scrub": {k: v for k, v in pools["scrub"].items()},
        "pools": {"generic_texts": len(pools["generic"]), "in_domain_texts": len(pools["in_domain"]),
                  "in_domain_rendered_with_chat_template": pools.get("chat_template", False)},
        "sets": [{k: v for k, v in r.items() if k != "texts"} for r in records],
        "coverage": stats["coverage"], "overlap_3gram": stats["overlap_3gram"],
        "length_median": {n: float(np.median(v)) if v else 0 for n, v in stats["lengths"].items()},
        "wall_s": round(wall_s, 1),
    }
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
