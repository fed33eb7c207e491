"""Calibration: PII scrubbing against planted instances, over-long samples, equal-size sets."""

from __future__ import annotations

import json

import pytest

from quantstudy.steps import calibration as C
from quantstudy_demo import supportgen


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    supportgen.write_demo_data(
        out,
        seed=3,
        progress=False,
        n_train=40,
        n_calib=120,
        n_eval=20,
        n_task=20,
        n_articles=5,
        n_closed_book=10,
        n_grounded=10,
        n_retention=10,
    )
    convs = [json.loads(l) for l in (out / "conversations.jsonl").read_text().splitlines()]
    lexicon = json.loads((out / "domain_lexicon.json").read_text())
    return convs, lexicon


def test_every_planted_pii_instance_is_scrubbed(planted):
    convs, lexicon = planted
    scrubbed, report = C.scrub_conversations(convs, C.scrubber_for(lexicon))
    assert report["scored"] and sum(report["planted_by_type"].values()) > 100
    assert set(report["planted_by_type"]) >= {"NAME", "EMAIL", "PHONE", "ADDRESS", "ORDER_ID", "CARD"}
    assert report["survivors"] == [], report["survivors"][:5]
    assert all(v == 1.0 for v in report["recall_by_type"].values())
    emails = [p["text"] for c in convs for p in c["metadata"]["pii"] if p["type"] == "EMAIL"]
    blob = json.dumps(scrubbed)
    assert emails and not any(e in blob for e in emails)


def test_products_are_not_scrubbed_as_names(planted):
    _, lexicon = planted
    s = C.scrubber_for(lexicon)
    text = "Thanks, Maria Lopez! Your Halo Mesh Node and Lumen X2 ship today."
    out = s.scrub(text).text
    assert "Maria" not in out and "Halo Mesh Node" in out and "Lumen X2" in out


def test_the_scrubber_names_no_demo_product_or_company():
    """The domain's own words reach the scrubber through the lexicon (scrubber_for), never the code."""
    from pathlib import Path

    from quantstudy.steps.calibration import scrub

    lexicon = json.loads((Path(__file__).resolve().parents[1] / "data" / "demo" / "domain_lexicon.json").read_text())
    source = "\n".join(p.read_text() for p in sorted(Path(scrub.__file__).parent.glob("*.py")))
    terms = lexicon["product"] + lexicon["organisation"]
    words = {w for t in lexicon["organisation"] for w in t.split() if w not in scrub._NOT_NAMES}
    assert words and not [t for t in terms if t in source] and not [w for w in words if w in source]


def test_split_long_never_exceeds_and_keeps_every_token():
    ids = list(range(1000))
    pieces = C.split_long(ids, 256)
    assert max(map(len, pieces)) <= 256 and sum(pieces, []) == ids
    assert C.split_long(ids, 256, "truncate") == [ids[:256]]


def test_kept_tokens_match_autoawq(tiny_model_dir):
    """Our accounting of what AutoAWQ keeps equals its own get_calib_dataset."""
    from awq.utils.calib_data import get_calib_dataset

    samples = [list(range(3, 3 + n)) for n in (50, 300, 120, 90, 64)]
    blocks = get_calib_dataset(samples, n_samples=len(samples), max_seq_len=128)
    assert C.autoawq_kept_tokens(samples, 128) == sum(b.numel() for b in blocks)
    assert C.autoawq_kept_tokens(samples, 128) < sum(map(len, samples))  # the 300-token sample is dropped


def test_draw_set_fills_exact_budget_and_splits_long_texts(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    texts = ["word " * 400, "short text here", "another text " * 30] * 5
    s = C.draw_set(texts, tok, n_blocks=4, max_seq_len=64, seed=1, name="t")
    assert s["tokens"] == 4 * 64 and max(map(len, s["samples"])) <= 64
    assert s["kept_by_autoawq"] == s["tokens"] and s["texts_split"] >= 1


def test_empty_pool_names_the_set(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    with pytest.raises(C.CalibrationError, match="'in_domain-d0' is empty"):
        C.draw_set([], tok, 4, 64, 0, "in_domain-d0")
    with pytest.raises(C.CalibrationError, match="fewer than"):
        C.draw_set(["tiny"], tok, 4, 64, 0, "generic-d0")
