"""The answer box on the report's first screen, also shown per run on the comparison page.

One generated line per question (does the calibration data matter, can we ship 4-bit, speed
and memory, the rollout, can we trust the run), each linking to its section. The lines are
HTML: every value taken from the run goes through :func:`escape_html`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from quantstudy.pipeline.manifest import budget_changed_after_results
from quantstudy.report.formatting import escape_html, fmt, num, size
from quantstudy.report.lookups import (
    SOURCE_LABELS,
    calibration_effects,
    ci_level,
    label,
    main_bench,
    memory_row,
    older_steps,
    speed_rows,
    stale_steps,
)

QUESTIONS = (
    ("Does the calibration data matter?", "effects"),
    ("Can we ship 4-bit?", "budget"),
    ("Speed and memory", "speed-cost"),
    ("Rollout", "verdict"),
    ("Can we trust this run?", "checklist"),
)


def answer_html(M: Mapping[str, Any], base: str = "", box_id: str = "answer") -> str:
    """The answer box: one generated line per question, each linking to its section (``base``
    prefixes the links, for a page that is not the report itself). One line of HTML."""
    answers = [answer_calibration(M), answer_budget(M), answer_speed(M), answer_rollout(M), answer_trust(M, base)]
    items = "".join(
        f'<li class="answer-{cls}"><a class="answer-q" href="{base}#{anchor}">{q}</a> {text}</li>'
        for (q, anchor), (text, cls) in zip(QUESTIONS, answers)
    )
    return (
        f'<div id="{box_id}" class="answer"><p class="answer-head"><strong>The answer</strong> '
        "<small>(generated from this run's metrics; each line links to its section)</small></p>"
        f"<ul>{items}</ul></div>"
    )


# --------------------------------------------------------------------------- calibration
def _first_line(M: Mapping[str, Any]) -> dict | None:
    """The budget's first line that step 03 judged (satisfaction is left to the rollout)."""
    judged = {r.get("metric") for r in M["03_evaluate"].get("budget") or []}
    return next((b for b in M["03_evaluate"].get("budget_declared") or [] if b.get("metric") in judged), None)


def headline_effects(M: Mapping[str, Any]) -> list[dict]:
    """In-domain vs generic effects on the budget's first metric and in-domain perplexity."""
    first = _first_line(M)
    heads = list(dict.fromkeys(([first["metric"]] if first else []) + ["indomain_ppl"]))
    effects = calibration_effects(M)
    return [e for m in heads for e in effects if e.get("metric") == m] or effects[:2]


def _draws(e: Mapping[str, Any]) -> str:
    a, b = (list(e.get("draws") or []) + ["?", "?"])[:2]
    return f"{a} draw{'' if a == 1 else 's'} each" if a == b else f"{a} and {b} draws"


def _effect_numbers(e: Mapping[str, Any], ci: str) -> str:
    u = "%" if str(e.get("unit", "")).startswith("%") else f" {e.get('unit', '')}"
    return f"{fmt(e['point'], 2, True)}{u}, {ci} [{fmt(e['lo'], 2, True)}, {fmt(e['hi'], 2, True)}]"


def effect_clause(e: Mapping[str, Any], ci: str) -> str:
    """'in-domain calibration lowered in-domain perplexity by 1.09% [0.55, 1.53] against generic'
    or '<metric>: no measurable difference (..., the interval includes 0)'."""
    unit = str(e.get("unit", ""))
    u = "%" if unit.startswith("%") else f" {unit}"
    what = label(e["metric"])
    a, b = (SOURCE_LABELS.get(e[k], e[k]).lower() for k in ("a", "b"))
    if e.get("within_noise"):
        return f"{what}: no measurable difference ({_effect_numbers(e, ci)}: the interval includes 0)"
    lo, hi = sorted((abs(e["lo"]), abs(e["hi"])))
    verb = "lowered" if e["point"] < 0 else "raised"
    return f"{a} calibration {verb} {what} by {fmt(abs(e['point']))}{u} ({ci} [{fmt(lo)}, {fmt(hi)}]) against {b}"


def answer_calibration(M: Mapping[str, Any]) -> tuple[str, str]:
    """(HTML, class) of 'Does the calibration data matter?'."""
    effs = headline_effects(M)
    if not effs:
        return "This run did not compare in-domain with generic calibration.", "info"
    ci = ci_level(M)
    if all(e.get("within_noise") for e in effs):
        nums = "; ".join(f"{label(e['metric'])} {_effect_numbers(e, ci)}" for e in effs)
        return (
            f"No measurable difference between in-domain and generic calibration (in-domain minus generic): "
            f"{escape_html(nums)} (every interval includes 0); over {_draws(effs[0])}."
        ), "info"
    clauses = [effect_clause(e, ci) for e in sorted(effs, key=lambda e: bool(e.get("within_noise")))]
    return f"Yes: {escape_html('; '.join(clauses))}; over {_draws(effs[0])}.", "info"


# --------------------------------------------------------------------------- budget
def deciding_line(M: Mapping[str, Any], checkpoint: str) -> dict | None:
    """The budget line that decides a checkpoint: the one furthest over its limit when it fails,
    the tightest when it passes (worst case against limit, at the worse end of the CI)."""
    rows = [
        r
        for r in M["03_evaluate"].get("budget") or []
        if r.get("checkpoint") == checkpoint
        and num(r.get("worst_case")) is not None
        and num(r.get("limit")) is not None
    ]
    return min(rows, key=lambda r: r["limit"] - r["worst_case"], default=None)


def line_text(r: Mapping[str, Any] | None) -> str:
    """A budget line in words: metric, worst case, limit, verdict."""
    if not r:
        return "no budget line recorded"
    return (
        f"{label(r['metric'])}, worst case {fmt(r['worst_case'], 2, True)} {r.get('unit', '')} against a limit "
        f"of {fmt(r['limit'])} {r.get('unit', '')} ({str(r.get('verdict', '')).upper()})"
    )


def answer_budget(M: Mapping[str, Any]) -> tuple[str, str]:
    """(HTML, class) of 'Can we ship 4-bit?'."""
    verdicts = M["03_evaluate"].get("verdict_by_checkpoint") or {}
    cand = M["05_rollout_analysis"].get("candidate") or {}
    name = cand.get("checkpoint", "n/a")
    passed = verdicts.get(name) == "pass"
    k, n = sum(v == "pass" for v in verdicts.values()), len(verdicts)
    line = escape_html(line_text(deciding_line(M, name)))
    if passed:
        text = (
            f'<span class="go">GO</span> for 4-bit: <code>{escape_html(name)}</code> would ship; it keeps every '
            f"offline budget line inside its limit at the worse end of the {ci_level(M)}; the tightest is {line}. "
            f"{k} of {n} checkpoint(s) pass."
        )
    else:
        text = (
            f'<span class="nogo">NO-GO</span>: {k} of {n} quantized checkpoint(s) keep every offline budget line. '
            f"The best by the rule, <code>{escape_html(name)}</code>, is held back by {line}."
        )
    if cand.get("rule"):
        ru = cand.get("runner_up") or {}
        text += f" Chosen by rule <code>{escape_html(cand['rule'])}</code>" + (
            f"; runner-up <code>{escape_html(ru.get('checkpoint'))}</code>." if ru else "."
        )
    return text, "ok" if passed else "bad"


# --------------------------------------------------------------------------- speed
def _trap_text(M: Mapping[str, Any], model: str, path: str) -> str:
    traps = M["04_benchmark"].get("traps") or []
    if not traps:
        return "Trap check: no quantized path ran slower than the float baseline."
    pairs = sorted({f"{t.get('model', '')}/{t.get('path')}" for t in traps})
    slowest = min(traps, key=lambda t: num(t.get("speedup")) or math.inf)
    ours = f"{model}/{path}" in pairs
    return (
        f'<span class="nogo">TRAP</span>: {len(traps)} measurement(s) ran slower than the float baseline on '
        f"{escape_html(', '.join(pairs))} (slowest {fmt(slowest.get('speedup'))}x); {escape_html(model)}/"
        f"{escape_html(path)} is {'among them' if ours else 'not among them'}."
    )


def answer_speed(M: Mapping[str, Any]) -> tuple[str, str]:
    """(HTML, class) of 'Speed and memory': the fast path's speed-ups, its weights, the trap check."""
    name, r = main_bench(M)
    rows = speed_rows(r)
    path = "fast4" if any(s.get("path") == "fast4" for s in rows) else next((s.get("path") for s in rows), None)
    hw = (r.get("env") or {}).get("hardware_label") or "the measured hardware"
    if path is None:
        return f"No speed measurements for a quantized path on {escape_html(hw)}. " + _trap_text(M, name, ""), "info"
    s = min((x for x in rows if x.get("path") == path), key=lambda x: (x.get("batch") or 0, x.get("context") or 0))
    base, quant = memory_row(r, "baseline") or {}, memory_row(r, path) or {}
    text = (
        f"On {escape_html(hw)} ({escape_html(name)} model, batch {s.get('batch')}, context {s.get('context')}): "
        f"{escape_html(path)} decodes at {fmt(s.get('decode_speedup'))}x and prefills at "
        f"{fmt(s.get('prefill_speedup'))}x the float baseline's speed; weights "
        f"{size(base.get('weight_bytes_full_model'))} &rarr; {size(quant.get('weight_bytes_full_model'))}. "
        + _trap_text(M, name, path)
    )
    slow = any(num(s.get(k)) is not None and s[k] < 1 for k in ("decode_speedup", "prefill_speedup"))
    return text, "bad" if slow or "TRAP" in text else "info"


# --------------------------------------------------------------------------- rollout
def srm_check_text(s: Mapping[str, Any]) -> str:
    """Whether the SRM check caught a scenario's broken assignment, in words."""
    srm = s.get("srm") or []
    failed = [x["look"] for x in srm if not x.get("ok")]
    if s.get("decision") == "stop (SRM)":
        return "the SRM check works"
    if failed:
        return (
            f"the SRM check failed from look {failed[0]}, after another rule had already stopped the rollout at "
            f"look {s.get('stopped_at_look')}"
        )
    smallest = min((x["p_value"] for x in srm), default=None)
    return "the SRM check did NOT fire at any look" + (
        f" (smallest p = {smallest:.2g}; too few conversations to see the loss)" if smallest is not None else ""
    )


def _rollout_checks_text(
    main: Mapping[str, Any],
    plan: Mapping[str, Any] | None,
    worse: Mapping[str, Any] | None,
    broken: Mapping[str, Any] | None,
) -> str:
    """The guardrails, the power plan and the two check scenarios, as '; ...' clauses."""
    text = ""
    guards = [g for g in main.get("guardrails") or [] if g.get("metric") != "satisfaction"]
    if guards:
        text += (
            f"; guardrails non-inferior at that look: {sum(bool(g.get('final_non_inferior')) for g in guards)}"
            f"/{len(guards)}"
        )
    if plan:
        needed = plan.get("days_needed") if plan.get("days_needed") is not None else "n/a"
        text += (
            f"; power plan: {escape_html(needed)} day(s) needed, {escape_html(plan.get('days_scheduled'))} "
            "scheduled" + ("" if plan.get("sufficient") else " (UNDERPOWERED)")
        )
    if worse:
        fired = worse.get("decision") == "roll back"
        text += (
            f"; the 'worse' scenario ends in {escape_html(str(worse.get('decision', 'n/a')).upper())}, so the "
            f"rollback trigger {'works' if fired else 'did NOT fire'}"
        )
    if broken:
        text += (
            f"; the broken-assignment scenario ends in "
            f"{escape_html(str(broken.get('decision', 'n/a')).upper())}: " + escape_html(srm_check_text(broken))
        )
    return text


def answer_rollout(M: Mapping[str, Any]) -> tuple[str, str]:
    """(HTML, class) of 'Rollout': the decision, guardrails, power plan and the check scenarios."""
    r5 = M["05_rollout_analysis"]
    main, worse = r5.get("rollout") or {}, r5.get("worse_scenario")
    sim = bool(main.get("simulated"))
    decision = str(main.get("decision", "n/a"))
    when = (
        f" at look {main['stopped_at_look']}"
        if main.get("stopped_at_look") is not None
        else f" after {main.get('n_looks', 'n/a')} look(s)"
    )
    cand = (r5.get("candidate") or {}).get("checkpoint", "n/a")
    text = (
        '<span class="sim-label">SIMULATED</span> ' if sim else ""
    ) + f"{escape_html(decision.upper())} for <code>{escape_html(cand)}</code>{when}"
    if decision == "stop (SRM)":
        text += " (sample-ratio mismatch: the assignment or the logging is broken; no verdict is trusted)"
    text += _rollout_checks_text(
        main, r5.get("power_plan") or main.get("power_plan"), worse, r5.get("broken_assignment_scenario")
    )
    text += " (simulated logs, not real users)." if sim else " (real rollout logs)."
    trigger_failed = bool(worse) and worse.get("decision") != "roll back"
    return text, "bad" if trigger_failed else {"cut over": "ok", "roll back": "bad", "stop (SRM)": "bad"}.get(
        decision, "info"
    )


# --------------------------------------------------------------------------- trust
def trust_problems(M: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(section id, sentence) for everything that makes the run untrustworthy."""
    man = M["manifest"]
    out = []
    if budget_changed_after_results(man):
        out.append(("verdict", "the quality budget was changed after results were seen"))
    stale = stale_steps(man)
    if stale:
        out.append(("steps", "stale or failed re-run: " + "; ".join(f"{k} ({v})" for k, v in stale.items())))
    flagged = M["02_quantize"].get("worse_than_rtn_on_own_domain") or []
    if flagged:
        out.append(
            (
                "flagged-rtn",
                f"{len(flagged)} AWQ checkpoint(s) worse than round-to-nearest on their own "
                f"calibration domain ({', '.join(flagged)})",
            )
        )
    older = older_steps(man)
    if older:
        out.append(("steps", f"{len(older)} step(s) computed under an older commit ({', '.join(older)})"))
    return out


def answer_trust(M: Mapping[str, Any], base: str) -> tuple[str, str]:
    """(HTML, class) of 'Can we trust this run?': every trust problem, linked to its section."""
    problems = trust_problems(M)
    if not problems:
        return (
            "Nothing flagged: budget unchanged since the results, no stale steps, AWQ never worse than "
            "round-to-nearest on its own domain, every step at the stamped commit."
        ), "ok"
    items = "; ".join(f'<a href="{base}#{a}">{escape_html(t)}</a>' for a, t in problems)
    return f"<strong>{len(problems)} warning(s)</strong>: {items}.", "bad"
