"""The report's sections, in page order, as notebook cells generated from a run's metrics.

Each section function takes ``M`` (the dict :func:`quantstudy.report.build.load_metrics`
returns) and gives markdown (or ``[(kind, source)]`` cells, where figures sit between the
text); the ``*_rows`` helpers give the tables' data and :func:`checklist` the checklist's.
The report is a notebook, executed so that its figure cells draw, then rendered by nbconvert
with ``templates/report.html.j2``: markdown is the page's text, raw HTML only for the
callouts, the anchors (``<div id=...>``) and the checklist. Every value from the run that
goes into raw HTML is escaped (:func:`html.escape`); markdown tables escape their cells.

Here: the title, table of contents, run stamp with the steps, *Situation*, *Decision*,
*Execution*, *Lessons* and the *Process checklist*; *Outcome* is in :mod:`quantstudy.report.outcome`.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Mapping

import yaml

from quantstudy.pipeline.manifest import DONE_STATUSES, budget_changed_after_results
from quantstudy.report.formatting import fmt, gb, mb, md_table, money, num
from quantstudy.report.lookups import (
    METRICS,
    SOURCE_LABELS,
    STEP_NAMES,
    bench_models,
    calibration_effects,
    ci_level,
    fleet_row,
    label,
    lower_is_better,
    main_bench,
    memory_row,
    older_steps,
    speed_rows,
)

Cells = list[tuple[str, str]]  # [("markdown" | "code", source)]


def figure_cell(name: str, call: str | None = None) -> tuple[str, str]:
    """The code cell that draws figure ``name`` with its caption (``R`` is quantstudy.report.figures)."""
    return "code", f'R.show(R.{call or f"fig_{name}(M)"}, R.CAPTIONS["{name}"])'


def effect_sentence(e: Mapping[str, Any], ci: str) -> str:
    """A calibration-source effect in one sentence: the change, its CI, and whether it is better."""
    unit = e.get("unit", "")
    shown = "%" if unit.startswith("%") else f" {unit}"
    what = label(e["metric"])
    a = SOURCE_LABELS.get(e["a"], e["a"])
    b = SOURCE_LABELS.get(e["b"], e["b"]).lower() if e["b"] != "RTN" else SOURCE_LABELS["RTN"]
    a = a[0].upper() + a[1:]
    text = (
        f"{a} calibration changed {what} by {fmt(e['point'], 2, True)}{shown} "
        f"({ci} [{fmt(e['lo'], 2, True)}, {fmt(e['hi'], 2, True)}], draws {e['draws'][0]} vs {e['draws'][1]}) "
        + (f"against {b} (no calibration)" if e["b"] == "RTN" else f"against {b} calibration")
    )
    if e.get("within_noise"):
        return text + ": within noise (the interval includes 0)."
    better = (e["point"] < 0) == lower_is_better(e["metric"], unit)
    return text + f": {'better' if better else 'worse'}, and the interval excludes 0."


# =========================================================================== title, contents, stamp
def title(M: Mapping[str, Any], run_dir: Path) -> str:
    """The page's heading, naming the run."""
    return f"# Quantization study report: run `{M['manifest'].get('run_id') or run_dir.name}`"


def toc(M: Mapping[str, Any]) -> str:
    """The table of contents (flips and reference tasks only when the run has them)."""
    e3 = M["03_evaluate"]
    entries = [
        ("answer", "The answer"),
        ("stamp", "Run stamp"),
        ("steps", "Steps and notebooks"),
        ("situation", "Situation"),
        ("decision", "Decision"),
        ("execution", "Execution"),
        ("budget", "Quality vs budget"),
        ("effects", "Calibration effects"),
        *([("flips", "Flips")] if e3.get("flips") else []),
        *([("reference-tasks", "Reference tasks")] if e3.get("reference_tasks") else []),
        ("flagged-rtn", "AWQ vs round-to-nearest"),
        ("speed-cost", "Speed, memory, cost"),
        ("verdict", "Rollout verdict"),
        ("candidate", "Candidate rule"),
        ("lessons", "Lessons"),
        ("checklist", "Process checklist"),
    ]
    items = "".join(f'<li><a href="#{a}">{t}</a></li>' for a, t in entries)
    return f'<nav id="toc" class="toc"><strong>Contents</strong><ol>{items}</ol></nav>'


def params_summary_rows(p: Mapping[str, Any]) -> list[dict]:
    """One row per params section: the values that shape the run."""

    def g(sec: str, key: str) -> Any:
        return (p.get(sec) or {}).get(key)

    summary = [
        ("study", f"name {g('study', 'name')}, seed {g('study', 'seed')}, device {g('study', 'device')}"),
        ("model", f"{g('model', 'path')} ({g('model', 'source')}, {g('model', 'dtype')})"),
        (
            "calibration",
            f"sources {g('calibration', 'sources')}, {g('calibration', 'draws')} draw(s), "
            f"{g('calibration', 'n_samples')} samples x {g('calibration', 'max_seq_len')} tokens, "
            f"scrub {g('calibration', 'scrub')}",
        ),
        (
            "quantize",
            f"bits {g('quantize', 'bits')}, group size {g('quantize', 'group_size')}, zero point "
            f"{g('quantize', 'zero_point')}, {g('quantize', 'version')}, RTN reference "
            f"{g('quantize', 'rtn_reference')}, compare search settings "
            f"{g('quantize', 'compare_search_settings')}",
        ),
        (
            "evaluate",
            f"window {g('evaluate', 'window')}/stride {g('evaluate', 'stride')}, "
            f"{g('evaluate', 'max_eval_tokens')} tokens per domain, {g('evaluate', 'bootstrap_samples')} "
            f"bootstrap samples, confidence {g('evaluate', 'confidence')}",
        ),
        (
            "benchmark",
            f"paths {g('benchmark', 'paths')}, batches {g('benchmark', 'batch_sizes')}, contexts "
            f"{g('benchmark', 'context_lengths')}, hardware label '{g('benchmark', 'hardware_label')}'",
        ),
        (
            "rollout",
            f"stages {g('rollout', 'stages')}, {g('rollout', 'days_per_stage')} day(s) per stage, "
            f"{g('rollout', 'daily_conversations')} conversations/day, logs "
            f"{g('rollout', 'logs') or 'none (simulator)'}",
        ),
    ]
    return [{"section": k, "values": v} for k, v in summary]


def _notebook_links(rec: Mapping[str, Any], name: str, run_dir: Path) -> str:
    """The executed notebook as HTML (when rendered) with a small link to the .ipynb."""
    nb = rec.get("notebook") or f"notebooks/{name}.ipynb"
    page = str(Path(nb).with_suffix(".html"))
    if (run_dir / page).is_file():
        return f"[{name} (HTML)]({page}) <small>([.ipynb]({nb}))</small>"
    return f"[{nb}]({nb})"


def step_table_lines(man: Mapping[str, Any], run_dir: Path) -> list[str]:
    """The markdown rows of the steps table: status, duration, start, commit, notebook, metrics."""
    steps = man.get("steps") or {}
    older = older_steps(man)
    out = []
    for name in STEP_NAMES:
        rec = steps.get(name) or {}
        commit = rec.get("git_commit")
        computed = (f"`{str(commit)[:12]}`" + (" (dirty)" if rec.get("git_dirty") else "")) if commit else "n/a"
        if name in older:
            computed += " **older commit**"
        out.append(
            f"| {name} | {rec.get('status', 'n/a')} | {fmt(rec.get('duration_s'), 1)} | "
            f"{rec.get('start') or 'n/a'} | {computed} | {_notebook_links(rec, name, run_dir)} | "
            f"[{name}/{METRICS}]({name}/{METRICS}) |"
        )
    return out


def stamp(M: Mapping[str, Any], run_dir: Path) -> str:
    """The run stamp: id, commit, params, checklist count, and the steps with their notebooks."""
    man = M["manifest"]
    git = man.get("git") or {}
    dirty = git.get("dirty")
    sha_text = f"`{git.get('commit') or 'unknown'}`" + (
        " **(dirty: uncommitted changes)**" if dirty else " (clean)" if dirty is False else ""
    )
    older = older_steps(man)
    ticks = checklist(M, run_dir)
    return "\n".join(
        [
            '<div id="stamp">',
            "",
            "## Run stamp",
            "",
            f"- **Run id:** `{man.get('run_id') or run_dir.name}`",
            f"- **Git SHA:** {sha_text}",
            f"- **Params file:** `{man.get('params_file', 'n/a')}` (resolved copy: [params.yaml](params.yaml))",
            f"- **Created / updated:** {man.get('created', 'n/a')} / {man.get('updated', 'n/a')}",
            f"- **Python:** {man.get('python', 'n/a')} on {man.get('platform', 'n/a')}",
            f"- **Process checklist:** {sum(t for t, _, _ in ticks)}/{len(ticks)} ticked ([details](#checklist))",
            "",
            "**Params summary**",
            "",
            md_table(params_summary_rows(man.get("params") or {})),
            "",
            '<div id="steps">',
            "",
            "**Steps** (executed notebooks rendered to HTML with code and outputs, and metrics; relative to this run "
            "folder)",
            "",
            "| step | status | duration (s) | started | computed at commit | executed notebook | metrics |",
            "|---|---|---|---|---|---|---|",
            *step_table_lines(man, run_dir),
            "",
            (
                f"**{len(older)} step(s) were computed under an older commit than the one stamped above** "
                f"({', '.join(older)}): their library code hash matched, so their results were kept."
                if older
                else ""
            ),
            "",
            "</div>",
            "",
            "</div>",
        ]
    )


# =========================================================================== situation, decision
def situation_rows(M: Mapping[str, Any]) -> list[dict]:
    """The float baseline's footprint and cost (step 04's main model, and the demo model's weights)."""
    name, r = main_bench(M)
    mem = memory_row(r, "baseline") or {}
    fleet = fleet_row(r, "baseline") or {}
    demo = bench_models(M).get("demo") if name != "demo" else None
    weights = mem.get("weight_bytes_full_model")
    rows = [
        {"quantity": "weight bytes, whole model (in memory)", "value": f"{fmt(weights, 0)} B ({gb(weights)})"},
        {"quantity": "weight bytes on disk", "value": gb(mem.get("weight_bytes_on_disk"))},
        {
            "quantity": "decode throughput per device",
            "value": f"{fmt(fleet.get('decode_tokens_per_s_per_device'))} tokens/s (batch {fleet.get('batch_size', 'n/a')})",
        },
        {"quantity": "required throughput at peak", "value": f"{fmt(fleet.get('required_tokens_per_s'))} tokens/s"},
        {
            "quantity": "fleet devices at peak",
            "value": f"{fleet.get('devices_at_peak', 'n/a')} ({fleet.get('bound_by', 'n/a')}-bound)",
        },
        {"quantity": "fleet cost per hour", "value": money(fleet.get("cost_per_hour"))},
        {"quantity": "cost per 1,000 conversations", "value": money(fleet.get("cost_per_1000_conversations"))},
    ]
    if demo:
        dm = (memory_row(demo, "baseline") or {}).get("weight_bytes_full_model")
        rows.append(
            {
                "quantity": "demo model weight bytes (the one quantized for quality)",
                "value": f"{fmt(dm, 0)} B ({mb(dm)})",
            }
        )
    return rows


def situation(M: Mapping[str, Any]) -> str:
    """*Situation*: the float baseline as it serves today."""
    name, r = main_bench(M)
    fleet = fleet_row(r, "baseline") or {}
    hardware = fleet.get("hardware") or (r.get("env") or {}).get("hardware_label", "n/a")
    return "\n".join(
        [
            '<div id="situation">',
            "",
            "## Situation",
            "",
            f"The float baseline ({name} model, step 04) as it serves today, on **{hardware}**:",
            "",
            md_table(situation_rows(M)),
            "",
            "</div>",
        ]
    )


def decision(M: Mapping[str, Any]) -> str:
    """*Decision*: method, bits, group size, the candidate, and the quality budget as declared."""
    awq = [c for c in M["02_quantize"].get("checkpoints") or [] if c.get("method") == "awq"]
    bits = sorted({c.get("bits") for c in awq if c.get("bits") is not None})
    groups = sorted({c.get("group_size") for c in awq if c.get("group_size") is not None})
    zp = sorted({str(c.get("zero_point")) for c in awq})
    ver = sorted({str(c.get("version")) for c in awq})
    simulated = sorted({c.get("bits") for c in awq if c.get("simulated")})
    declared = M["03_evaluate"].get("budget_declared") or []
    cand = M["05_rollout_analysis"].get("candidate") or {}
    rows = [{k: v if isinstance(v, str) else json.dumps(v) for k, v in line.items()} for line in declared]
    return "\n".join(
        [
            '<div id="decision">',
            "",
            "## Decision",
            "",
            f"- **Method:** AWQ (activation-aware weight quantization, AutoAWQ), {len(awq)} AWQ checkpoint(s) built",
            f"- **Bits:** {', '.join(map(str, bits)) or 'n/a'}"
            + (f" (simulated, not packed: {simulated})" if simulated else ""),
            f"- **Group size:** {', '.join(map(str, groups)) or 'n/a'}; zero point {', '.join(zp)}; kernel layout {', '.join(ver)}",
            f"- **Rollout candidate** (step 05): `{cand.get('checkpoint', 'n/a')}`"
            + (f" (rule `{cand['rule']}`, [how it is chosen](#candidate))" if cand.get("rule") else ""),
            "",
            '<div id="budget-declared">',
            "",
            "**Quality budget as declared** (echoed unchanged from `03_evaluate/metrics.json` `budget_declared`; "
            "`max_drop` is the allowed degradation in `unit`):",
            "",
            md_table(rows, ["metric", "max_drop", "unit"]) if rows else "_no budget declared_",
            "",
            "```json",
            "[" + ",\n ".join(json.dumps(line) for line in declared) + "]",
            "```",
            "",
            "</div>",
            "",
            "</div>",
        ]
    )


# =========================================================================== execution
def calibration_set_rows(c: Mapping[str, Any]) -> list[dict]:
    """Step 01's calibration sets: source, draw, sizes, tokens kept by AutoAWQ, overlap with eval text."""
    return [
        {
            "set": s["name"],
            "source": s.get("source"),
            "draw": s.get("draw"),
            "samples": s.get("n_samples"),
            "texts": s.get("n_texts"),
            "texts split": s.get("texts_split"),
            "tokens drawn": fmt(s.get("tokens"), 0),
            "tokens kept by AutoAWQ": fmt(s.get("kept_by_autoawq"), 0),
            "kept (%)": fmt(100 * s["kept_by_autoawq"] / s["tokens"], 1)
            if num(s.get("kept_by_autoawq")) is not None and num(s.get("tokens"))
            else "n/a",
            "3-gram overlap (%)": fmt(100 * num((c.get("overlap_3gram") or {}).get(s["name"]) or 0), 1),
        }
        for s in c.get("sets") or []
    ]


def scrub_rows(scrub: Mapping[str, Any]) -> list[dict]:
    """Per PII type: spans scrubbed, instances planted (demo record), recall."""
    types = sorted(set(scrub.get("replaced_by_type") or {}) | set(scrub.get("planted_by_type") or {}))
    return [
        {
            "PII type": t,
            "scrubbed (replaced)": (scrub.get("replaced_by_type") or {}).get(t, 0),
            "planted (demo record)": (scrub.get("planted_by_type") or {}).get(t, "n/a"),
            "recall": fmt((scrub.get("recall_by_type") or {}).get(t), 4),
        }
        for t in types
    ]


def _scrub_note(scrub: Mapping[str, Any]) -> str:
    total = sum((scrub.get("replaced_by_type") or {}).values())
    if scrub.get("scored"):
        return (
            f"{total} PII spans scrubbed from the in-domain calibration pool; recall measured against "
            f"the planted record: {scrub.get('n_survivors', 0)} planted instance(s) survived."
        )
    return f"{total} PII spans scrubbed; no planted-PII record, so recall was not measured."


def independent_pii_md(indep: Mapping[str, Any] | None) -> str:
    """Scrubber recall on hand-labelled sentences the demo generator did not write."""
    if not indep:
        return ""
    types = list(dict.fromkeys(t for res in indep.values() for t in (res.get("by_type") or {})))
    rows = []
    for t in types:
        row: dict[str, Any] = {"PII type": t}
        for name, res in indep.items():
            r = (res.get("by_type") or {}).get(t) or {}
            row[f"{name}: recall (n)"] = f"{fmt(r.get('recall'), 3)} ({r.get('instances', 'n/a')})"
        rows.append(row)
    hold = indep.get("holdout") or {}
    leaks = ", ".join(f"{s.get('type')} `{s.get('masked')}`" for s in (hold.get("survivors") or [])[:8])
    fp = (hold.get("false_positives") or {}).get("spans")
    return "\n".join(
        [
            '<div id="pii-independent">',
            "",
            "**PII scrub on text this project did not generate** (hand-labelled support sentences in other formats; "
            "the holdout set was written after the patterns were widened and never tuned on, so it is the estimate for "
            "unseen formats):",
            "",
            md_table(rows),
            "",
            f"Holdout survivors (masked): {leaks or 'none'}; false-positive spans on its PII-free sentences: {fmt(fp)}.",
            "",
            "</div>",
        ]
    )


def calibration_md(M: Mapping[str, Any]) -> str:
    """*Execution* opens with step 01: the calibration sets and the PII scrub."""
    c = M["01_calibration"]
    scrub = c.get("scrub") or {}
    s_rows = scrub_rows(scrub)
    pools = c.get("pools") or {}
    return "\n".join(
        [
            '<div id="execution">',
            "",
            "## Execution",
            "",
            "### Calibration sets (step 01)",
            "",
            f"Pools: {fmt(pools.get('generic_texts'))} generic texts, {fmt(pools.get('in_domain_texts'))} in-domain "
            f"conversations (after scrubbing). Step 01 wall time {fmt(c.get('wall_s'), 1)} s.",
            "",
            md_table(calibration_set_rows(c)),
            "",
            "**PII scrub**: " + _scrub_note(scrub),
            "",
            md_table(s_rows) if s_rows else "",
            "",
            independent_pii_md(c.get("pii_independent")),
            "",
            "</div>",
        ]
    )


def checkpoint_rows(q: Mapping[str, Any]) -> list[dict]:
    """Step 02's checkpoints: method, bits, calibration, search settings, cost and size."""
    return [
        {
            "checkpoint": r["name"],
            "method": r.get("method"),
            "bits": r.get("bits"),
            "group": r.get("group_size"),
            "calibration": r.get("calibration_source") or "none",
            "draw": "" if r.get("draw") is None else r.get("draw"),
            "duo_scaling / apply_clip": ""
            if r.get("method") != "awq"
            else f"{r.get('duo_scaling')} / {r.get('apply_clip')}",
            "simulated": fmt(r.get("simulated")),
            "search (s)": fmt(r.get("search_wall_s"), 1),
            "peak RSS (MB)": fmt(r.get("peak_rss_mb"), 0),
            "size on disk": mb(r.get("checkpoint_bytes")),
            "bits/weight": fmt(r.get("effective_bits_per_weight"), 3),
        }
        for r in q.get("checkpoints") or []
    ]


def sanity_rows(q: Mapping[str, Any], ci: str) -> list[dict]:
    """Step 02's sanity perplexities, with the change against round-to-nearest per domain."""
    rows = []
    for s in q.get("sanity") or []:
        vs = [
            f"{d}: {fmt(v['point'], 3, True)} [{fmt(v['lo'], 3, True)}, {fmt(v['hi'], 3, True)}]"
            for d in ("generic", "in_domain")
            if (v := s.get(f"vs_rtn_pct_{d}"))
        ]
        rows.append(
            {
                "model": s["name"],
                "ppl generic": fmt(s.get("ppl_generic"), 3),
                "ppl in-domain": fmt(s.get("ppl_in_domain"), 3),
                f"vs RTN on own domain (% ppl, {ci})": "; ".join(vs),
                "worse than RTN": fmt(s.get("worse_than_rtn_on_own_domain"))
                if "worse_than_rtn_on_own_domain" in s
                else "",
            }
        )
    return rows


def quantize_md(M: Mapping[str, Any]) -> str:
    """Step 02: the quantization runs, their sanity perplexities and the step's targets."""
    q = M["02_quantize"]
    ci = ci_level(M)
    t_rows = [
        {
            "target": k,
            "measured": fmt(v.get("measured"), 1),
            "target value": fmt(v.get("target"), 1),
            "met": fmt(v.get("met")),
        }
        for k, v in (q.get("targets") or {}).items()
    ]
    return "\n".join(
        [
            "### Quantization runs (step 02)",
            "",
            md_table(checkpoint_rows(q)),
            "",
            f"Sanity perplexities on held-out text (lower is better; change vs RTN in %, {ci}):",
            "",
            md_table(sanity_rows(q, ci)),
            "",
            "Step 02 targets:",
            "",
            md_table(t_rows) if t_rows else "_none_",
        ]
    )


def search_settings_md(M: Mapping[str, Any]) -> str:
    """The AutoAWQ search settings compared on one calibration set, or why they were not."""
    settings = M["02_quantize"].get("search_settings") or []
    if not settings:
        flag = ((M["manifest"].get("params") or {}).get("quantize") or {}).get("compare_search_settings")
        return "### AutoAWQ search settings\n\nNot compared in this run" + (
            " (`quantize.compare_search_settings: false`)." if flag is False else "."
        )
    ci = ci_level(M)
    rows = []
    for s in settings:
        v = s.get("vs_rtn_in_domain") or {}
        rows.append(
            {
                "checkpoint": s["name"],
                "duo_scaling": s.get("duo_scaling"),
                "apply_clip": s.get("apply_clip"),
                "search (s)": fmt(s.get("search_wall_s"), 1),
                "ppl in-domain": fmt(s.get("ppl_in_domain"), 3),
                f"vs RTN in-domain (%, {ci})": f"{fmt(v.get('point'), 3, True)} [{fmt(v.get('lo'), 3, True)}, "
                f"{fmt(v.get('hi'), 3, True)}]"
                if v
                else "n/a",
            }
        )
    return "\n".join(["### AutoAWQ search settings (same calibration set)", "", md_table(rows)])


def execution_cells(M: Mapping[str, Any]) -> Cells:
    """*Execution*: calibration sets (step 01), quantization runs (step 02), search settings."""
    cells = [
        ("markdown", calibration_md(M)),
        figure_cell("calibration"),
        ("markdown", quantize_md(M)),
        ("markdown", search_settings_md(M)),
    ]
    if M["02_quantize"].get("search_settings"):
        cells.append(figure_cell("search_settings"))
    return cells


# =========================================================================== lessons
def served_head_text(M: Mapping[str, Any]) -> str:
    """The served output head (serve.lm_head), if not the model's own, and what step 03 said of it."""
    e3 = M["03_evaluate"]
    rows = [r for r in e3.get("summary") or [] if r.get("lm_head") not in (None, "float")]
    if not rows:
        return ""
    verdicts = e3.get("verdict_by_checkpoint") or {}
    r = rows[0]
    own = str(r["name"]).split("+head-")[0]
    return (
        f"fast4 served its output head as {r['lm_head']} (serve.lm_head); step 03 scored that configuration, "
        f"`{r['name']}`, against the same budget: {verdicts.get(r['name'], 'n/a')} (its checkpoint with the "
        f"float head, `{own}`: {verdicts.get(own, 'n/a')})."
    )


def quality_lessons(M: Mapping[str, Any]) -> list[str]:
    """Lessons from steps 02 and 03: calibration effects, who passed the budget, what held the rest back."""
    ci = ci_level(M)
    out = [effect_sentence(e, ci) for e in calibration_effects(M)]
    out += [effect_sentence(e, ci) for e in calibration_effects(M, "in_domain", "RTN")[:1]]
    e3 = M["03_evaluate"]
    verdicts = e3.get("verdict_by_checkpoint") or {}
    passed = [k for k, v in verdicts.items() if v == "pass"]
    out.append(
        f"{len(passed)} of {len(verdicts)} quantized checkpoint(s) kept every offline quality-budget line "
        f"inside its limit at the worse end of the {ci}" + (f" ({', '.join(passed)})." if passed else ".")
    )
    fails: dict[str, list[dict]] = {}
    for r in e3.get("budget") or []:
        if r.get("verdict") != "pass":
            fails.setdefault(r["metric"], []).append(r)
    for metric, rs in fails.items():
        worst = max(rs, key=lambda r: num(r.get("worst_case")) or -math.inf)
        lab = label(metric)
        out.append(
            f"{lab[0].upper() + lab[1:]} kept {len(rs)} checkpoint(s) from passing (fail or inconclusive); "
            f"the largest worst case was {fmt(worst.get('worst_case'), 2, True)} {worst.get('unit')} against a "
            f"budget of {fmt(worst.get('limit'))} {worst.get('unit')} (`{worst['checkpoint']}`)."
        )
    flagged = M["02_quantize"].get("worse_than_rtn_on_own_domain") or []
    if flagged:
        out.append(
            f"{len(flagged)} AWQ checkpoint(s) were worse than round-to-nearest on their own calibration "
            f"domain: {', '.join(flagged)}."
        )
    return out


def _fast_path_lesson(M: Mapping[str, Any], name: str, r: Mapping[str, Any]) -> list[str]:
    """The fast 4-bit path's speed-ups at its first measured shape, against the step's target."""
    for s in speed_rows(r):
        if s.get("path") == "fast4":
            tgt = (M["04_benchmark"].get("targets") or {}).get("cpu_fast_decode_speedup_1b_b1") or {}
            met = (
                f" (target {fmt(tgt.get('target'))}x: {'met' if tgt.get('met') else 'NOT met'})"
                if tgt.get("target") is not None
                else ""
            )
            return [
                f"With the {name} model on {(r.get('env') or {}).get('hardware_label', 'this hardware')}, "
                f"batch {s.get('batch')}, context {s.get('context')}, the fast 4-bit path decoded at "
                f"{fmt(s.get('decode_speedup'))}x and prefilled at {fmt(s.get('prefill_speedup'))}x the "
                f"baseline speed{met}."
            ]
    return []


def speed_lessons(M: Mapping[str, Any]) -> list[str]:
    """Lessons from step 04: the fast path, the served head, the fleet, the bytes, the trap."""
    name, r = main_bench(M)
    out = _fast_path_lesson(M, name, r)
    served = served_head_text(M)
    if served:
        out.append(served)
    base_f, fast_f = fleet_row(r, "baseline"), fleet_row(r, "fast4")
    if base_f and fast_f:
        out.append(
            f"Fleet at peak: {base_f.get('devices_at_peak')} device(s) for the baseline "
            f"({money(base_f.get('cost_per_1000_conversations'))} per 1,000 conversations) vs "
            f"{fast_f.get('devices_at_peak')} for fast4 ({money(fast_f.get('cost_per_1000_conversations'))})."
        )
    ratio = r.get("bytes_ratio")
    if num(ratio) is not None:
        out.append(f"The quantized linears take {fmt(ratio)}x fewer bytes than float16.")
    traps = M["04_benchmark"].get("traps") or []
    if traps:
        paths = sorted({f"{t.get('model', '')}/{t.get('path')}" for t in traps})
        slowest = min(traps, key=lambda t: num(t.get("speedup")) or math.inf)
        out.append(
            f"The trap was real: {len(traps)} measurement(s) on {', '.join(paths)} ran slower than the baseline "
            f"(slowest {fmt(slowest.get('speedup'))}x, {slowest.get('model', '')}/{slowest.get('path')} "
            f"{slowest.get('phase')})."
        )
    else:
        out.append("No quantized path ran slower than the baseline at the measured shapes.")
    return out


def rollout_lessons(M: Mapping[str, Any]) -> list[str]:
    """Lessons from step 05 and the rollback check: how each scenario ended, the power plan."""
    r5 = M["05_rollout_analysis"]
    main, worse, broken = r5.get("rollout") or {}, r5.get("worse_scenario"), r5.get("broken_assignment_scenario")
    out = [
        f"The {'SIMULATED ' if main.get('simulated') else ''}rollout ended in '{main.get('decision')}'"
        + (
            f" at look {main.get('stopped_at_look')}"
            if main.get("stopped_at_look") is not None
            else f" after {main.get('n_looks')} look(s)"
        )
        + (f"; the simulated 'worse' scenario ended in '{worse.get('decision')}'" if worse else "")
        + (f"; the simulated broken-assignment scenario ended in '{broken.get('decision')}'" if broken else "")
        + "."
    ]
    plan = r5.get("power_plan")
    if plan:
        out.append(
            f"The power plan asked for {plan.get('days_needed') if plan.get('days_needed') is not None else 'more'} "
            f"day(s) for {plan.get('K')} metrics at {100 * (num(plan.get('power')) or 0):.0f}% overall power; "
            f"the schedule had {plan.get('days_scheduled')}"
            + (" (enough)." if plan.get("sufficient") else ", too few: underpowered.")
        )
    rb = M["03_evaluate"].get("rollback_check") or {}
    out.append(
        f"Rollback: the archived baseline {'reproduced' if rb.get('identical') else 'did NOT reproduce'} the "
        "baseline's metrics bit for bit."
    )
    return out


def lessons(M: Mapping[str, Any]) -> str:
    """*Lessons*: numbered sentences, each generated from the run's metrics."""
    out = quality_lessons(M) + speed_lessons(M) + rollout_lessons(M)
    return "\n".join(
        [
            '<div id="lessons">',
            "",
            "## Lessons",
            "",
            "Each sentence below is generated from this run's metrics.",
            "",
            *(f"{i}. {s}" for i, s in enumerate(out, 1)),
            "",
            "</div>",
        ]
    )


# =========================================================================== process checklist
def _params_yaml_budget(run_dir: Path) -> Any:
    """The budget in the run's params.yaml, or None when there is none to read."""
    try:
        return (
            (yaml.safe_load((run_dir / "params.yaml").read_text(encoding="utf-8")) or {})
            .get("evaluate", {})
            .get("budget")
        )
    except Exception:  # noqa: BLE001 - params.yaml is optional evidence
        return None


def _budget_check(M: Mapping[str, Any], run_dir: Path) -> tuple[bool, str]:
    """Was the budget step 03 evaluated against the one declared (manifest, params.yaml), unchanged since?"""
    man = M["manifest"]
    declared = M["03_evaluate"].get("budget_declared")
    params_budget = ((man.get("params") or {}).get("evaluate") or {}).get("budget")
    yaml_budget = _params_yaml_budget(run_dir)
    changed = budget_changed_after_results(man)
    ok = (
        declared is not None
        and declared == params_budget
        and (yaml_budget is None or yaml_budget == declared)
        and not changed
    )
    s03 = ((man.get("steps") or {}).get("03_evaluate") or {}).get("start")
    return ok, (
        f"budget in the run's resolved params (manifest{', params.yaml' if yaml_budget is not None else ''}) "
        f"{'equals' if ok else 'DIFFERS FROM'} the budget step 03 evaluated against "
        f"({len(declared or [])} line(s)); step 03 started {s03 or 'n/a'}"
        + ("; THE BUDGET WAS CHANGED AFTER RESULTS WERE SEEN (manifest budget_history)" if changed else "")
    )


def checklist(M: Mapping[str, Any], run_dir: Path) -> list[tuple[bool, str, str]]:
    """(ticked, item, evidence) from the manifest and metrics."""
    steps = M["manifest"].get("steps") or {}

    def done(name: str) -> bool:
        return (steps.get(name) or {}).get("status") in DONE_STATUSES

    sets = M["01_calibration"].get("sets") or []
    archive = M["02_quantize"].get("baseline_archive") or {}
    rb = M["03_evaluate"].get("rollback_check") or {}
    sums = run_dir / "02_quantize" / "baseline" / "SHA256SUMS"
    trap_n = len(M["04_benchmark"].get("traps") or [])
    budget_ok, budget_evidence = _budget_check(M, run_dir)
    return [
        (
            done("01_calibration") and bool(sets),
            "Calibration built",
            f"step 01 {(steps.get('01_calibration') or {}).get('status', 'not run')}; {len(sets)} calibration set(s)",
        ),
        (
            done("02_quantize")
            and bool(archive.get("files"))
            and bool(rb.get("checksums_verified"))
            and bool(rb.get("identical")),
            "Baseline archived and verified",
            f"{len(archive.get('files') or {})} file(s) archived by step 02; step 03 rollback check: checksums verified "
            f"{fmt(rb.get('checksums_verified'))}, archived baseline reproduces the baseline exactly {fmt(rb.get('identical'))}",
        ),
        (budget_ok, "Budget declared before evaluation", budget_evidence),
        (
            done("04_benchmark"),
            "Trap checked",
            f"step 04 {(steps.get('04_benchmark') or {}).get('status', 'not run')}; {trap_n} trap flag(s) raised",
        ),
        (
            sums.is_file(),
            "Rollback path present",
            f"02_quantize/baseline/SHA256SUMS {'exists' if sums.is_file() else 'is MISSING'}"
            + (f"; rollback: {archive.get('rollback')}" if archive.get("rollback") else ""),
        ),
    ]


def checklist_md(M: Mapping[str, Any], run_dir: Path) -> str:
    """*Process checklist*: one ticked or crossed line per item, with its evidence (escaped)."""
    items = []
    for ok, item, evidence in checklist(M, run_dir):
        mark = '<span class="tick">&#10004;</span>' if ok else '<span class="cross">&#10008;</span>'
        items.append(
            f'<li class="{"ok" if ok else "missing"}" data-ok="{str(ok).lower()}">{mark} '
            f"<strong>{html.escape(item)}</strong>: {html.escape(evidence)}</li>"
        )
    return "\n".join(
        [
            '<div id="checklist">',
            "",
            "## Process checklist",
            "",
            "Ticked from the manifest and metrics of this run.",
            "",
            '<ul class="checklist">',
            *items,
            "</ul>",
            "",
            "</div>",
        ]
    )
