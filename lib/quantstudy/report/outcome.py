"""The *Outcome* part of the report, as notebook cells generated from a run's metrics.

Quality vs the declared budget (step 03), the calibration effects, flips and reference tasks,
the cross-domain matrix, AWQ vs round-to-nearest, speed/memory/cost with the trap callout
(step 04), and the rollout verdict with the candidate rule (step 05). As in
:mod:`quantstudy.report.sections`: the ``*_rows`` helpers give the tables' data, the ``*_md``
functions markdown, the ``*_cells`` functions ``[(kind, source)]`` with the figure cells in
place; every value from the run that goes into raw HTML is escaped.
"""

from __future__ import annotations

import html
from typing import Any, Mapping

from quantstudy.pipeline.manifest import budget_changed_after_results
from quantstudy.report.answer import srm_check_text
from quantstudy.report.formatting import fmt, gb, md_cell, md_table, money, num
from quantstudy.report.lookups import (
    SOURCE_LABELS,
    bench_models,
    calibration_effects,
    ci_level,
    label,
    lower_is_better,
    speed_rows,
)
from quantstudy.report.sections import Cells, effect_sentence, figure_cell


# =========================================================================== outcome: quality
def budget_rows(M: Mapping[str, Any]) -> list[dict]:
    """Step 03's budget lines: degradation with its CI (as a loss), worst case, verdict."""
    ci = ci_level(M)
    rows = []
    for r in M["03_evaluate"].get("budget") or []:
        c = r.get("ci") or {}
        if str(r.get("metric", "")).endswith("_ppl"):
            lo, hi = c.get("lo"), c.get("hi")
        else:
            lo = -c["hi"] if num(c.get("hi")) is not None else None
            hi = -c["lo"] if num(c.get("lo")) is not None else None
        rows.append(
            {
                "checkpoint": r["checkpoint"],
                "metric": r["metric"],
                "budget": f"{fmt(r.get('limit'))} {r.get('unit')}",
                "degradation": fmt(r.get("degradation"), 2, True),
                f"{ci} of degradation": f"[{fmt(lo, 2, True)}, {fmt(hi, 2, True)}]",
                "worst case": fmt(r.get("worst_case"), 2, True),
                "verdict": str(r.get("verdict", "")).upper(),
            }
        )
    return rows


def budget_md(M: Mapping[str, Any]) -> str:
    """*Outcome* opens with quality vs the declared budget (step 03) and each checkpoint's verdict."""
    ci = ci_level(M)
    verdicts = M["03_evaluate"].get("verdict_by_checkpoint") or {}
    passed = [k for k, v in verdicts.items() if v == "pass"]
    v_rows = [{"checkpoint": k, "overall verdict": v.upper()} for k, v in verdicts.items()]
    return "\n".join(
        [
            '<div id="outcome">',
            "",
            "## Outcome",
            "",
            "</div>",
            "",
            '<div id="budget">',
            "",
            "### Quality vs the declared budget (step 03)",
            "",
            f"Degradation against the exact float baseline (accuracy: points lost; perplexity: % increase), with the "
            f"paired-bootstrap {ci}. A line passes only when the worse end of the interval stays inside the budget; "
            f"it fails when the point estimate is outside, and is inconclusive otherwise.",
            "",
            md_table(budget_rows(M)),
            "",
            f"**Overall:** {len(passed)} of {len(verdicts)} checkpoint(s) pass every budget line"
            + (f": {', '.join(f'`{p}`' for p in passed)}." if passed else "."),
            "",
            md_table(v_rows),
            "",
            "</div>",
        ]
    )


def effects_md(M: Mapping[str, Any]) -> str:
    """Does calibration data matter? The in-domain vs generic sentences and every effect with its CI."""
    ci = ci_level(M)
    e_rows = [
        {
            "comparison": f"{e['a']} vs {e['b']}",
            "metric": e["metric"],
            "effect (a - b)": f"{fmt(e['point'], 2, True)} {e.get('unit', '')}",
            ci: f"[{fmt(e['lo'], 2, True)}, {fmt(e['hi'], 2, True)}]",
            "draws": f"{e['draws'][0]} vs {e['draws'][1]}",
            "reading": "within noise" if e.get("within_noise") else "CI excludes 0",
        }
        for e in M["03_evaluate"].get("calibration_effects") or []
        if e.get("kind", "calibration source") == "calibration source"
    ]
    key = [effect_sentence(e, ci) for e in calibration_effects(M)]
    return "\n".join(
        [
            '<div id="effects">',
            "",
            "### Does calibration data matter? Generic vs in-domain",
            "",
            *(f"- {s}" for s in key),
            "" if key else "_No in-domain vs generic comparison in this run._",
            "",
            f"Effect size = mean over draws of source a minus source b (accuracy points, or % perplexity); the {ci} "
            "resamples both evaluation items and calibration draws.",
            "",
            md_table(e_rows) if e_rows else "",
            "",
            implementations_md(M),
            "</div>",
        ]
    )


_IMPLEMENTATION_METRICS = ("indomain_ppl", "generic_ppl", "policy_grounded_acc", "retention_acc", "retention_flip_rate")


def implementation_sentence(e: Mapping[str, Any], ci: str) -> str:
    """An implementation or loss-mask effect in one sentence."""
    unit = e.get("unit", "")
    shown = "%" if unit.startswith("%") else f" {unit}"
    source = SOURCE_LABELS.get(e["b"].split("/")[0], e["b"]).lower()
    if e.get("kind") == "loss mask":
        who = f"llm-compressor calibrated on the assistant's tokens only ({source} sets) against whole conversations"
    else:
        who = f"llm-compressor against AutoAWQ on the same {source} sets and draws"
    text = (
        f"{who}: {label(e['metric'])} {fmt(e['point'], 2, True)}{shown} ({ci} [{fmt(e['lo'], 2, True)}, "
        f"{fmt(e['hi'], 2, True)}], {e['draws'][0]} paired draws)"
    )
    if e.get("within_noise"):
        return text + ", within noise."
    better = (e["point"] < 0) == lower_is_better(e["metric"], unit)
    return text + f": {'better' if better else 'worse'}, and the interval excludes 0."


def _comparison_label(e: Mapping[str, Any]) -> str:
    """The question an effect answers, for the side-by-side table."""
    source = SOURCE_LABELS.get(e["b"].split("/")[0], e["b"]).lower()
    if e.get("kind") == "implementation":
        return f"llm-compressor vs AutoAWQ, {source} sets (paired draws)"
    if e.get("kind") == "loss mask":
        return f"assistant tokens only vs whole conversations (llm-compressor, {source} sets, paired draws)"
    a, b = (SOURCE_LABELS.get(x.split("/")[0], x).lower() for x in (e["a"], e["b"]))
    return f"{a} vs {b} calibration, {'llm-compressor' if '/llmc' in e['a'] else 'AutoAWQ'}"


def _effect_cell(e: Mapping[str, Any]) -> str:
    """'-7.26% [-10.53, -3.62]', the point in bold where the interval excludes 0."""
    point = fmt(e["point"], 2, True) + ("%" if e.get("unit", "").startswith("%") else "")
    point = point if e.get("within_noise") else f"**{point}**"
    return f"{point} [{fmt(e['lo'], 2, True)}, {fmt(e['hi'], 2, True)}]"


def _side_by_side(effects: list[dict]) -> str:
    """One row per comparison, one column per headline metric."""
    columns: dict[str, str] = {}
    rows: dict[str, dict[str, str]] = {}
    for e in effects:
        if e["metric"] not in _IMPLEMENTATION_METRICS:
            continue
        unit = "%" if e.get("unit", "").startswith("%") else "pts"
        columns[e["metric"]] = f"{label(e['metric'])} ({unit})"
        rows.setdefault(_comparison_label(e), {})[columns[e["metric"]]] = _effect_cell(e)
    ordered = [columns[m] for m in _IMPLEMENTATION_METRICS if m in columns]
    return md_table([{"comparison (a vs b)": k, **v} for k, v in rows.items()], ["comparison (a vs b)", *ordered])


def implementations_md(M: Mapping[str, Any]) -> str:
    """llm-compressor next to AutoAWQ (quantize.backends): the calibration-source effect within each
    implementation, the implementation effect and the assistant-only loss mask, side by side; a
    sentence for each effect whose interval excludes 0; every metric in a second table."""
    effects = M["03_evaluate"].get("calibration_effects") or []
    impl = [e for e in effects if e.get("kind") in ("implementation", "loss mask")]
    if not impl:
        return ""
    ci = ci_level(M)
    autoawq = calibration_effects(M, "in_domain", "generic")  # stated above; here for the side by side
    within = calibration_effects(M, "in_domain/llmc", "generic/llmc")
    rows = [
        {
            "comparison": f"{e['a']} vs {e['b']}",
            "kind": e.get("kind", "calibration source"),
            "metric": e["metric"],
            "effect (a - b)": f"{fmt(e['point'], 2, True)} {e.get('unit', '')}",
            ci: f"[{fmt(e['lo'], 2, True)}, {fmt(e['hi'], 2, True)}]",
            "reading": "within noise" if e.get("within_noise") else "CI excludes 0",
        }
        for e in within + impl
    ]
    shown = [e for e in autoawq + within + impl if e["metric"] in _IMPLEMENTATION_METRICS]
    real = [e for e in shown if not e.get("within_noise")]
    key = [implementation_sentence(e, ci) if e in impl else effect_sentence(e, ci) for e in real if e not in autoawq]
    rest = "Every other effect in the table is" if real else "Every effect in the table is"
    return "\n".join(
        [
            "### One algorithm, two implementations: llm-compressor vs AutoAWQ",
            "",
            "The same calibration sets, bits, group size and zero point through llm-compressor's `AWQModifier` "
            "(`/llmc` in a checkpoint group's name; `/llmc-asst`: the assistant's tokens alone in AWQ's "
            "objective). Does the calibration effect hold in both tools, and do the tools differ on the same set?",
            "",
            _side_by_side(shown),
            "",
            f"Effect = a minus b, mean over draws, with its {ci}; **bold**: the interval excludes 0. "
            "Implementation and loss-mask effects pair the draws (the same set under both).",
            "",
            *(f"- {s}" for s in key),
            f"- {rest} within noise (its interval includes 0).",
            "",
            "Every metric:",
            "",
            md_table(rows),
            "",
        ]
    )


def lm_eval_md(e3: Mapping[str, Any]) -> list[str]:
    """lm-eval-harness accuracy next to the study's own scorer, per model and task."""
    res = e3.get("lm_eval") or {}
    rows = [
        {
            "model": model,
            "task": task,
            "lm-eval acc": fmt(r.get("acc"), 3),
            "study acc": fmt(r.get("study_acc"), 3),
            "items judged alike": f"{r.get('agree_items', 'n/a')} / {r.get('n_items', 'n/a')}",
            "max |log-lik diff| (nats)": fmt(r.get("max_abs_ll_diff"), 5),
        }
        for model, tasks in res.items()
        for task, r in tasks.items()
    ]
    if not rows:
        return []
    return [
        '<div id="lm-eval">',
        "",
        "### lm-eval-harness on the same items",
        "",
        "The study's task items exported as local lm-eval multiple-choice tasks and scored by lm-eval-harness on the "
        "same models: the two scorers should judge every item alike (log-likelihood differences come from "
        "batching and, in 16-bit evaluation, rounding).",
        "",
        md_table(rows),
        "",
        "</div>",
    ]


def flips_md(e3: Mapping[str, Any], ci: str) -> list[str]:
    """Flip rates per checkpoint and task: answers whose correctness changed against the baseline."""
    rows = [
        {
            "checkpoint": f["checkpoint"],
            "task": f["task"],
            "accuracy change (pts)": fmt(f.get("accuracy change (pts)"), 1, True),
            "flip rate (%)": fmt(f.get("flip rate (%)"), 1),
            ci: f"[{fmt(f.get('CI low'), 1)}, {fmt(f.get('CI high'), 1)}]",
            "right->wrong": f.get("right->wrong"),
            "wrong->right": f.get("wrong->right"),
            "items": f.get("items"),
        }
        for f in e3.get("flips") or []
    ]
    if not rows:
        return []
    return [
        '<div id="flips">',
        "",
        "### Flips: answers that change",
        "",
        "Equal accuracy can hide many changed answers (Dutta et al., NeurIPS 2024). The flip rate is the share "
        f"of task items whose correctness differs from the baseline's, with a paired {ci} over items.",
        "",
        md_table(rows),
        "",
        "</div>",
    ]


def reference_tasks_md(e3: Mapping[str, Any]) -> list[str]:
    """Reference tasks: the baseline against chance, outside the budget."""
    rows = [
        {
            "task": t,
            "items": v.get("items"),
            "baseline accuracy (%)": fmt(v.get("baseline accuracy (%)"), 1),
            "chance (%)": fmt(v.get("chance (%)"), 1),
            "above chance (pts, 95% CI)": v.get("above chance (pts, 95% CI)"),
        }
        for t, v in (e3.get("reference_tasks") or {}).items()
    ]
    if not rows:
        return []
    return [
        '<div id="reference-tasks">',
        "",
        "### Reference tasks (baseline only, outside the budget)",
        "",
        "Scored on the baseline alone against chance: a task the model cannot do at full precision cannot "
        "show what quantization does to it.",
        "",
        md_table(rows),
        "",
        "</div>",
    ]


def flip_cells(M: Mapping[str, Any]) -> Cells:
    """Flips, reference tasks and lm-eval-harness, as one markdown cell (none when the run has none)."""
    e3 = M["03_evaluate"]
    lines = flips_md(e3, ci_level(M)) + reference_tasks_md(e3) + lm_eval_md(e3)
    return [("markdown", "\n".join(lines))] if lines else []


def matrix_cells(M: Mapping[str, Any]) -> Cells:
    """The cross-domain matrix with its heat map, and the per-category damage figure."""
    e3 = M["03_evaluate"]
    cells: Cells = []
    mat = e3.get("cross_domain_matrix") or {}
    if mat:
        cols = list(dict.fromkeys(c for row in mat.values() for c in row))
        m_rows = [
            {"calibration source": src, **{c: fmt(vals.get(c), 2, True) for c in cols}} for src, vals in mat.items()
        ]
        cells.append(
            (
                "markdown",
                "\n".join(
                    [
                        "### Cross-domain matrix",
                        "",
                        "Change against the baseline by calibration source (mean over draws): perplexity in %, accuracy in points.",
                        "",
                        md_table(m_rows),
                    ]
                ),
            )
        )
        cells.append(figure_cell("matrix"))
    if e3.get("category_damage"):
        cells.append(figure_cell("category_damage"))
    return cells


def flagged_rtn_md(M: Mapping[str, Any]) -> str:
    """The callout of AWQ checkpoints worse than round-to-nearest on their own calibration domain."""
    q = M["02_quantize"]
    flagged = q.get("worse_than_rtn_on_own_domain") or []
    if not flagged:
        return (
            '<div id="flagged-rtn" class="callout callout-ok">\n\n'
            "No AWQ checkpoint is worse than round-to-nearest on its own calibration domain "
            "(step 02 sanity check).\n\n</div>"
        )
    ci = ci_level(M)
    by = {s["name"]: s for s in q.get("sanity") or []}
    items = []
    for n in flagged:
        s = by.get(n, {})
        parts = [
            f"{d}: {fmt(v['point'], 3, True)}% perplexity vs RTN ({ci} [{fmt(v['lo'], 3, True)}, "
            f"{fmt(v['hi'], 3, True)}])"
            for d in s.get("worse_domains") or []
            if (v := s.get(f"vs_rtn_pct_{d}"))
        ]
        items.append(f"<li><code>{html.escape(n)}</code>: {html.escape('; '.join(parts) or 'worse than RTN')}</li>")
    return "\n".join(
        [
            '<div id="flagged-rtn" class="callout callout-warn">',
            "",
            f"<strong>&#9888; {len(flagged)} AWQ checkpoint(s) worse than round-to-nearest on their own calibration "
            "domain</strong> (step 02 sanity check; AWQ's search should never lose to no search on the domain it saw):",
            "<ul>",
            *items,
            "</ul>",
            "</div>",
        ]
    )


def outcome_cells(M: Mapping[str, Any]) -> Cells:
    """*Outcome*: quality vs budget, calibration effects, flips, the matrix, AWQ vs RTN, speed, verdict."""
    cells: Cells = [("markdown", budget_md(M)), figure_cell("budget"), ("markdown", effects_md(M))]
    if M["03_evaluate"].get("calibration_effects"):
        cells.append(figure_cell("effects"))
    cells += flip_cells(M)
    cells += matrix_cells(M)
    cells.append(("markdown", flagged_rtn_md(M)))
    cells += speed_cells(M)
    cells += verdict_cells(M)
    return cells


# =========================================================================== outcome: speed, memory, cost
def speedup_rows(r: Mapping[str, Any]) -> list[dict]:
    """A model's speed-ups per quantized path and shape, with the range the repeats allow."""
    return [
        {
            "path": s["path"],
            "batch": s.get("batch"),
            "context": s.get("context"),
            "scope": s.get("scope", ""),
            "decode speed-up": f"{fmt(s.get('decode_speedup'))}x [{fmt(s.get('decode_speedup_low'))}, "
            f"{fmt(s.get('decode_speedup_high'))}]",
            "prefill speed-up": f"{fmt(s.get('prefill_speedup'))}x [{fmt(s.get('prefill_speedup_low'))}, "
            f"{fmt(s.get('prefill_speedup_high'))}]",
        }
        for s in speed_rows(r)
    ]


def memory_rows(r: Mapping[str, Any]) -> list[dict]:
    """A model's weight memory per path."""
    return [
        {
            "path": m["path"],
            "weights, whole model": gb(m.get("weight_bytes_full_model")),
            "weights on disk": gb(m.get("weight_bytes_on_disk")),
            "quantized linears vs fp16": f"{fmt(m.get('quantized_linear_ratio_vs_fp16'))}x"
            if m.get("quantized_linear_ratio_vs_fp16") is not None
            else "n/a",
            "peak RSS while timing (MB)": fmt(m.get("peak_rss_run_mb"), 0),
        }
        for m in r.get("memory") or []
    ]


def fleet_rows(r: Mapping[str, Any]) -> list[dict]:
    """A model's fleet estimate per path: devices at peak and cost."""
    return [
        {
            "path": f["path"],
            "batch": f.get("batch_size"),
            "decode tokens/s/device": fmt(f.get("decode_tokens_per_s_per_device")),
            "devices at peak": f.get("devices_at_peak"),
            "bound by": f.get("bound_by"),
            "cost/hour": money(f.get("cost_per_hour")),
            "cost per 1,000 conversations": money(f.get("cost_per_1000_conversations")),
        }
        for f in r.get("fleet") or []
    ]


def agreement_rows(r: Mapping[str, Any]) -> list[dict]:
    """Each path's logits against the dequantized checkpoint and against the timed baseline."""
    return [
        {
            "path": a["path"],
            "logits RMS diff / RMS, vs dequantized weights": fmt(a.get("rel_rms_diff"), 4),
            "top-1 agreement": fmt(a.get("top1_agreement"), 3),
            "vs the timed baseline": fmt(a.get("rel_rms_diff_vs_baseline"), 4),
            "loaded by": a.get("loader", ""),
        }
        for a in r.get("agreement") or []
    ]


def model_speed_lines(name: str, r: Mapping[str, Any]) -> list[str]:
    """One benchmarked model's speed, memory, fleet and agreement tables, and its notes."""
    hw = (r.get("env") or {}).get("hardware_label", "")
    f_rows, a_rows = fleet_rows(r), agreement_rows(r)
    lines = [
        f"**{name} model** on {hw} (speed-up = path tokens/s / baseline tokens/s, median; brackets: "
        "range the repeats allow):",
        "",
        md_table(speedup_rows(r)),
        "",
        md_table(memory_rows(r)),
        "",
        md_table(f_rows) if f_rows else "_no fleet estimate_",
        "",
    ]
    if a_rows:
        lines += [
            "Each path's logits on one fixed prompt against the dequantized checkpoint (the weights its "
            "kernel holds: a path that computes the wrong thing shows a difference near 1) and against the "
            "timed baseline (which adds the quantization error when that is the original model):",
            "",
            md_table(a_rows),
            "",
        ]
    for note in r.get("notes") or []:
        lines.append(f"- note: {md_cell(note)}")
    lines.append("")
    return lines


def speed_cells(M: Mapping[str, Any]) -> Cells:
    """Speed, memory and cost (step 04): the trap callout, every model's tables, the targets, two figures."""
    lines = ['<div id="speed">', ""]
    for name, r in bench_models(M).items():
        lines += model_speed_lines(name, r)
    t_rows = [
        {
            "target": k,
            "measured": fmt(v.get("measured")),
            "target value": fmt(v.get("target")),
            "met": fmt(v.get("met")),
            "where": v.get("where", ""),
        }
        for k, v in (M["04_benchmark"].get("targets") or {}).items()
    ]
    lines += ["Benchmark targets:", "", md_table(t_rows) if t_rows else "_none_", "", "</div>"]
    return [
        ("markdown", '<div id="speed-cost"></div>\n\n### Speed, memory and cost (step 04)'),
        ("markdown", trap_callout(M)),
        ("markdown", "\n".join(lines)),
        figure_cell("speedups"),
        figure_cell("memory_cost"),
    ]


def _trap_item(model: str, path: str, ts: list[dict]) -> str:
    """One flagged path of the trap callout: its slow measurements at the widest scope recorded."""
    scopes = {t.get("scope") for t in ts}
    pick = "full_model" if "full_model" in scopes else ("measured" if "measured" in scopes else None)
    shown = [t for t in ts if t.get("scope") == pick] or ts
    parts = [
        f"{html.escape(str(t.get('phase')))} {fmt(t.get('speedup'))}x (batch {t.get('batch')}, context "
        f"{t.get('context')}{', clearly slower' if t.get('clear') else ', within noise'})"
        for t in shown
    ]
    scope_txt = f" [scope {pick}]" if pick else ""
    return (
        f"<li><strong>{html.escape(model)} / {html.escape(path)}</strong>{scope_txt}: "
        f"{'; '.join(parts)}<br><small>{html.escape(str(shown[0].get('explanation', '')))}</small></li>"
    )


def trap_callout(M: Mapping[str, Any]) -> str:
    """The trap flag: a red callout naming every quantized path that ran slower than the baseline."""
    traps = M["04_benchmark"].get("traps") or []
    if not traps:
        return (
            '<div id="traps" class="callout callout-ok">\n\n<strong>Trap check:</strong> no quantized path was '
            "slower than the float baseline at any measured shape.\n\n</div>"
        )
    groups: dict[tuple[str, str], list[dict]] = {}
    for t in traps:
        groups.setdefault((str(t.get("model", "")), str(t.get("path"))), []).append(t)
    items = [_trap_item(model, path, ts) for (model, path), ts in groups.items()]
    detail = "".join(
        f"<li>{html.escape(str(t.get('model', '')))}: {html.escape(str(t.get('explanation', '')))}</li>" for t in traps
    )
    return "\n".join(
        [
            '<div id="traps" class="callout callout-danger">',
            "",
            f"<strong>&#9888; TRAP: quantized paths SLOWER than the float baseline</strong> "
            f"({len(traps)} flagged measurement(s) on {len(groups)} path(s)). Serving a flagged path costs more than the "
            "baseline, not less:",
            "<ul>",
            *items,
            "</ul>",
            f"<details><summary>all {len(traps)} flags (every scope)</summary><ul>{detail}</ul></details>",
            "</div>",
        ]
    )


# =========================================================================== outcome: the rollout verdict
def _unit_value(g: Mapping[str, Any], x: Any, sign: bool = False) -> str:
    """A difference, bound or margin of metric ``g`` in its display unit (points or seconds)."""
    v = num(x)
    if v is None:
        return "n/a"
    if g.get("unit") == "points":
        return f"{fmt(100 * v, 2, sign)} points"
    return f"{fmt(v, 3, sign)} s"


def _points(x: Any, sign: bool = False) -> str:
    """A share as percentage points ('n/a' when missing)."""
    v = num(x)
    return "n/a" if v is None else f"{fmt(100 * v, 2, sign)} points"


def rollout_summary_rows(s: Mapping[str, Any]) -> list[dict]:
    """A rollout scenario in one table: decision, data, looks, margin, counts, final bounds, SRM."""
    conv = s.get("conversations") or {}
    srm = s.get("srm") or []
    failed = [x for x in srm if not x.get("ok")]
    guards = [g for g in s.get("guardrails") or [] if g.get("metric") != "satisfaction"]
    stopped = s.get("stopped_at_look")
    margin = fmt(100 * num(s.get("margin")), 2) if num(s.get("margin")) is not None else "n/a"
    rows = [
        {"quantity": "decision", "value": str(s.get("decision", "n/a")).upper()},
        {
            "quantity": "data",
            "value": "SIMULATED logs (seeded simulator)" if s.get("simulated") else "real rollout logs",
        },
        {"quantity": "scenario", "value": s.get("scenario") or "n/a"},
        {"quantity": "stopped at look", "value": stopped if stopped is not None else "not stopped (ran every look)"},
        {"quantity": "looks", "value": s.get("n_looks")},
        {"quantity": "method", "value": s.get("method")},
        {"quantity": "non-inferiority margin", "value": f"{margin} satisfaction points"},
        {"quantity": "alpha", "value": fmt(s.get("alpha"), 3)},
        {
            "quantity": "conversations (baseline / quantized)",
            "value": f"{fmt(conv.get('baseline'))} / {fmt(conv.get('quantized'))}",
        },
        {"quantity": "final difference, quantized - baseline", "value": _points(s.get("final_difference"), True)},
        {"quantity": "final one-sided lower bound (NI test)", "value": _points(s.get("final_ni_lower"), True)},
    ]
    if guards:
        rows.append(
            {
                "quantity": "guardrails",
                "value": "; ".join(
                    f"{g['metric']} (margin {_unit_value(g, g.get('margin'))}, {'higher' if g.get('higher_is_better') else 'lower'} "
                    f"is better)"
                    for g in guards
                ),
            }
        )
    if srm:
        rows.append(
            {
                "quantity": f"SRM check (chi-square, p < {fmt(s.get('srm_alpha'), 3)} stops)",
                "value": (
                    f"failed at look(s) {', '.join(str(x['look']) for x in failed)}: do not trust those looks"
                    if failed
                    else f"passed at every look (smallest p = {fmt(min(x['p_value'] for x in srm), 4)})"
                ),
            }
        )
    lat = s.get("latency") or {}
    if lat.get("note") and s.get("simulated"):
        rows.append({"quantity": "simulated latency", "value": lat["note"]})
    return rows


def guardrail_rows(s: Mapping[str, Any]) -> list[dict]:
    """Satisfaction and each guardrail at the deciding look: means, difference, bound, verdicts."""
    rows = []
    for g in s.get("guardrails") or []:
        rows.append(
            {
                "metric": g["metric"],
                "direction": "higher is better" if g.get("higher_is_better") else "lower is better",
                "margin": _unit_value(g, g.get("margin")),
                "baseline / quantized": f"{fmt(g.get('final_mean_baseline'), 3)} / {fmt(g.get('final_mean_quantized'), 3)}",
                "difference": _unit_value(g, g.get("final_difference"), True),
                "one-sided bound (NI test)": _unit_value(g, g.get("final_ni_bound"), True),
                "non-inferior": fmt(g.get("final_non_inferior")),
                "significantly worse": fmt(g.get("final_significantly_worse")),
            }
        )
    return rows


def srm_rows(s: Mapping[str, Any]) -> list[dict]:
    """The sample-ratio check per look."""
    return [
        {
            "look": x["look"],
            "observed quantized share": fmt(x.get("observed_share"), 4),
            "planned quantized share": fmt(x.get("planned_share"), 4),
            "p-value": f"{num(x.get('p_value')) or 0:.2g}",
            "verdict": "ok" if x.get("ok") else "SRM: do not trust this look",
        }
        for x in s.get("srm") or []
    ]


def power_rows(plan: Mapping[str, Any]) -> list[dict]:
    """The power plan per metric: days needed against days scheduled."""
    return [
        {
            "metric": r["metric"],
            "margin": _unit_value(r, r.get("margin")),
            "baseline": fmt(r.get("baseline"), 3),
            "sd": fmt(r.get("sd"), 3),
            "power target (each)": f"{100 * (num(r.get('power_target')) or 0):.1f}%",
            "days needed": r.get("days_needed") if r.get("days_needed") is not None else "beyond the horizon",
            "days scheduled": r.get("days_scheduled"),
            "power at the end of the schedule": f"{100 * (num(r.get('power_at_schedule_end')) or 0):.1f}%",
        }
        for r in plan.get("metrics") or []
    ]


def power_md(plan: Mapping[str, Any] | None) -> list[str]:
    """The power plan before launch: the sentence, the table, and a warning when underpowered."""
    if not plan:
        return ["**Power plan:** not recorded (this run's step 05 predates the power plan; re-run step 05).", ""]
    needed = plan.get("days_needed")
    head = (
        f"**Power plan before launch** ({plan.get('K')} metrics; the ship rule needs all of them, so beta is split: "
        f"each test is planned at {100 * (num(plan.get('power_per_metric')) or 0):.1f}% power for "
        f"{100 * (num(plan.get('power')) or 0):.0f}% overall, one-sided alpha {fmt(plan.get('alpha_one_sided'), 3)}, "
        f"{fmt(plan.get('daily_conversations'))} conversations/day): **{needed if needed is not None else 'more than the horizon of'} "
        f"day(s) needed, {plan.get('days_scheduled')} scheduled**. A {plan.get('note', 'fixed-horizon approximation')}."
    )
    out = [head, "", md_table(power_rows(plan)), ""]
    if plan.get("warning"):
        out += [
            f'<div class="callout callout-danger"><strong>&#9888; {html.escape(str(plan["warning"]))}</strong></div>',
            "",
        ]
    return out


def budget_changed_md(manifest: Mapping[str, Any]) -> list[str]:
    """A red callout when the quality budget changed after results were seen (else nothing)."""
    if not budget_changed_after_results(manifest):
        return []
    history = manifest.get("budget_history") or []

    def budget_text(entry: Mapping[str, Any]) -> str:
        return "; ".join(f"{b['metric']} {b['max_drop']} {b['unit']}" for b in entry.get("budget") or [])

    return [
        '<div class="callout callout-danger"><strong>&#9888; The quality budget was changed after results '
        "were seen in this run folder.</strong> Verdicts below use the newer budget.<br>"
        f"First declared ({html.escape(str(history[0].get('recorded')))}): {html.escape(budget_text(history[0]))}<br>"
        f"Now ({html.escape(str(history[-1].get('recorded')))}): {html.escape(budget_text(history[-1]))}</div>",
        "",
    ]


DECISION_CLASS = {"cut over": "callout-ok", "roll back": "callout-danger", "stop (SRM)": "callout-danger"}
DECISION_MEANING = {
    "cut over": "every metric non-inferior at the final stage",
    "roll back": "a metric significantly worse than baseline",
    "hold": "the schedule ended without cut over or roll back",
    "stop (SRM)": "sample-ratio mismatch: do not trust the looks from there on",
    "continue": "the rollout has not reached its last planned look",
}


def decision_callout(main: Mapping[str, Any], cand: Mapping[str, Any]) -> str:
    """The rollout decision for the candidate, coloured by what it means (SIMULATED when it is)."""
    sim = bool(main.get("simulated"))
    decision = str(main.get("decision", "n/a"))
    meaning = DECISION_MEANING.get(decision)
    sim_label = '<span class="sim-label">SIMULATED</span> ' if sim else ""
    return (
        f'<div class="callout {DECISION_CLASS.get(decision, "callout-info")}"><strong>{sim_label}Rollout '
        f"decision: {html.escape(decision.upper())}</strong> for <code>{html.escape(str(cand.get('checkpoint', 'n/a')))}</code>"
        + (f" ({html.escape(meaning)})" if meaning else "")
        + (" &mdash; these are simulated logs, not real users." if sim else "")
        + "</div>"
    )


def rollout_tables_md(main: Mapping[str, Any]) -> list[str]:
    """The guardrails at the deciding look and the sample-ratio check per look, when recorded."""
    lines: list[str] = []
    if main.get("guardrails"):
        look = (main["guardrails"][0].get("deciding_look") if main["guardrails"] else None) or main.get("n_looks")
        lines += [
            f"**{'SIMULATED ' if main.get('simulated') else ''}Satisfaction and guardrails** at look {look}, "
            "where the decision was taken (the stop, else the last look; differences are quantized - baseline):",
            "",
            md_table(guardrail_rows(main)),
            "",
        ]
    if main.get("srm"):
        lines += [
            f"**Sample-ratio check per look** (cumulative counts against the schedule's served shares, "
            f"chi-square; p < {fmt(main.get('srm_alpha'), 3)} stops the rollout):",
            "",
            md_table(srm_rows(main)),
            "",
        ]
    return lines


def scenario_checks_md(worse: Mapping[str, Any] | None, broken: Mapping[str, Any] | None) -> list[str]:
    """Whether the 'worse' scenario rolls back and the broken-assignment one stops on the SRM check."""
    lines: list[str] = []
    if worse:
        lines += [
            f"Check of the rollback trigger: the {'SIMULATED ' if worse.get('simulated') else ''}'worse' scenario "
            f"ends in **{str(worse.get('decision', 'n/a')).upper()}**"
            + (f" (stopped at look {worse.get('stopped_at_look')})" if worse.get("stopped_at_look") is not None else "")
            + ".",
            "",
        ]
    if broken:
        lines += [
            f"Check of the SRM stop: the {'SIMULATED ' if broken.get('simulated') else ''}'broken_assignment' "
            f"scenario (a logging bug loses part of the quantized arm) ends in **{str(broken.get('decision', 'n/a')).upper()}**"
            + (f" at look {broken.get('stopped_at_look')}" if broken.get("stopped_at_look") is not None else "")
            + f": {srm_check_text(broken)}.",
            "",
        ]
    return lines


def verdict_md(M: Mapping[str, Any]) -> str:
    """The rollout verdict (step 05): decision, candidate, rule, power plan, guardrails, SRM, checks."""
    r5 = M["05_rollout_analysis"]
    cand = r5.get("candidate") or {}
    main = r5.get("rollout") or {}
    lines = [
        '<div id="verdict">',
        "",
        "### Rollout verdict (step 05)",
        "",
        *budget_changed_md(M["manifest"]),
        decision_callout(main, cand),
        "",
        f"Candidate `{cand.get('checkpoint', 'n/a')}`: measured task-quality change "
        f"{fmt(cand.get('quality_change_points'), 2, True)} points ({', '.join(cand.get('tasks') or [])}); "
        f"passed the offline budget: **{fmt(cand.get('passed_offline_budget'))}**.",
        "",
        candidate_md(M),
        "",
        "Decision rule: cut over only when satisfaction and every guardrail are non-inferior at the final stage; "
        "roll back when any is significantly worse; stop when the sample-ratio check fails; hold when the "
        "schedule ends first.",
        "",
        md_table(rollout_summary_rows(main)),
        "",
        *power_md(r5.get("power_plan") or main.get("power_plan")),
        *rollout_tables_md(main),
        *scenario_checks_md(r5.get("worse_scenario"), r5.get("broken_assignment_scenario")),
        "</div>",
    ]
    return "\n".join(lines)


def verdict_cells(M: Mapping[str, Any]) -> Cells:
    """The rollout verdict and its figures: the rollout, guardrails, power plan and the check scenarios."""
    r5 = M["05_rollout_analysis"]
    main = r5.get("rollout") or {}
    broken = r5.get("broken_assignment_scenario")
    cells = [("markdown", verdict_md(M)), figure_cell("rollout", "fig_rollout(M, 'rollout')")]
    if main.get("guardrails"):
        cells.append(figure_cell("guardrails", "fig_guardrails(M, 'rollout')"))
    if (r5.get("power_plan") or {}).get("curve"):
        cells.append(figure_cell("power_plan", "fig_power_plan(M)"))
    if r5.get("worse_scenario"):
        cells.append(figure_cell("worse_scenario", "fig_rollout(M, 'worse_scenario')"))
    if broken and broken.get("guardrails"):
        cells.append(figure_cell("broken_assignment_scenario", "fig_guardrails(M, 'broken_assignment_scenario')"))
    return cells


def candidate_row(role: str, c: Mapping[str, Any], ci: str) -> dict:
    """A checkpoint as the candidate rule saw it: calibration, worst case, point, limit, pass."""
    unit = c.get("unit", "")
    return {
        "role": role,
        "checkpoint": f"`{c.get('checkpoint')}`",
        "calibration": c.get("calibration") or "none",
        "draw": "" if c.get("draw") is None else c["draw"],
        f"worst case ({ci}, worse end)": f"{fmt(c.get('worst_case'), 2, True)} {unit}",
        "point estimate": f"{fmt(c.get('point'), 2, True)} {unit}",
        "limit": f"{fmt(c.get('limit'))} {unit}",
        "passes every offline line": fmt(c.get("passed_offline_budget")),
    }


def candidate_md(M: Mapping[str, Any]) -> str:
    """How the shipped candidate was chosen: the rule from params, the candidate and the runner-up."""
    cand = M["05_rollout_analysis"].get("candidate") or {}
    if not cand.get("rule"):
        return (
            '<div id="candidate">\n\n**How the candidate was chosen:** not recorded (this run\'s step 05 predates '
            "`rollout.candidate_rule`; re-run step 05 to record the rule and the runner-up).\n\n</div>"
        )
    ci = ci_level(M)
    rows = [candidate_row("shipped candidate", cand, ci)]
    if cand.get("runner_up"):
        rows.append(candidate_row("runner-up", cand["runner_up"], ci))
    fails = (
        ""
        if cand.get("passed_offline_budget")
        else "**No checkpoint passes every offline budget line: the candidate is the best one overall and FAILS the "
        "offline budget.**"
    )
    return "\n".join(
        [
            '<div id="candidate">',
            "",
            f"**How the candidate was chosen** (`rollout.candidate_rule: {cand['rule']}`): "
            f"{cand.get('rule_text', '')}.",
            "",
            md_table(rows),
            "",
            fails,
            "",
            "</div>",
        ]
    )
