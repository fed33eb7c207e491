"""Score a PII scrubber on an independent, hand-labelled test set.

The recall on PII a data set records as planted (``scrub.scrub_conversations``; the demo data
records it) measures the scrubber on formats its regexes were written for. This module scores it on hand-written sentences the
generator did not produce (``tests/fixtures/pii/pii_testset.jsonl``, the development set, and
``pii_holdout.jsonl``, written after the patterns were widened and never tuned on): each record is
``{"text": str, "spans": [{"start": int, "end": int, "type": str, "text": str}, ...]}``, and
records without spans are negatives that measure false positives.

A planted span counts as **caught** when at least ``min_coverage`` (default 80%) of its
characters fall inside spans the scrubber found, of any type (a phone number flagged as an
order id is still removed from the text). Nothing raw is ever reported: survivors and false
positives are shown masked (first character kept, the rest replaced by ``*``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from quantstudy.paths import project_root

PII_TYPES = ("NAME", "EMAIL", "PHONE", "ADDRESS", "ORDER_ID", "CARD")
MIN_COVERAGE = 0.8


class PIITestsetError(ValueError):
    """A malformed test-set record; the message names the file and line."""


def mask(value: str) -> str:
    """First character kept, every other non-space character replaced by '*'."""
    if not value:
        return value
    return value[0] + "".join(c if c.isspace() else "*" for c in value[1:])


def load_testset(path: str | Path) -> list[dict]:
    """Records of a PII test set (JSON lines), checked: each span has int start < end within
    the text, a known type, and ``text == record_text[start:end]``. Blank lines are skipped;
    each record gets ``line`` (its 1-based line number) for reports."""
    p = Path(path)
    if not p.is_file():
        raise PIITestsetError(f"{p}: no such file")
    records = []
    for lineno, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue

        def bad(msg: str) -> PIITestsetError:
            return PIITestsetError(f"{p}:{lineno}: {msg}")

        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            raise bad(f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise bad('expected a JSON object {"text": ..., "spans": [...]}')
        text, spans = rec.get("text"), rec.get("spans")
        if not isinstance(text, str):
            raise bad("'text' must be a string")
        if not isinstance(spans, list):
            raise bad("'spans' must be a list (empty for a sentence without PII)")
        for j, s in enumerate(spans):
            if not isinstance(s, dict) or not all(k in s for k in ("start", "end", "type", "text")):
                raise bad(f"span {j} must be an object with start, end, type, text")
            start, end = s["start"], s["end"]
            if (
                not (isinstance(start, int) and isinstance(end, int))
                or isinstance(start, bool)
                or isinstance(end, bool)
            ):
                raise bad(f"span {j}: start and end must be integers")
            if not 0 <= start < end <= len(text):
                raise bad(f"span {j}: offsets {start}..{end} outside the text (length {len(text)})")
            if s["type"] not in PII_TYPES:
                raise bad(f"span {j}: unknown type {s['type']!r} (expected one of {', '.join(PII_TYPES)})")
            if text[start:end] != s["text"]:
                raise bad(f"span {j} ({s['type']}): 'text' differs from the characters at {start}..{end}")
        records.append({"text": text, "spans": spans, "line": lineno})
    return records


def _coverage(start: int, end: int, found: Iterable[tuple[int, int, str]]) -> float:
    covered = sum(max(0, min(end, b) - max(start, a)) for a, b, _ in found)  # scrubber spans do not overlap
    return min(1.0, covered / (end - start))


def _score_planted(text, line, spans, found, min_coverage, planted, caught) -> list[dict]:
    """Count one record's planted spans (in ``planted``) and those the scrubber covered (in
    ``caught``); return the ones it missed."""
    missed = []
    for s in spans:
        kind = s["type"]
        planted[kind] = planted.get(kind, 0) + 1
        cov = _coverage(s["start"], s["end"], found)
        if cov >= min_coverage:
            caught[kind] = caught.get(kind, 0) + 1
        else:
            missed.append(
                {"line": line, "type": kind, "masked": mask(text[s["start"] : s["end"]]), "coverage": round(cov, 2)}
            )
    return missed


def evaluate_scrubber(scrubber, records: list[dict], min_coverage: float = MIN_COVERAGE) -> dict:
    """Recall per type on planted spans and false positives on sentences without PII.

    ``scrubber`` needs ``find(text) -> [(start, end, type), ...]`` (``scrub.Scrubber``).
    Returns::

        {"min_coverage": 0.8, "n_records": int, "n_negative": int,
         "by_type": {TYPE: {"instances": int, "detected": int, "recall": float}, ...},
         "overall": {"instances": int, "detected": int, "recall": float},
         "survivors": [{"line": int, "type": TYPE, "masked": "S****** N* B******", "coverage": float}, ...],
         "false_positives": {"spans": int, "chars": int, "records_flagged": int,
                             "flagged": [{"line": int, "type": TYPE, "masked": "N******* I******"}, ...]},
         "extra_spans_in_positive": int}

    ``line`` is the record's ``line`` (from ``load_testset``) or its 1-based position.
    ``extra_spans_in_positive`` counts scrubber spans in sentences with PII that touch no
    planted span (over-scrubbing next to real PII).
    """
    if not 0 < min_coverage <= 1:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")
    planted = {t: 0 for t in PII_TYPES}
    caught = {t: 0 for t in PII_TYPES}
    survivors: list[dict] = []
    fp_spans = fp_chars = fp_records = extra = n_negative = 0
    flagged: list[dict] = []
    for i, rec in enumerate(records):
        text, line = rec["text"], rec.get("line", i + 1)
        found = [(int(a), int(b), str(k)) for a, b, k in scrubber.find(text)]
        spans = rec.get("spans") or []
        if not spans:
            n_negative += 1
            fp_spans += len(found)
            fp_chars += sum(b - a for a, b, _ in found)
            fp_records += bool(found)
            flagged += [{"line": line, "type": k, "masked": mask(text[a:b])} for a, b, k in found]
            continue
        survivors += _score_planted(text, line, spans, found, min_coverage, planted, caught)
        extra += sum(1 for a, b, _ in found if not any(a < s["end"] and s["start"] < b for s in spans))
    by_type = {
        t: {"instances": n, "detected": caught.get(t, 0), "recall": round(caught.get(t, 0) / n, 4) if n else None}
        for t, n in planted.items()
    }
    total, hit = sum(planted.values()), sum(caught.values())
    return {
        "min_coverage": min_coverage,
        "n_records": len(records),
        "n_negative": n_negative,
        "by_type": by_type,
        "overall": {"instances": total, "detected": hit, "recall": round(hit / total, 4) if total else None},
        "survivors": survivors,
        "false_positives": {"spans": fp_spans, "chars": fp_chars, "records_flagged": fp_records, "flagged": flagged},
        "extra_spans_in_positive": extra,
    }


def default_testset(holdout: bool = False) -> Path:
    """The committed independent test sets under tests/fixtures/pii of the project root:
    pii_testset.jsonl (development set: the scrubber's patterns were widened against it) or,
    with ``holdout=True``, pii_holdout.jsonl (written afterwards, never tuned on)."""
    name = "pii_holdout.jsonl" if holdout else "pii_testset.jsonl"
    return Path(project_root()) / "tests" / "fixtures" / "pii" / name


def independent_pii_check(scrubber) -> dict:
    """The scrubber on hand-labelled sentences this project's generator did not write
    (tests/fixtures/pii): the development set the patterns were widened on, and a holdout set
    written afterwards and never tuned on (the honest estimate for unseen formats)."""
    return {
        name: evaluate_scrubber(scrubber, load_testset(default_testset(holdout=name == "holdout")))
        for name in ("development", "holdout")
    }
