"""PII scrubber on an independent, hand-written test set (not the demo generator's output):
the set is consistent, recall per type and false positives do not regress, nothing raw is reported."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from quantstudy.steps import calibration as C
from quantstudy.steps.calibration import pii_eval as E

PII_DIR = Path(__file__).resolve().parent / "fixtures" / "pii"
DEV, HOLDOUT = PII_DIR / "pii_testset.jsonl", PII_DIR / "pii_holdout.jsonl"
REPO = Path(__file__).resolve().parents[1]

# Measured with the widened PROJECT_PATTERNS (see the report); floors sit slightly below so a
# regression fails. Development set: patterns were tuned against it. Holdout: never tuned on.
DEV_FLOOR = {"NAME": 0.90, "EMAIL": 0.95, "PHONE": 0.95, "ADDRESS": 0.95, "ORDER_ID": 0.95, "CARD": 0.95}
DEV_MAX_FP_SPANS = 0  # measured 0 spans on 40 negatives
HOLDOUT_FLOOR = {"NAME": 0.55, "EMAIL": 0.92, "PHONE": 0.95, "ADDRESS": 0.80, "ORDER_ID": 0.84, "CARD": 0.90}
HOLDOUT_MAX_FP_SPANS = 1  # measured 1 span on 28 negatives ("Error 0x8007..." as ORDER_ID)


@pytest.fixture(scope="module")
def scrubber():
    lexicon = json.loads((REPO / "data" / "demo" / "domain_lexicon.json").read_text())
    return C.scrubber_for(lexicon)


@pytest.fixture(scope="module")
def results(scrubber):
    return {
        name: E.evaluate_scrubber(scrubber, E.load_testset(path)) for name, path in (("dev", DEV), ("holdout", HOLDOUT))
    }


def _builder():
    spec = importlib.util.spec_from_file_location("build_pii_testset", PII_DIR / "build_testset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------- the test set
@pytest.mark.parametrize("path", [DEV, HOLDOUT], ids=["dev", "holdout"])
def test_every_span_matches_its_text(path):
    n = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        for s in rec["spans"]:
            assert rec["text"][s["start"] : s["end"]] == s["text"], (path.name, s)
            assert s["type"] in E.PII_TYPES
            n += 1
        starts = sorted((s["start"], s["end"]) for s in rec["spans"])
        assert all(a[1] <= b[0] for a, b in zip(starts, starts[1:])), f"overlapping spans in {rec['text']!r}"
    assert n > 0
    assert E.load_testset(path)  # the loader's own checks pass too


def test_committed_files_match_the_builder():
    b = _builder()
    assert DEV.read_text(encoding="utf-8") == b.render(b.SENTENCES)
    assert HOLDOUT.read_text(encoding="utf-8") == b.render(b.HOLDOUT)
    assert not set(b.SENTENCES) & set(b.HOLDOUT)


def test_dev_set_size_and_coverage_of_types():
    recs = E.load_testset(DEV)
    counts = {t: sum(s["type"] == t for r in recs for s in r["spans"]) for t in E.PII_TYPES}
    assert sum(counts.values()) >= 150 and min(counts.values()) >= 15, counts
    assert sum(1 for r in recs if not r["spans"]) >= 30


def test_sentences_are_not_from_the_demo_generator():
    from quantstudy_demo import supportgen

    recs = E.load_testset(DEV) + E.load_testset(HOLDOUT)
    names = {s["text"] for r in recs for s in r["spans"] if s["type"] == "NAME"}
    known = set(supportgen._FIRST) | set(supportgen._LAST)
    # every name has a word the generator never writes ("Pieter van der Berg" shares only "Berg")
    assert all(any(w not in known for w in n.split()) for n in names), (
        "test names must be outside the generator's lists"
    )
    assert sum(w in known for n in names for w in n.split()) <= 1
    assert not any(s["text"].startswith("ORD-") for r in recs for s in r["spans"])


# --------------------------------------------------------------------------- the loader
def test_malformed_records_name_file_and_line(tmp_path):
    good = json.dumps({"text": "call Ana", "spans": [{"start": 5, "end": 8, "type": "NAME", "text": "Ana"}]})
    cases = {
        "{not json": "not valid JSON",
        json.dumps(["a list"]): "expected a JSON object",
        json.dumps({"text": 3, "spans": []}): "'text' must be a string",
        json.dumps({"text": "x", "spans": {}}): "'spans' must be a list",
        json.dumps({"text": "call Ana", "spans": [{"start": 5, "end": 8, "type": "NAME"}]}): "span 0 must be an object",
        json.dumps(
            {"text": "call Ana", "spans": [{"start": 5, "end": 80, "type": "NAME", "text": "Ana"}]}
        ): "outside the text",
        json.dumps(
            {"text": "call Ana", "spans": [{"start": 5, "end": 8, "type": "PERSON", "text": "Ana"}]}
        ): "unknown type 'PERSON'",
        json.dumps(
            {"text": "call Ana", "spans": [{"start": 4, "end": 8, "type": "NAME", "text": "Ana"}]}
        ): "differs from the characters",
    }
    for i, (bad, msg) in enumerate(cases.items()):
        p = tmp_path / f"set{i}.jsonl"
        p.write_text(good + "\n\n" + bad + "\n")
        with pytest.raises(E.PIITestsetError) as e:
            E.load_testset(p)
        text = str(e.value)
        assert text.startswith(f"{p}:3: ") and msg in text and "\n" not in text, text
    with pytest.raises(E.PIITestsetError, match="no such file"):
        E.load_testset(tmp_path / "missing.jsonl")
    p = tmp_path / "ok.jsonl"
    p.write_text("\n" + good + "\n")
    assert E.load_testset(p)[0]["line"] == 2


# --------------------------------------------------------------------------- the scoring
class _Fixed:
    """A scrubber stand-in that flags fixed character ranges."""

    def __init__(self, spans):
        self.spans = spans

    def find(self, text):
        return self.spans


def test_caught_means_at_least_80_percent_of_characters_covered():
    rec = [
        {"text": "my id is ABCDEFGHIJ ok", "spans": [{"start": 9, "end": 19, "type": "ORDER_ID", "text": "ABCDEFGHIJ"}]}
    ]
    assert (
        E.evaluate_scrubber(_Fixed([(9, 17, "PHONE")]), rec)["by_type"]["ORDER_ID"]["detected"] == 1
    )  # 8/10, any type
    r = E.evaluate_scrubber(_Fixed([(9, 16, "ORDER_ID"), (0, 2, "NAME")]), rec)  # 7/10
    assert r["by_type"]["ORDER_ID"] == {"instances": 1, "detected": 0, "recall": 0.0}
    assert r["survivors"] == [{"line": 1, "type": "ORDER_ID", "masked": "A*********", "coverage": 0.7}]
    assert r["extra_spans_in_positive"] == 1  # "my" flagged next to the real PII
    assert E.evaluate_scrubber(_Fixed([(9, 16, "X")]), rec, min_coverage=0.7)["by_type"]["ORDER_ID"]["detected"] == 1


def test_false_positives_counted_on_sentences_without_pii():
    recs = [{"text": "Lumen X2 costs $149", "spans": []}, {"text": "nothing here", "spans": []}]
    r = E.evaluate_scrubber(_Fixed([(0, 8, "NAME")]), recs)
    assert r["n_negative"] == 2 and r["false_positives"]["spans"] == 2 and r["false_positives"]["chars"] == 16
    assert r["false_positives"]["records_flagged"] == 2
    assert r["overall"] == {"instances": 0, "detected": 0, "recall": None}


def test_survivors_are_masked_never_raw():
    recs = E.load_testset(DEV)
    r = E.evaluate_scrubber(_Fixed([]), recs)  # nothing caught: every planted instance survives
    assert len(r["survivors"]) == sum(len(x["spans"]) for x in recs)
    blob = json.dumps(r, ensure_ascii=False)
    for x in recs:
        for s in x["spans"]:
            assert s["text"] not in blob, f"raw {s['type']} in the report"
    assert all(sv["masked"][1:].replace(" ", "").replace("\n", "").strip("*") == "" for sv in r["survivors"])
    assert E.mask("Pieter van der Berg") == "P***** *** *** ****" and E.mask("") == ""


# --------------------------------------------------------------------------- the scrubber on it
@pytest.mark.parametrize(
    "name,floor,max_fp", [("dev", DEV_FLOOR, DEV_MAX_FP_SPANS), ("holdout", HOLDOUT_FLOOR, HOLDOUT_MAX_FP_SPANS)]
)
def test_recall_per_type_and_false_positives_do_not_regress(results, name, floor, max_fp):
    r = results[name]
    low = {t: r["by_type"][t]["recall"] for t in floor if r["by_type"][t]["recall"] < floor[t]}
    assert not low, f"{name}: recall below floor {low}; survivors {r['survivors']}"
    assert r["false_positives"]["spans"] <= max_fp, r["false_positives"]["flagged"]


def test_real_scrubber_report_holds_no_raw_survivor(results):
    for name, path in (("dev", DEV), ("holdout", HOLDOUT)):
        blob = json.dumps(results[name], ensure_ascii=False)
        by_line = {x["line"]: x for x in E.load_testset(path)}
        for sv in results[name]["survivors"]:
            raw = [s["text"] for s in by_line[sv["line"]]["spans"] if s["type"] == sv["type"]]
            assert raw and not any(t in blob for t in raw)
