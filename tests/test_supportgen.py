"""The seeded support-data generator: determinism, schema, splits, PII offsets, task items."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from quantstudy.data import format_conversation, read_conversations, read_task_items
from quantstudy_demo import supportgen as sg

SMALL = dict(
    n_train=300, n_calib=40, n_eval=30, n_task=120, n_articles=40, n_closed_book=60, n_grounded=60, n_retention=40
)
FILES = ("knowledge_base.json", "conversations.jsonl", "help_articles.jsonl", "task_items.jsonl")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    summary = sg.write_demo_data(out, seed=0, progress=False, **SMALL)
    return out, summary


def test_same_seed_same_bytes_other_seed_differs(demo, tmp_path):
    out, _ = demo
    sg.write_demo_data(tmp_path / "a", seed=0, progress=False, **SMALL)
    sg.write_demo_data(tmp_path / "b", seed=1, progress=False, **SMALL)
    for name in FILES:
        assert (out / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name
    assert (out / "conversations.jsonl").read_bytes() != (tmp_path / "b" / "conversations.jsonl").read_bytes()
    assert (out / "task_items.jsonl").read_bytes() != (tmp_path / "b" / "task_items.jsonl").read_bytes()


def test_knowledge_base_facts():
    kb = sg.build_knowledge_base(0)
    assert 50 <= len(kb.facts) <= 90
    assert len({f.fact_id for f in kb.facts}) == len(kb.facts)
    assert 10 <= len(kb.products) <= 14 and 3 <= len(kb.plans) <= 4
    for f in kb.facts:
        assert f.value and f.value not in f.distractors and len(set(f.distractors)) >= 3, f.fact_id
        assert f.attribute in sg.STATEMENTS and f.attribute in sg.QUESTIONS


def test_schema_splits_and_counts(demo):
    out, summary = demo
    convs = read_conversations(out / "conversations.jsonl")
    assert len(convs) == 300 + 40 + 30 + 120
    assert summary["splits"] == {"train": 300, "calib": 40, "eval": 30, "task": 120}
    ids_by_split: dict[str, set] = {}
    for c in convs:
        ids_by_split.setdefault(c["metadata"]["split"], set()).add(c["conversation_id"])
    assert sum(len(v) for v in ids_by_split.values()) == len({c["conversation_id"] for c in convs})
    for c in convs:
        roles = [t["role"] for t in c["turns"]]
        assert 4 <= len(roles) <= 12
        assert roles == [("user", "assistant")[i % 2] for i in range(len(roles))]
        meta = c["metadata"]
        assert meta["intent"] in sg.INTENTS and meta["style"] in sg.STYLES
        assert set(meta["facts"]) == {s["fact_id"] for s in meta["fact_spans"]}
    assert len({c["metadata"]["intent"] for c in convs}) >= 8
    assert summary["turns_min"] >= 4 and summary["turns_max"] <= 12


def test_pii_and_fact_offsets(demo):
    out, summary = demo
    convs = read_conversations(out / "conversations.jsonl")
    kb = sg.build_knowledge_base(0)
    types = Counter()
    for c in convs:
        for p in c["metadata"]["pii"]:
            assert c["turns"][p["turn"]]["text"][p["start"] : p["end"]] == p["text"]
            assert p["type"] in sg.PII_TYPES
            types[p["type"]] += 1
        for s in c["metadata"]["fact_spans"]:
            assert c["turns"][s["turn"]]["role"] == "assistant"
            assert c["turns"][s["turn"]]["text"][s["start"] : s["end"]] == kb.fact(s["fact_id"]).value
        rc = c["metadata"].get("recall")
        if rc:
            assert c["turns"][rc["turn"]]["text"][rc["start"] : rc["end"]] == rc["text"]
            assert rc["text"] in c["turns"][rc["source_turn"]]["text"] and rc["turn"] - rc["source_turn"] >= 3
    assert set(types) == set(sg.PII_TYPES)
    assert summary["pii"] == dict(sorted(types.items()))


def test_task_items(demo):
    out, summary = demo
    items = read_task_items(out / "task_items.jsonl")
    by_task = Counter(i["task"] for i in items)
    assert by_task["policy_closed_book"] == 60 and by_task["policy_grounded"] == 60
    assert by_task["retention"] >= 20
    assert len({i["item_id"] for i in items}) == len(items)
    answers = Counter()
    for it in items:
        assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4
        assert 0 <= it["answer"] < 4
        assert all(ch.startswith(" ") and not ch.startswith("  ") for ch in it["choices"])
        assert not it["context"].endswith((" ", "\n"))
        assert it["context"].splitlines()[-1].startswith("Assistant: ")
        ans = it["choices"][it["answer"]].strip()
        answers[it["answer"]] += 1
        if it["task"] == "policy_closed_book":
            assert ans not in it["context"]
            assert "fact_id" in it["metadata"]
        elif it["task"] == "policy_grounded":
            assert it["context"].startswith("Policy: ")
            snippet = it["context"].split("\n", 1)[0]
            assert ans in snippet and ans not in it["context"].split("\n", 1)[1]
        else:
            dialogue = it["context"]
            assert ans in dialogue  # the detail was given earlier ...
            assert all(ch.strip() not in dialogue for i, ch in enumerate(it["choices"]) if i != it["answer"])
            assert it["metadata"]["probe_type"] in ("ORDER_ID", "NAME", "PRODUCT")
    assert len(answers) == 4  # answers are not always in the same position
    sources = Counter(i["metadata"].get("source") for i in items if i["task"] == "policy_closed_book")
    assert sources["conversation"] > 0 and sources["template"] > 0


def test_task_contexts_use_format_conversation(demo):
    out, _ = demo
    convs = {c["conversation_id"]: c for c in read_conversations(out / "conversations.jsonl")}
    items = [i for i in read_task_items(out / "task_items.jsonl") if i["task"] == "retention"]
    it = items[0]
    conv = convs[it["metadata"]["conversation_id"]]
    assert conv["metadata"]["split"] == "task"
    head = format_conversation(conv["turns"][: it["metadata"]["recall_turn"]])
    assert it["context"].startswith(head)
    full = format_conversation(conv["turns"])
    assert full.startswith(it["context"] + it["choices"][it["answer"]])


def test_diversity_and_coverage(demo):
    out, summary = demo
    convs = read_conversations(out / "conversations.jsonl")
    div = sg.ngram_diversity(t["text"] for c in convs[:100] for t in c["turns"])
    assert div["distinct_2"] > 0.2 and div["distinct_3"] > 0.3, div
    assert sg.ngram_diversity(["a b c", "a b c"])["distinct_3"] == 0.5
    kb = sg.build_knowledge_base(0)
    arts = [json.loads(line) for line in (out / "help_articles.jsonl").read_text().splitlines()]
    counts = sg.fact_mention_counts(kb, convs, arts)
    assert min(counts.values()) >= 1 and set(counts) == {f.fact_id for f in kb.facts}
    assert summary["fact_mentions_train_with_articles_min"] == min(counts.values())
    for a in arts:
        for f in a["facts"]:
            assert kb.fact(f).value in a["text"]


def test_domain_lexicon():
    kb = sg.build_knowledge_base(0)
    lex = sg.domain_lexicon(kb)
    assert set(lex) == {"product", "figure", "jargon", "organisation"}
    assert lex["organisation"] == [sg.COMPANY]
    assert "Lumen X2" in lex["product"] and "NX-2041" in lex["product"]
    assert "30 days" in lex["figure"] and "RMA" in lex["jargon"]


@pytest.mark.parametrize(
    "bad, msg",
    [
        ({"n_train": 0}, "n_train must be an integer >= 1"),
        ({"n_eval": "5"}, "n_eval must be an integer >= 1"),
        ({"n_trian": 5}, "unknown count setting"),
    ],
)
def test_bad_settings(tmp_path, bad, msg):
    with pytest.raises(ValueError, match=msg):
        sg.write_demo_data(tmp_path, progress=False, **bad)
    with pytest.raises(ValueError, match="seed"):
        sg.write_demo_data(tmp_path, seed=-1, progress=False)


def test_phrase_banks_ship_as_package_data():
    """The generators read their catalogue and wording from quantstudy_demo/banks/*.json, shipped with the package."""
    import tomllib

    from quantstudy_demo import banks

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "banks/*.json" in pyproject["tool"]["setuptools"]["package-data"]["quantstudy_demo"]
    names = sorted(p.stem for p in banks.BANKS_DIR.glob("*.json"))
    assert names == ["articles", "catalogue", "dialogue", "facts", "lexicon", "people", "retention"]
    assert all(banks.load(name) for name in names)
    assert banks.load("catalogue")["company"] == sg.COMPANY
    with pytest.raises(FileNotFoundError, match="no such phrase bank; known: articles"):
        banks.load("nope")
