"""lm-eval-harness against the study's own scorer, on the demo model: the same accuracy and the
same per-choice log-likelihoods on task items exported as a local lm-eval task, and the same
summed NLL for perplexity (lm-eval's loglikelihood_rolling)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lm_eval", reason="lm-eval is installed by `make setup`")

from quantstudy import data as D  # noqa: E402
from quantstudy.config.params import StudyParams  # noqa: E402
from quantstudy.steps import evaluate as E  # noqa: E402
from quantstudy.steps import quantize as Q  # noqa: E402
from quantstudy.steps.evaluate import lmeval  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "demo-support-lm"
ITEMS = REPO / "data" / "demo" / "task_items.jsonl"
PER_TASK = 4
LL_TOL = 1e-3  # nats: both run float32; only padding and KV-cache reuse differ


@pytest.fixture(scope="module")
def model_tok():
    model, tok, _ = Q.load_checkpoint(MODEL)
    return model, tok


@pytest.fixture(scope="module")
def items(model_tok):
    """The first few items of each task, rendered as step 03 renders them."""
    _, tok = model_tok
    by_task: dict[str, list[dict]] = {}
    for it in D.read_task_items(ITEMS):
        if len(by_task.setdefault(it["task"], [])) < PER_TASK:
            by_task[it["task"]].append({**it, "context": D.item_context(it, tok)})
    assert len(by_task) >= 2 and all(len(v) == PER_TASK for v in by_task.values())
    return by_task


@pytest.fixture(scope="module")
def study_scores(model_tok, items):
    model, tok = model_tok
    return {t: E.score_items(model, tok, v) for t, v in items.items()}


@pytest.fixture(scope="module")
def lm_eval_run(model_tok, items, tmp_path_factory):
    model, tok = model_tok
    folder = tmp_path_factory.mktemp("lmeval-tasks")
    names = lmeval.export_tasks(items, folder)
    manager = lmeval.task_manager(folder)
    res = lmeval.evaluate(lmeval.make_lm(model, tok, batch_size=8), list(names.values()), manager)
    return names, res


def test_export_writes_jsonl_and_task_yaml(items, tmp_path):
    names = lmeval.export_tasks(items, tmp_path)
    assert names == {t: f"quantstudy_{t}" for t in items}
    for task, name in names.items():
        rows = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert [r["context"] for r in rows] == [it["context"] for it in items[task]]
        assert [r["choices"] for r in rows] == [it["choices"] for it in items[task]]
        cfg = (tmp_path / f"{name}.yaml").read_text()
        assert "output_type: multiple_choice" in cfg and "doc_to_text: context" in cfg


def test_same_accuracy_and_per_item_loglikelihoods(lm_eval_run, study_scores):
    names, res = lm_eval_run
    worst = 0.0
    for task, name in names.items():
        acc, lls = lmeval.per_item(res, name)
        ours = study_scores[task]
        assert lls.shape == ours["choice_ll"].shape
        np.testing.assert_array_equal(np.isnan(lls), np.isnan(ours["choice_ll"]))
        worst = max(worst, float(np.nanmax(np.abs(lls - ours["choice_ll"]))))
        np.testing.assert_array_equal(acc, ours["acc"])
        assert res["results"][name]["acc,none"] == pytest.approx(ours["acc"].mean(), abs=1e-12)
        row = lmeval.task_result(res, name, ours)
        assert row["agree_items"] == row["n_items"] == len(acc) and row["study_acc"] == pytest.approx(row["acc"])
    assert worst < LL_TOL, f"largest per-choice log-likelihood difference {worst:.2e} nats"


def test_perplexity_matches_rolling_loglikelihood(model_tok):
    from lm_eval.api.instance import Instance

    model, tok = model_tok
    text = (
        "User: my Lumen X2 router drops the connection every evening.\n"
        "Assistant: Sorry about that. The refund window is 30 days and the warranty is 24 months."
    )
    ids = D.encode(tok, text)
    # The demo tokenizer writes <s> before the text and nothing after it.
    assert ids[0] == tok.bos_token_id and ids[1:] == tok(text, add_special_tokens=False)["input_ids"]
    # The study: one full window [<s>, t1..tn, </s>] (build_stream appends EOS after each text);
    # every token after the first is scored, so the sum covers t1..tn and the appended </s>.
    n = len(ids) + 1
    stream = E.build_stream(tok, [text], window=n, stride=n, max_tokens=n)
    assert tuple(stream.input_ids.shape) == (1, n) and stream.n_tokens == n - 1
    nll = E.score_stream(model, stream)["nll"]
    # lm-eval's loglikelihood_rolling predicts every token of tok_encode(text) and conditions the
    # first on a prefix token (prefix_token_id: the BOS here). With the tokenizer's special tokens
    # on (lm-eval's default) that token list would itself start with <s>, adding a p(<s> | <s>)
    # term and a doubled BOS. add_bos_token=False makes it t1..tn, so lm-eval scores
    # [<s>, t1..tn-1] -> t1..tn: the study's window without its final EOS term.
    lm = lmeval.make_lm(model, tok, batch_size=1, add_bos_token=False)
    assert lm.prefix_token_id == tok.bos_token_id and lm.max_length >= n
    (ll,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    ours = float(nll[:-1].sum())
    assert -ll == pytest.approx(ours, abs=LL_TOL)
    assert np.exp(-ll / (n - 2)) == pytest.approx(E.perplexity(nll[:-1]), rel=1e-5)


def test_a_task_that_cannot_load_fails_with_one_line_naming_it(items, tmp_path):
    names = lmeval.export_tasks(items, tmp_path)
    name = next(iter(names.values()))
    (tmp_path / f"{name}.jsonl").unlink()
    manager = lmeval.task_manager(tmp_path)
    with pytest.raises(RuntimeError) as err:
        lmeval.check_tasks([name, "no_such_task"], manager)
    msg = str(err.value)
    assert "\n" not in msg and f"'{name}' cannot be loaded" in msg and "'no_such_task': no such task" in msg


def test_run_scores_baseline_and_checkpoints_next_to_the_study(model_tok, items, study_scores, tmp_path):
    """run_lm_eval end to end on a step-02 folder whose one checkpoint is the demo model itself."""
    qdir = tmp_path / "02_quantize"
    (qdir / "checkpoints").mkdir(parents=True)
    (qdir / "checkpoints" / "same").symlink_to(MODEL, target_is_directory=True)
    step02 = json.loads((Path(__file__).parent / "fixtures" / "run" / "02_quantize" / "metrics.json").read_text())
    step02["checkpoints"] = [{**step02["checkpoints"][0], "name": "same", "method": "rtn", "bits": 4}]
    (qdir / "metrics.json").write_text(json.dumps(step02))  # a valid step-02 file with that one checkpoint
    tasks = sorted(items)
    ref, main = tasks[0], tasks[1:]
    result = {
        "items_used": {t: items[t] for t in main},
        "reference_items": {ref: items[ref]},
        "base": {"items": {t: study_scores[t] for t in main}},
        "reference": {ref: study_scores[ref]},
        "cands": {"same": {"items": {t: study_scores[t] for t in main}}},
    }
    assert E.run_lm_eval(StudyParams(), qdir, result) is None  # the default lists no lm-eval tasks
    out = E.run_lm_eval(StudyParams(evaluate={"lm_eval_tasks": ["quantstudy"]}), qdir, result)
    assert set(out) == {"baseline", "same"}
    assert set(out["baseline"]) == set(tasks) and set(out["same"]) == set(main)
    for model_name, per_task in out.items():
        for task, row in per_task.items():
            assert {"acc", "acc_stderr", "study_acc", "agree_items"} <= set(row)
            assert row["acc"] == pytest.approx(row["study_acc"]) and row["agree_items"] == PER_TASK, (model_name, task)
            assert row["max_abs_ll_diff"] < LL_TOL
    json.dumps(out, allow_nan=False)  # metrics.json-ready
