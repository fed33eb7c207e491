"""The study report: one self-contained ``report.html`` per run folder.

:func:`build_report` refuses an incomplete run (:class:`ReportError`), then builds an
in-memory notebook whose markdown cells are generated from the steps' ``metrics.json``
files (and the run's ``manifest.json``) and whose code cells re-plot the figures from
those same numbers. The notebook is executed with nbclient (kernel ``python3``, working
directory = project root) and exported with nbconvert's ``HTMLExporter`` (lab template,
code hidden, figures embedded as base64 PNGs, no external scripts: MathJax, require.js
and mermaid are left out so the page needs no network).

Arc: *The answer* (a box on the first screen, one generated line per question: does the
calibration data matter, can we ship 4-bit, speed and memory, the rollout, can we trust the
run; each line links to its section) and a table of contents, then the run stamp with the
steps (executed notebooks rendered to HTML beside the .ipynb), *Situation* (baseline
footprint and cost), *Decision* (method, bits, group size, the quality budget as declared),
*Execution* (calibration sets, PII scrub, quantization runs, search settings), *Outcome*
(quality vs budget, calibration effects, cross-domain matrix, speed/memory/cost, the trap
callout, the rollout verdict with the candidate rule and runner-up), *Lessons* (sentences
built from the measured numbers) and a *Process checklist* ticked from the manifest and metrics.

HTML id hooks: ``answer``, ``toc``, ``stamp``, ``steps``, ``situation``, ``decision``,
``budget-declared``, ``execution``, ``outcome``, ``budget``, ``effects``, ``flagged-rtn``,
``speed-cost``, ``speed``, ``traps``, ``verdict``, ``candidate``, ``lessons``, ``checklist``;
figures are ``figure-1``, ``figure-2``, ... with a one-sentence caption (:data:`CAPTIONS`).

The figure functions (``fig_*``) take the dict returned by :func:`load_metrics` and return
a matplotlib figure (or None when the run has nothing to draw); the notebook calls them.

Next to ``report.html``, :func:`build_report` writes ``report.pdf`` with headless Chromium's
print-to-PDF (skipped, in one line, when Chromium is missing) and ``notebooks/<step>.html``.
:mod:`quantstudy.report_compare` puts several runs side by side (``quantstudy compare``).
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from quantstudy import contracts
from quantstudy.metrics.registry import METRICS as METRIC_REGISTRY
from quantstudy.metrics.registry import label as metric_label
from quantstudy.pipeline.manifest import DONE_STATUSES, MANIFEST
from quantstudy.pipeline.steps import STEPS

REPORT_FILE = "report.html"
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)
METRICS = "metrics.json"
KERNEL = "python3"
CELL_TIMEOUT_S = 300

METRIC_LABELS = {name: m.label for name, m in METRIC_REGISTRY.items()}  # quantstudy.metrics.registry
SOURCE_LABELS = {"in_domain": "In-domain", "generic": "generic", "mixed": "Mixed", "RTN": "round-to-nearest (RTN)"}


class ReportError(ValueError):
    """The run folder cannot be reported on (missing manifest, steps not done, metrics missing)."""


# =========================================================================== inputs
def stale_steps(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Steps whose results no longer match their inputs (stale), or whose last re-run failed."""
    out = {}
    for name, rec in (manifest.get("steps") or {}).items():
        if rec.get("stale"):
            out[name] = str(rec.get("stale_reason") or "stale")
        elif rec.get("failed_attempt"):
            out[name] = "its last re-run failed; these are the results from before it"
    return out


def check_complete(run_dir: str | Path, allow_stale: bool = False) -> dict[str, Any]:
    """The run's manifest, or ReportError naming every missing, unfinished or (unless
    ``allow_stale``) stale step."""
    run_dir = Path(run_dir)
    problems: list[str] = []
    manifest_path = run_dir / MANIFEST
    manifest: dict[str, Any] = {}
    if not manifest_path.is_file():
        problems.append(f"{MANIFEST} is missing")
    else:
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            problems.append(f"{MANIFEST} is unreadable ({exc})")
        if not isinstance(manifest, dict):
            manifest = {}
    records = manifest.get("steps") or {}
    for name in STEP_NAMES:
        why = []
        if manifest:
            status = (records.get(name) or {}).get("status")
            if status is None:
                why.append("not run")
            elif status not in DONE_STATUSES:
                why.append(f"status {status}")
        if not (run_dir / name / METRICS).is_file():
            why.append(f"{name}/{METRICS} missing")
        if why:
            problems.append(f"{name} ({'; '.join(why)})")
    if problems:
        raise ReportError(f"{run_dir}: incomplete run, no report built: " + ", ".join(problems)
                          + ". Run the missing steps first (quantstudy run PARAMS --from STEP).")
    stale = stale_steps(manifest)
    if stale and not allow_stale:
        raise ReportError(f"{run_dir}: stale steps, no report built: "
                          + ", ".join(f"{k} ({v})" for k, v in stale.items())
                          + ". Re-run them (quantstudy run PARAMS), or render anyway with --allow-stale.")
    return manifest


def load_metrics(run_dir: str | Path) -> dict[str, Any]:
    """{step name: metrics dict, "manifest": manifest, "run_dir": str}. Each step's metrics.json
    is checked against its contract (:mod:`quantstudy.contracts`): a missing or renamed field is
    a ReportError naming the file and the field, never a silent "n/a" in the report."""
    run_dir = Path(run_dir)
    try:
        out: dict[str, Any] = {name: contracts.read(name, run_dir / name) for name in STEP_NAMES}
    except contracts.ContractError as exc:
        raise ReportError(f"{run_dir}: no report built.\n{exc}") from exc
    out["manifest"] = json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))
    out["run_dir"] = str(run_dir)
    return out


# =========================================================================== formatting
def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt(x: Any, nd: int = 2, sign: bool = False) -> str:
    """A number for the text; 'n/a' for None/NaN; other values as str."""
    if isinstance(x, bool) or x is None:
        return {True: "yes", False: "no", None: "n/a"}[x]
    v = _num(x)
    if v is None:
        return "n/a" if isinstance(x, (int, float)) else str(x)
    if isinstance(x, int) and not sign:
        return f"{x:,}"
    if round(v, nd) == 0:
        v = 0.0  # no "-0.00"
    return f"{v:+,.{nd}f}" if sign else f"{v:,.{nd}f}"


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=False).replace("|", "\\|")


def md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A markdown table of already formatted values."""
    if not rows:
        return "_(none)_"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(_esc(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_esc(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _gb(b: Any) -> str:
    v = _num(b)
    return "n/a" if v is None else f"{v / 1e9:,.3f} GB"


def _mb(b: Any) -> str:
    v = _num(b)
    return "n/a" if v is None else f"{v / 1e6:,.2f} MB"


def _money(x: Any) -> str:
    v = _num(x)
    return "n/a" if v is None else f"${v:,.4f}"


def _ci_level(M: Mapping[str, Any]) -> str:
    conf = ((M.get("manifest") or {}).get("params") or {}).get("evaluate", {}).get("confidence")
    return f"{round(100 * conf):g}% CI" if _num(conf) else "CI"


def _label(metric: str) -> str:
    return metric_label(metric)


# =========================================================================== numbers used in several places
def _bench_models(M: Mapping[str, Any]) -> dict[str, dict]:
    return {k: v for k, v in M["04_benchmark"].items() if isinstance(v, dict) and "speedups" in v}


def _main_bench(M: Mapping[str, Any]) -> tuple[str, dict]:
    models = _bench_models(M)
    name = "production" if "production" in models else next(iter(models), "")
    return name, models.get(name, {})


def _fleet_row(result: Mapping[str, Any], path: str) -> dict | None:
    rows = [r for r in result.get("fleet") or [] if r.get("path") == path]
    return min(rows, key=lambda r: r.get("batch_size") or 0) if rows else None


def _memory_row(result: Mapping[str, Any], path: str) -> dict | None:
    return next((r for r in result.get("memory") or [] if r.get("path") == path), None)


def _speed_rows(result: Mapping[str, Any]) -> list[dict]:
    sp = result.get("speedups") or []
    scope = "full_model" if any(r.get("scope") == "full_model" for r in sp) else "measured"
    return [r for r in sp if r.get("scope", scope) == scope and r.get("path") != "baseline"]


def _effects(M: Mapping[str, Any], a: str = "in_domain", b: str = "generic") -> list[dict]:
    return [e for e in M["03_evaluate"].get("calibration_effects") or [] if e.get("a") == a and e.get("b") == b]


def _lower_is_better(metric: str, unit: str = "") -> bool:
    """The registry's direction; an unregistered metric in % is a perplexity-like one."""
    return not METRIC_REGISTRY[metric].higher_is_better if metric in METRIC_REGISTRY else unit.startswith("%")


def _effect_sentence(e: Mapping[str, Any], ci: str) -> str:
    unit = e.get("unit", "")
    shown = "%" if unit.startswith("%") else f" {unit}"
    what = _label(e["metric"])
    a = SOURCE_LABELS.get(e["a"], e["a"])
    b = SOURCE_LABELS.get(e["b"], e["b"]).lower() if e["b"] != "RTN" else SOURCE_LABELS["RTN"]
    a = a[0].upper() + a[1:]
    text = (f"{a} calibration changed {what} by {fmt(e['point'], 2, True)}{shown} "
            f"({ci} [{fmt(e['lo'], 2, True)}, {fmt(e['hi'], 2, True)}], draws {e['draws'][0]} vs {e['draws'][1]}) "
            + (f"against {b} (no calibration)" if e["b"] == "RTN" else f"against {b} calibration"))
    if e.get("within_noise"):
        return text + ": within noise (the interval includes 0)."
    better = (e["point"] < 0) == _lower_is_better(e["metric"], unit)
    return text + f": {'better' if better else 'worse'}, and the interval excludes 0."


def _checklist(M: Mapping[str, Any], run_dir: Path) -> list[tuple[bool, str, str]]:
    """(ticked, item, evidence) from the manifest and metrics."""
    man = M["manifest"]
    steps = man.get("steps") or {}

    def done(name: str) -> bool:
        return (steps.get(name) or {}).get("status") in DONE_STATUSES

    sets = M["01_calibration"].get("sets") or []
    archive = M["02_quantize"].get("baseline_archive") or {}
    rb = M["03_evaluate"].get("rollback_check") or {}
    declared = M["03_evaluate"].get("budget_declared")
    params_budget = ((man.get("params") or {}).get("evaluate") or {}).get("budget")
    yaml_budget = None
    try:
        import yaml

        yaml_budget = (yaml.safe_load((run_dir / "params.yaml").read_text(encoding="utf-8")) or {}).get(
            "evaluate", {}).get("budget")
    except Exception:  # noqa: BLE001 - params.yaml is optional evidence
        yaml_budget = None
    from quantstudy.pipeline.manifest import budget_changed_after_results

    changed = budget_changed_after_results(man)
    budget_ok = (declared is not None and declared == params_budget and (yaml_budget is None or yaml_budget == declared)
                 and not changed)
    s03 = (steps.get("03_evaluate") or {}).get("start")
    sums = run_dir / "02_quantize" / "baseline" / "SHA256SUMS"
    trap_n = len(M["04_benchmark"].get("traps") or [])
    return [
        (done("01_calibration") and bool(sets), "Calibration built",
         f"step 01 {(steps.get('01_calibration') or {}).get('status', 'not run')}; {len(sets)} calibration set(s)"),
        (done("02_quantize") and bool(archive.get("files")) and bool(rb.get("checksums_verified"))
         and bool(rb.get("identical")), "Baseline archived and verified",
         f"{len(archive.get('files') or {})} file(s) archived by step 02; step 03 rollback check: checksums verified "
         f"{fmt(rb.get('checksums_verified'))}, archived baseline reproduces the baseline exactly {fmt(rb.get('identical'))}"),
        (budget_ok, "Budget declared before evaluation",
         f"budget in the run's resolved params (manifest{', params.yaml' if yaml_budget is not None else ''}) "
         f"{'equals' if budget_ok else 'DIFFERS FROM'} the budget step 03 evaluated against "
         f"({len(declared or [])} line(s)); step 03 started {s03 or 'n/a'}"
         + ("; THE BUDGET WAS CHANGED AFTER RESULTS WERE SEEN (manifest budget_history)" if changed else "")),
        (done("04_benchmark"), "Trap checked",
         f"step 04 {(steps.get('04_benchmark') or {}).get('status', 'not run')}; {trap_n} trap flag(s) raised"),
        (sums.is_file(), "Rollback path present",
         f"02_quantize/baseline/SHA256SUMS {'exists' if sums.is_file() else 'is MISSING'}"
         + (f"; rollback: {archive.get('rollback')}" if archive.get("rollback") else "")),
    ]


# =========================================================================== the answer box
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _size(b: Any) -> str:
    v = _num(b)
    return "n/a" if v is None else _gb(v) if v >= 1e9 else _mb(v)


def _first_line(M: Mapping[str, Any]) -> dict | None:
    """The budget's first line that step 03 judged (satisfaction is left to the rollout)."""
    judged = {r.get("metric") for r in M["03_evaluate"].get("budget") or []}
    return next((b for b in M["03_evaluate"].get("budget_declared") or [] if b.get("metric") in judged), None)


def headline_effects(M: Mapping[str, Any]) -> list[dict]:
    """In-domain vs generic effects on the budget's first metric and in-domain perplexity."""
    first = _first_line(M)
    heads = list(dict.fromkeys(([first["metric"]] if first else []) + ["indomain_ppl"]))
    effects = _effects(M)
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
    what = _label(e["metric"])
    a, b = (SOURCE_LABELS.get(e[k], e[k]).lower() for k in ("a", "b"))
    if e.get("within_noise"):
        return f"{what}: no measurable difference ({_effect_numbers(e, ci)}: the interval includes 0)"
    lo, hi = sorted((abs(e["lo"]), abs(e["hi"])))
    verb = "lowered" if e["point"] < 0 else "raised"
    return f"{a} calibration {verb} {what} by {fmt(abs(e['point']))}{u} ({ci} [{fmt(lo)}, {fmt(hi)}]) against {b}"


def _answer_calibration(M: Mapping[str, Any]) -> tuple[str, str]:
    effs = headline_effects(M)
    if not effs:
        return "This run did not compare in-domain with generic calibration.", "info"
    ci = _ci_level(M)
    if all(e.get("within_noise") for e in effs):
        nums = "; ".join(f"{_label(e['metric'])} {_effect_numbers(e, ci)}" for e in effs)
        return (f"No measurable difference between in-domain and generic calibration (in-domain minus generic): "
                f"{_e(nums)} (every interval includes 0); over {_draws(effs[0])}."), "info"
    clauses = [effect_clause(e, ci) for e in sorted(effs, key=lambda e: bool(e.get("within_noise")))]
    return f"Yes: {_e('; '.join(clauses))}; over {_draws(effs[0])}.", "info"


def deciding_line(M: Mapping[str, Any], checkpoint: str) -> dict | None:
    """The budget line that decides a checkpoint: the one furthest over its limit when it fails,
    the tightest when it passes (worst case against limit, at the worse end of the CI)."""
    rows = [r for r in M["03_evaluate"].get("budget") or [] if r.get("checkpoint") == checkpoint
            and _num(r.get("worst_case")) is not None and _num(r.get("limit")) is not None]
    return min(rows, key=lambda r: r["limit"] - r["worst_case"], default=None)


def line_text(r: Mapping[str, Any] | None) -> str:
    if not r:
        return "no budget line recorded"
    return (f"{_label(r['metric'])}, worst case {fmt(r['worst_case'], 2, True)} {r.get('unit', '')} against a limit "
            f"of {fmt(r['limit'])} {r.get('unit', '')} ({str(r.get('verdict', '')).upper()})")


def _answer_budget(M: Mapping[str, Any]) -> tuple[str, str]:
    verdicts = M["03_evaluate"].get("verdict_by_checkpoint") or {}
    cand = M["05_rollout_analysis"].get("candidate") or {}
    name = cand.get("checkpoint", "n/a")
    passed = verdicts.get(name) == "pass"
    k, n = sum(v == "pass" for v in verdicts.values()), len(verdicts)
    line = _e(line_text(deciding_line(M, name)))
    if passed:
        text = (f'<span class="go">GO</span> for 4-bit: <code>{_e(name)}</code> would ship; it keeps every offline '
                f"budget line inside its limit at the worse end of the {_ci_level(M)}; the tightest is {line}. "
                f"{k} of {n} checkpoint(s) pass.")
    else:
        text = (f'<span class="nogo">NO-GO</span>: {k} of {n} quantized checkpoint(s) keep every offline budget line. '
                f"The best by the rule, <code>{_e(name)}</code>, is held back by {line}.")
    if cand.get("rule"):
        ru = cand.get("runner_up") or {}
        text += (f" Chosen by rule <code>{_e(cand['rule'])}</code>"
                 + (f"; runner-up <code>{_e(ru.get('checkpoint'))}</code>." if ru else "."))
    return text, "ok" if passed else "bad"


def _trap_text(M: Mapping[str, Any], model: str, path: str) -> str:
    traps = M["04_benchmark"].get("traps") or []
    if not traps:
        return "Trap check: no quantized path ran slower than the float baseline."
    pairs = sorted({f"{t.get('model', '')}/{t.get('path')}" for t in traps})
    slowest = min(traps, key=lambda t: _num(t.get("speedup")) or math.inf)
    ours = f"{model}/{path}" in pairs
    return (f'<span class="nogo">TRAP</span>: {len(traps)} measurement(s) ran slower than the float baseline on '
            f"{_e(', '.join(pairs))} (slowest {fmt(slowest.get('speedup'))}x); {_e(model)}/{_e(path)} is "
            f"{'among them' if ours else 'not among them'}.")


def _answer_speed(M: Mapping[str, Any]) -> tuple[str, str]:
    name, r = _main_bench(M)
    rows = _speed_rows(r)
    path = "fast4" if any(s.get("path") == "fast4" for s in rows) else next((s.get("path") for s in rows), None)
    hw = (r.get("env") or {}).get("hardware_label") or "the measured hardware"
    if path is None:
        return f"No speed measurements for a quantized path on {_e(hw)}. " + _trap_text(M, name, ""), "info"
    s = min((x for x in rows if x.get("path") == path), key=lambda x: (x.get("batch") or 0, x.get("context") or 0))
    base, quant = _memory_row(r, "baseline") or {}, _memory_row(r, path) or {}
    text = (f"On {_e(hw)} ({_e(name)} model, batch {s.get('batch')}, context {s.get('context')}): {_e(path)} "
            f"decodes at {fmt(s.get('decode_speedup'))}x and prefills at {fmt(s.get('prefill_speedup'))}x the float "
            f"baseline's speed; weights {_size(base.get('weight_bytes_full_model'))} &rarr; "
            f"{_size(quant.get('weight_bytes_full_model'))}. " + _trap_text(M, name, path))
    slow = any(_num(s.get(k)) is not None and s[k] < 1 for k in ("decode_speedup", "prefill_speedup"))
    return text, "bad" if slow or "TRAP" in text else "info"


def _served_head_text(M: Mapping[str, Any]) -> str:
    """The served output head (serve.lm_head), if not the model's own, and what step 03 said of it."""
    e3 = M["03_evaluate"]
    rows = [r for r in e3.get("summary") or [] if r.get("lm_head") not in (None, "float")]
    if not rows:
        return ""
    verdicts = e3.get("verdict_by_checkpoint") or {}
    r = rows[0]
    own = str(r["name"]).split("+head-")[0]
    return (f"fast4 served its output head as {r['lm_head']} (serve.lm_head); step 03 scored that configuration, "
            f"`{r['name']}`, against the same budget: {verdicts.get(r['name'], 'n/a')} (its checkpoint with the "
            f"float head, `{own}`: {verdicts.get(own, 'n/a')}).")


def _answer_rollout(M: Mapping[str, Any]) -> tuple[str, str]:
    r5 = M["05_rollout_analysis"]
    main, worse = r5.get("rollout") or {}, r5.get("worse_scenario")
    broken = r5.get("broken_assignment_scenario")
    sim = bool(main.get("simulated"))
    decision = str(main.get("decision", "n/a"))
    when = (f" at look {main['stopped_at_look']}" if main.get("stopped_at_look") is not None
            else f" after {main.get('n_looks', 'n/a')} look(s)")
    cand = (r5.get("candidate") or {}).get("checkpoint", "n/a")
    text = (('<span class="sim-label">SIMULATED</span> ' if sim else "")
            + f"{_e(decision.upper())} for <code>{_e(cand)}</code>{when}")
    if decision == "stop (SRM)":
        text += " (sample-ratio mismatch: the assignment or the logging is broken; no verdict is trusted)"
    guards = [g for g in main.get("guardrails") or [] if g.get("metric") != "satisfaction"]
    if guards:
        text += (f"; guardrails non-inferior at that look: {sum(bool(g.get('final_non_inferior')) for g in guards)}"
                 f"/{len(guards)}")
    plan = r5.get("power_plan") or main.get("power_plan")
    if plan:
        text += (f"; power plan: {_e(plan.get('days_needed') if plan.get('days_needed') is not None else 'n/a')} day(s) "
                 f"needed, {_e(plan.get('days_scheduled'))} scheduled" + ("" if plan.get("sufficient") else " (UNDERPOWERED)"))
    if worse:
        fired = worse.get("decision") == "roll back"
        text += (f"; the 'worse' scenario ends in {_e(str(worse.get('decision', 'n/a')).upper())}, so the rollback "
                 f"trigger {'works' if fired else 'did NOT fire'}")
    if broken:
        text += (f"; the broken-assignment scenario ends in {_e(str(broken.get('decision', 'n/a')).upper())}: "
                 + _e(_srm_check_text(broken)))
    text += " (simulated logs, not real users)." if sim else " (real rollout logs)."
    trigger_failed = bool(worse) and worse.get("decision") != "roll back"
    return text, "bad" if trigger_failed else {"cut over": "ok", "roll back": "bad", "stop (SRM)": "bad"}.get(decision, "info")


def trust_problems(M: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(section id, sentence) for everything that makes the run untrustworthy."""
    from quantstudy.pipeline.manifest import budget_changed_after_results

    man = M["manifest"]
    out = []
    if budget_changed_after_results(man):
        out.append(("verdict", "the quality budget was changed after results were seen"))
    stale = stale_steps(man)
    if stale:
        out.append(("steps", "stale or failed re-run: " + "; ".join(f"{k} ({v})" for k, v in stale.items())))
    flagged = M["02_quantize"].get("worse_than_rtn_on_own_domain") or []
    if flagged:
        out.append(("flagged-rtn", f"{len(flagged)} AWQ checkpoint(s) worse than round-to-nearest on their own "
                                   f"calibration domain ({', '.join(flagged)})"))
    older = _older_steps(man)
    if older:
        out.append(("steps", f"{len(older)} step(s) computed under an older commit ({', '.join(older)})"))
    return out


def _answer_trust(M: Mapping[str, Any], base: str) -> tuple[str, str]:
    problems = trust_problems(M)
    if not problems:
        return ("Nothing flagged: budget unchanged since the results, no stale steps, AWQ never worse than "
                "round-to-nearest on its own domain, every step at the stamped commit."), "ok"
    items = "; ".join(f'<a href="{base}#{a}">{_e(t)}</a>' for a, t in problems)
    return f"<strong>{len(problems)} warning(s)</strong>: {items}.", "bad"


def answer_html(M: Mapping[str, Any], base: str = "", box_id: str = "answer") -> str:
    """The answer box: one generated line per question, each linking to its section (``base``
    prefixes the links, for a page that is not the report itself). One line of HTML."""
    lines = [("Does the calibration data matter?", "effects", *_answer_calibration(M)),
             ("Can we ship 4-bit?", "budget", *_answer_budget(M)),
             ("Speed and memory", "speed-cost", *_answer_speed(M)),
             ("Rollout", "verdict", *_answer_rollout(M)),
             ("Can we trust this run?", "checklist", *_answer_trust(M, base))]
    items = "".join(f'<li class="answer-{cls}"><a class="answer-q" href="{base}#{anchor}">{q}</a> {text}</li>'
                    for q, anchor, text, cls in lines)
    return (f'<div id="{box_id}" class="answer"><p class="answer-head"><strong>The answer</strong> '
            "<small>(generated from this run's metrics; each line links to its section)</small></p>"
            f"<ul>{items}</ul></div>")


def _toc(M: Mapping[str, Any]) -> str:
    e3 = M["03_evaluate"]
    entries = [("answer", "The answer"), ("stamp", "Run stamp"), ("steps", "Steps and notebooks"),
               ("situation", "Situation"), ("decision", "Decision"), ("execution", "Execution"),
               ("budget", "Quality vs budget"), ("effects", "Calibration effects"),
               *([("flips", "Flips")] if e3.get("flips") else []),
               *([("reference-tasks", "Reference tasks")] if e3.get("reference_tasks") else []),
               ("flagged-rtn", "AWQ vs round-to-nearest"), ("speed-cost", "Speed, memory, cost"),
               ("verdict", "Rollout verdict"), ("candidate", "Candidate rule"), ("lessons", "Lessons"),
               ("checklist", "Process checklist")]
    items = "".join(f'<li><a href="#{a}">{t}</a></li>' for a, t in entries)
    return f'<nav id="toc" class="toc"><strong>Contents</strong><ol>{items}</ol></nav>'


# =========================================================================== figures
def _plt():
    import matplotlib.pyplot as plt

    return plt


CAPTIONS = {  # one sentence per figure: what to look at
    "calibration": "Look at whether the in-domain sets cover more domain terms than the generic ones, and at the "
                   "overlap with the evaluation text, which should stay low (no leakage).",
    "search_settings": "Look at whether the extra AutoAWQ search settings buy a lower perplexity for their longer "
                       "search time.",
    "budget": "Look at the worse end of each interval against the dashed budget line: a line passes only when the "
              "whole interval stays inside it.",
    "effects": "Look at whether each interval crosses the dashed zero line: grey points are within noise, blue ones "
               "are real differences between calibration sources.",
    "matrix": "Look along each row for the evaluation domain a calibration source hurts least and most.",
    "category_damage": "Look at which token categories lose the most under quantization, and whether in-domain "
                       "calibration shrinks that loss.",
    "speedups": "Look for bars below 1x: those paths run slower than the float baseline (the trap).",
    "memory_cost": "Look at how far the 4-bit paths cut weight memory, and whether that buys fewer devices and a "
                   "lower cost per 1,000 conversations.",
    "rollout": "Look at the one-sided lower bound against the dotted margin line: cut over needs it above the "
               "margin at the final stage.",
    "worse_scenario": "Look at where the 'worse' scenario stops: the rollback trigger must fire before the full "
                      "cut-over.",
    "power_plan": "Look at the day each metric's power crosses the dotted per-metric target, against the dashed end "
                  "of the schedule: a crossing after it means the rollout will likely end in hold.",
    "guardrails": "Look at each metric's one-sided bound against its dotted margin on the metric's bad side: cut over "
                  "needs every bound on the good side at the final stage; shaded looks failed the SRM check.",
    "broken_assignment_scenario": "Look at the shaded looks: with a logging bug that loses part of the quantized arm, "
                                  "the SRM check must stop the rollout before any verdict.",
}
_figures = {"n": 0}


def start_figures() -> None:
    """Number the report's figures from 1 again (the report notebook's setup cell calls it)."""
    _figures["n"] = 0


def _png_base64(fig) -> str:
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def show(fig, caption: str | None = None) -> None:
    """Display a figure in the executing notebook and release it: with a caption, as a numbered
    ``<figure>`` (embedded PNG, "Figure N." caption); without one, as a plain PNG output."""
    if fig is None:
        return
    from IPython.display import HTML, display

    if caption is None:
        display(fig)
    else:
        _figures["n"] += 1
        n = _figures["n"]
        display(HTML(f'<figure id="figure-{n}" class="report-figure"><img src="data:image/png;base64,'
                     f'{_png_base64(fig)}" alt="Figure {n}: {_e(caption)}"><figcaption><strong>Figure {n}.</strong> '
                     f"{_e(caption)}</figcaption></figure>"))
    try:
        _plt().close(fig)
    except Exception:  # noqa: BLE001 - a bare Figure is not managed by pyplot
        pass


def _fig(name: str, call: str | None = None) -> tuple[str, str]:
    """The code cell that draws figure ``name`` with its caption."""
    return "code", f'R.show(R.{call or f"fig_{name}(M)"}, R.CAPTIONS["{name}"])'


def fig_calibration(M: Mapping[str, Any]):
    """Tokens drawn vs kept by AutoAWQ, domain-term coverage and 3-gram overlap per set."""
    plt = _plt()
    m = M["01_calibration"]
    sets = m.get("sets") or []
    if not sets:
        return None
    names = [s["name"] for s in sets]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.35 * len(names) + 2.4))
    y = range(len(names))
    ax = axes[0]
    ax.barh([i + 0.2 for i in y], [s.get("tokens") or 0 for s in sets], height=0.4, color="#9ecae1", label="drawn")
    ax.barh([i - 0.2 for i in y], [s.get("kept_by_autoawq") or 0 for s in sets], height=0.4, color="#3182bd",
            label="kept by AutoAWQ")
    ax.set_yticks(list(y), names, fontsize=8)
    ax.set(title="Calibration tokens per set", xlabel="tokens")
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[1]
    cov = m.get("coverage") or {}
    cats = sorted({c for n in names for c in (cov.get(n) or {})})
    if cats:
        h = 0.8 / len(cats)
        for k, c in enumerate(cats):
            ax.barh([i - 0.4 + h * (k + 0.5) for i in y], [100 * ((cov.get(n) or {}).get(c, {}).get("share") or 0)
                                                           for n in names], height=h, label=c)
        ax.legend(title="term category", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no domain lexicon", ha="center", transform=ax.transAxes)
    ax.set_yticks(list(y), names, fontsize=8)
    ax.set(title="Domain-term coverage", xlabel="% of lexicon terms present")
    ax = axes[2]
    ov = m.get("overlap_3gram") or {}
    ax.barh(list(y), [100 * (ov.get(n) or 0) for n in names], color="#fdae6b")
    ax.set_yticks(list(y), names, fontsize=8)
    ax.set(title="Overlap with in-domain evaluation text", xlabel="% of word 3-grams found in eval text")
    fig.tight_layout()
    return fig


def fig_search_settings(M: Mapping[str, Any]):
    """quantize.plot_search_settings, redrawn from step 02's checkpoint records and sanity rows."""
    q = M["02_quantize"]
    if not any(r.get("variant") for r in q.get("checkpoints") or []):
        return None
    from quantstudy.steps.quantize import plot_search_settings

    return plot_search_settings(q["checkpoints"], q.get("sanity") or [])


def fig_budget(M: Mapping[str, Any]):
    rows = M["03_evaluate"].get("budget") or []
    if not rows:
        return None
    from quantstudy.steps.evaluate import plot_budget

    fig = plot_budget(rows)
    for ax in fig.axes:  # keep the legend off the bottom row of points
        if ax.get_legend() is not None:
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    fig.set_size_inches(fig.get_size_inches()[0], fig.get_size_inches()[1] + 0.6)
    fig.tight_layout()
    return fig


def fig_effects(M: Mapping[str, Any]):
    """Forest plot of the calibration-source effects, one panel per unit."""
    plt = _plt()
    effects = M["03_evaluate"].get("calibration_effects") or []
    if not effects:
        return None
    units = list(dict.fromkeys(e.get("unit", "") for e in effects))
    n_max = max(sum(e.get("unit", "") == u for e in effects) for u in units)
    fig, axes = plt.subplots(1, len(units), figsize=(6.5 * len(units), 0.38 * n_max + 2.9), squeeze=False)
    ci = _ci_level(M)
    for ax, unit in zip(axes[0], units):
        sub = [e for e in effects if e.get("unit", "") == unit]
        for i, e in enumerate(sub):
            color = "#7f7f7f" if e.get("within_noise") else "#1f77b4"
            ax.errorbar(e["point"], i, xerr=[[e["point"] - e["lo"]], [e["hi"] - e["point"]]], fmt="o", color=color,
                        capsize=3)
        ax.axvline(0, color="black", lw=1, ls="--", label="no effect")
        ax.set_yticks(range(len(sub)), [f"{e['a']} vs {e['b']}: {_label(e['metric'])}" for e in sub], fontsize=8)
        directions = {_lower_is_better(e["metric"], unit) for e in sub}
        better = ("lower = better" if directions == {True} else "higher = better" if directions == {False}
                  else "flip rate: lower = better; accuracy: higher = better")
        ax.set(title=f"Calibration-source effect ({unit})", xlabel=f"difference a - b ({unit}, {ci}; {better})")
        ax.plot([], [], "o", color="#7f7f7f", label="within noise (CI includes 0)")
        ax.plot([], [], "o", color="#1f77b4", label="CI excludes 0")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    fig.tight_layout()
    return fig


def matrix_frame(M: Mapping[str, Any]):
    import pandas as pd

    mat = M["03_evaluate"].get("cross_domain_matrix") or {}
    return pd.DataFrame.from_dict(mat, orient="index") if mat else None


def fig_matrix(M: Mapping[str, Any]):
    frame = matrix_frame(M)
    if frame is None or frame.empty:
        return None
    from quantstudy.steps.evaluate import plot_matrix

    fig = plot_matrix(frame.astype(float))
    fig.set_size_inches(10, 4.4)
    ax = fig.axes[0]
    ax.tick_params(axis="y", labelrotation=0)
    ax.tick_params(axis="x", labelrotation=15)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    fig.tight_layout()
    return fig


def fig_category_damage(M: Mapping[str, Any]):
    import pandas as pd
    import seaborn as sns

    plt = _plt()
    rows = M["03_evaluate"].get("category_damage") or []
    if not rows:
        return None
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    sns.barplot(data=df, x="category", y="delta_nll_mnats", hue="calibration", ax=ax, errorbar=("pi", 100),
                capsize=0.1)
    ax.axhline(0, color="grey", lw=1)
    ax.set(title="Where quantization hurts: NLL increase per token category (in-domain text)",
           xlabel="token category (scored tokens)",
           ylabel="mean NLL change vs baseline\n(millinats/token; bars: range over draws)")
    ax.legend(title="calibration source", fontsize=8)
    fig.tight_layout()
    return fig


def fig_speedups(M: Mapping[str, Any]):
    import pandas as pd

    models = _bench_models(M)
    results = {}
    for name, r in models.items():
        sp = pd.DataFrame(r.get("speedups") or [])
        if sp.empty:
            continue
        if "scope" not in sp.columns:
            sp["scope"] = "full_model"
        elif not (sp["scope"] == "full_model").any():
            sp = sp[sp["scope"] == "measured"].assign(scope="full_model")
        results[name] = {"speedups": sp}
    if not results:
        return None
    from quantstudy.steps.benchmark import plot_speedups

    _, main = _main_bench(M)
    return plot_speedups(results, (main.get("env") or {}).get("hardware_label") or "this hardware")


def fig_memory_cost(M: Mapping[str, Any]):
    """Whole-model weight memory and fleet cost per inference path (step 04's main model)."""
    plt = _plt()
    name, r = _main_bench(M)
    mem = r.get("memory") or []
    if not mem:
        return None
    colors = {"baseline": "#7f7f7f", "naive4": "#ff7f0e", "fast4": "#2ca02c"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    paths = [m["path"] for m in mem]
    gb = [(_num(m.get("weight_bytes_full_model")) or 0) / 1e9 for m in mem]
    axes[0].bar(paths, gb, color=[colors.get(p, "#1f77b4") for p in paths])
    for x, v in zip(paths, gb):
        axes[0].text(x, v, f"{v:,.3f}", ha="center", va="bottom", fontsize=8)
    axes[0].set(title=f"{name}: weight memory per path", ylabel="GB (10^9 bytes), whole model")
    fleet = [f for p in paths if (f := _fleet_row(r, p))]
    fp = [f["path"] for f in fleet]
    axes[1].bar(fp, [f.get("devices_at_peak") or 0 for f in fleet], color=[colors.get(p, "#1f77b4") for p in fp])
    for x, f in zip(fp, fleet):
        axes[1].text(x, f.get("devices_at_peak") or 0, f"{f.get('devices_at_peak')} ({f.get('bound_by')})",
                     ha="center", va="bottom", fontsize=8)
    axes[1].set(title="Devices needed at peak", ylabel="devices (label: what bounds the fleet)")
    axes[2].bar(fp, [f.get("cost_per_1000_conversations") or 0 for f in fleet],
                color=[colors.get(p, "#1f77b4") for p in fp])
    for x, f in zip(fp, fleet):
        axes[2].text(x, f.get("cost_per_1000_conversations") or 0, _money(f.get("cost_per_1000_conversations")),
                     ha="center", va="bottom", fontsize=8)
    axes[2].set(title="Cost per 1,000 conversations", ylabel="$ per 1,000 conversations (fleet sized for peak)")
    hw = (r.get("env") or {}).get("hardware_label") or ""
    fig.suptitle(f"Memory, fleet and cost per inference path ({name} model on {hw}; batch "
                 f"{fleet[0].get('batch_size') if fleet else 'n/a'})", fontsize=10)
    fig.tight_layout()
    return fig


def looks_frame(summary: Mapping[str, Any]):
    import pandas as pd

    looks = pd.DataFrame(summary.get("looks") or [])
    looks.attrs.update({"stopped_at_look": summary.get("stopped_at_look"), "method": summary.get("method"),
                        "metrics": summary.get("guardrails") or []})
    return looks


def fig_rollout(M: Mapping[str, Any], scenario: str = "rollout"):
    """rollout.plot_sequential, redrawn from step 05's looks (``scenario``: rollout or worse_scenario)."""
    summary = M["05_rollout_analysis"].get(scenario)
    if not summary or not summary.get("looks"):
        return None
    from quantstudy.steps.rollout import plot_sequential

    looks = looks_frame(summary)
    fig = plot_sequential(looks, float(summary.get("margin") or 0.0), bool(summary.get("simulated")))
    which = ("Rollback-trigger check, 'worse' scenario" if scenario == "worse_scenario"
             else f"Rollout of the candidate, scenario '{summary.get('scenario') or 'real logs'}'")
    for ax in fig.axes[:1]:
        ax.set_title(f"{which}\n{ax.get_title()}", fontsize=10)
    return fig


def fig_guardrails(M: Mapping[str, Any], scenario: str = "rollout"):
    """rollout.plot_guardrails redrawn from step 05's looks (``scenario``: rollout,
    worse_scenario or broken_assignment_scenario); None for a run recorded before guardrails."""
    summary = M["05_rollout_analysis"].get(scenario)
    if not summary or not summary.get("looks") or not summary.get("guardrails"):
        return None
    from quantstudy.steps.rollout import plot_guardrails

    fig = plot_guardrails(looks_frame(summary), bool(summary.get("simulated")))
    which = ("SRM check, 'broken_assignment' scenario" if scenario == "broken_assignment_scenario"
             else "Rollback-trigger check, 'worse' scenario" if scenario == "worse_scenario"
             else f"Rollout of the candidate, scenario '{summary.get('scenario') or 'real logs'}'")
    fig.suptitle(f"{which}\n{fig.get_suptitle()}", fontsize=10)
    return fig


def power_plan_frame(plan: Mapping[str, Any]):
    """The power plan as rollout.power_plan returns it, rebuilt from step 05's metrics.json."""
    import pandas as pd

    out = pd.DataFrame(plan.get("metrics") or [])
    out.attrs.update({k: v for k, v in plan.items() if k != "metrics"})
    return out


def fig_power_plan(M: Mapping[str, Any]):
    """rollout.plot_power redrawn from step 05's power plan; None for a run recorded before it."""
    plan = M["05_rollout_analysis"].get("power_plan")
    if not plan or not plan.get("curve"):
        return None
    from quantstudy.steps.rollout import plot_power

    return plot_power(power_plan_frame(plan))


# =========================================================================== markdown sections
def _stamp(M: Mapping[str, Any], run_dir: Path) -> str:
    man = M["manifest"]
    p = man.get("params") or {}
    git = man.get("git") or {}
    sha = git.get("commit") or "unknown"
    dirty = git.get("dirty")
    sha_text = f"`{sha}`" + (" **(dirty: uncommitted changes)**" if dirty else " (clean)" if dirty is False else "")
    run_id = man.get("run_id") or run_dir.name
    g = lambda sec, key: (p.get(sec) or {}).get(key)  # noqa: E731
    summary = [
        ("study", f"name {g('study', 'name')}, seed {g('study', 'seed')}, device {g('study', 'device')}"),
        ("model", f"{g('model', 'path')} ({g('model', 'source')}, {g('model', 'dtype')})"),
        ("calibration", f"sources {g('calibration', 'sources')}, {g('calibration', 'draws')} draw(s), "
                        f"{g('calibration', 'n_samples')} samples x {g('calibration', 'max_seq_len')} tokens, "
                        f"scrub {g('calibration', 'scrub')}"),
        ("quantize", f"bits {g('quantize', 'bits')}, group size {g('quantize', 'group_size')}, zero point "
                     f"{g('quantize', 'zero_point')}, {g('quantize', 'version')}, RTN reference "
                     f"{g('quantize', 'rtn_reference')}, compare search settings {g('quantize', 'compare_search_settings')}"),
        ("evaluate", f"window {g('evaluate', 'window')}/stride {g('evaluate', 'stride')}, "
                     f"{g('evaluate', 'max_eval_tokens')} tokens per domain, {g('evaluate', 'bootstrap_samples')} "
                     f"bootstrap samples, confidence {g('evaluate', 'confidence')}"),
        ("benchmark", f"paths {g('benchmark', 'paths')}, batches {g('benchmark', 'batch_sizes')}, contexts "
                      f"{g('benchmark', 'context_lengths')}, hardware label '{g('benchmark', 'hardware_label')}'"),
        ("rollout", f"stages {g('rollout', 'stages')}, {g('rollout', 'days_per_stage')} day(s) per stage, "
                    f"{g('rollout', 'daily_conversations')} conversations/day, logs "
                    f"{g('rollout', 'logs') or 'none (simulator)'}"),
    ]
    steps = man.get("steps") or {}
    step_rows = []
    for name in STEP_NAMES:
        rec = steps.get(name) or {}
        commit = rec.get("git_commit")
        computed = (f"`{str(commit)[:12]}`" + (" (dirty)" if rec.get("git_dirty") else "")) if commit else "n/a"
        if name in _older_steps(man):
            computed += " **older commit**"
        step_rows.append(f"| {name} | {rec.get('status', 'n/a')} | {fmt(rec.get('duration_s'), 1)} | "
                         f"{rec.get('start') or 'n/a'} | {computed} | {_notebook_links(rec, name, run_dir)} | "
                         f"[{name}/{METRICS}]({name}/{METRICS}) |")
    older = _older_steps(man)
    ticks = _checklist(M, run_dir)
    n_ok = sum(t for t, _, _ in ticks)
    return "\n".join([
        '<div id="stamp">',
        "",
        "## Run stamp",
        "",
        f"- **Run id:** `{run_id}`",
        f"- **Git SHA:** {sha_text}",
        f"- **Params file:** `{man.get('params_file', 'n/a')}` (resolved copy: [params.yaml](params.yaml))",
        f"- **Created / updated:** {man.get('created', 'n/a')} / {man.get('updated', 'n/a')}",
        f"- **Python:** {man.get('python', 'n/a')} on {man.get('platform', 'n/a')}",
        f"- **Process checklist:** {n_ok}/{len(ticks)} ticked ([details](#checklist))",
        "",
        "**Params summary**",
        "",
        md_table([{"section": k, "values": v} for k, v in summary]),
        "",
        '<div id="steps">',
        "",
        "**Steps** (executed notebooks rendered to HTML with code and outputs, and metrics; relative to this run "
        "folder)",
        "",
        "| step | status | duration (s) | started | computed at commit | executed notebook | metrics |",
        "|---|---|---|---|---|---|---|",
        *step_rows,
        "",
        (f"**{len(older)} step(s) were computed under an older commit than the one stamped above** "
         f"({', '.join(older)}): their library code hash matched, so their results were kept." if older else ""),
        "",
        "</div>",
        "",
        "</div>",
    ])


def _title(M: Mapping[str, Any], run_dir: Path) -> str:
    return f"# Quantization study report: run `{M['manifest'].get('run_id') or run_dir.name}`"


def _older_steps(man: Mapping[str, Any]) -> list[str]:
    """Steps whose recorded commit differs from the commit stamped on the run."""
    sha = (man.get("git") or {}).get("commit")
    steps = man.get("steps") or {}
    return [n for n in STEP_NAMES if sha and (steps.get(n) or {}).get("git_commit") not in (None, sha)]


def _notebook_links(rec: Mapping[str, Any], name: str, run_dir: Path) -> str:
    """The executed notebook as HTML (when rendered) with a small link to the .ipynb."""
    nb = rec.get("notebook") or f"notebooks/{name}.ipynb"
    page = str(Path(nb).with_suffix(".html"))
    if (run_dir / page).is_file():
        return f"[{name} (HTML)]({page}) <small>([.ipynb]({nb}))</small>"
    return f"[{nb}]({nb})"


def _independent_pii_md(indep: Mapping[str, Any] | None) -> str:
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
    return "\n".join([
        '<div id="pii-independent">', "",
        "**PII scrub on text this project did not generate** (hand-labelled support sentences in other formats; "
        "the holdout set was written after the patterns were widened and never tuned on, so it is the estimate for "
        "unseen formats):", "", md_table(rows), "",
        f"Holdout survivors (masked): {leaks or 'none'}; false-positive spans on its PII-free sentences: {fmt(fp)}.",
        "", "</div>"])


def _situation(M: Mapping[str, Any]) -> str:
    name, r = _main_bench(M)
    mem = _memory_row(r, "baseline") or {}
    fleet = _fleet_row(r, "baseline") or {}
    demo = _bench_models(M).get("demo") if name != "demo" else None
    lines = ['<div id="situation">', "", "## Situation", "",
             f"The float baseline ({name} model, step 04) as it serves today, on "
             f"**{fleet.get('hardware') or (r.get('env') or {}).get('hardware_label', 'n/a')}**:", ""]
    rows = [
        {"quantity": "weight bytes, whole model (in memory)", "value": f"{fmt(mem.get('weight_bytes_full_model'), 0)} B "
                                                                   f"({_gb(mem.get('weight_bytes_full_model'))})"},
        {"quantity": "weight bytes on disk", "value": _gb(mem.get("weight_bytes_on_disk"))},
        {"quantity": "decode throughput per device", "value": f"{fmt(fleet.get('decode_tokens_per_s_per_device'))} tokens/s "
                                                          f"(batch {fleet.get('batch_size', 'n/a')})"},
        {"quantity": "required throughput at peak", "value": f"{fmt(fleet.get('required_tokens_per_s'))} tokens/s"},
        {"quantity": "fleet devices at peak", "value": f"{fleet.get('devices_at_peak', 'n/a')} ({fleet.get('bound_by', 'n/a')}-bound)"},
        {"quantity": "fleet cost per hour", "value": _money(fleet.get("cost_per_hour"))},
        {"quantity": "cost per 1,000 conversations", "value": _money(fleet.get("cost_per_1000_conversations"))},
    ]
    if demo:
        dm = _memory_row(demo, "baseline") or {}
        rows.append({"quantity": "demo model weight bytes (the one quantized for quality)",
                     "value": f"{fmt(dm.get('weight_bytes_full_model'), 0)} B ({_mb(dm.get('weight_bytes_full_model'))})"})
    lines += [md_table(rows), "", "</div>"]
    return "\n".join(lines)


def _decision(M: Mapping[str, Any]) -> str:
    q = M["02_quantize"]
    awq = [c for c in q.get("checkpoints") or [] if c.get("method") == "awq"]
    bits = sorted({c.get("bits") for c in awq if c.get("bits") is not None})
    groups = sorted({c.get("group_size") for c in awq if c.get("group_size") is not None})
    zp = sorted({str(c.get("zero_point")) for c in awq})
    ver = sorted({str(c.get("version")) for c in awq})
    simulated = sorted({c.get("bits") for c in awq if c.get("simulated")})
    declared = M["03_evaluate"].get("budget_declared") or []
    cand = M["05_rollout_analysis"].get("candidate") or {}
    rows = [{k: v if isinstance(v, str) else json.dumps(v) for k, v in line.items()} for line in declared]
    return "\n".join([
        '<div id="decision">', "", "## Decision", "",
        f"- **Method:** AWQ (activation-aware weight quantization, AutoAWQ), {len(awq)} AWQ checkpoint(s) built",
        f"- **Bits:** {', '.join(map(str, bits)) or 'n/a'}" + (f" (simulated, not packed: {simulated})" if simulated else ""),
        f"- **Group size:** {', '.join(map(str, groups)) or 'n/a'}; zero point {', '.join(zp)}; kernel layout {', '.join(ver)}",
        f"- **Rollout candidate** (step 05): `{cand.get('checkpoint', 'n/a')}`"
        + (f" (rule `{cand['rule']}`, [how it is chosen](#candidate))" if cand.get("rule") else ""),
        "",
        '<div id="budget-declared">', "",
        "**Quality budget as declared** (echoed unchanged from `03_evaluate/metrics.json` `budget_declared`; "
        "`max_drop` is the allowed degradation in `unit`):", "",
        md_table(rows, ["metric", "max_drop", "unit"]) if rows else "_no budget declared_", "",
        "```json", "[" + ",\n ".join(json.dumps(line) for line in declared) + "]", "```", "",
        "</div>", "", "</div>",
    ])


def _execution(M: Mapping[str, Any]) -> list[tuple[str, str]]:
    """[(kind, source)] cells of the Execution section."""
    c = M["01_calibration"]
    q = M["02_quantize"]
    man = M["manifest"]
    sets = c.get("sets") or []
    set_rows = [{"set": s["name"], "source": s.get("source"), "draw": s.get("draw"), "samples": s.get("n_samples"),
                 "texts": s.get("n_texts"), "texts split": s.get("texts_split"), "tokens drawn": fmt(s.get("tokens"), 0),
                 "tokens kept by AutoAWQ": fmt(s.get("kept_by_autoawq"), 0),
                 "kept (%)": fmt(100 * s["kept_by_autoawq"] / s["tokens"], 1)
                 if _num(s.get("kept_by_autoawq")) is not None and _num(s.get("tokens")) else "n/a",
                 "3-gram overlap (%)": fmt(100 * _num((c.get("overlap_3gram") or {}).get(s["name"]) or 0), 1)}
                for s in sets]
    scrub = c.get("scrub") or {}
    types = sorted(set(scrub.get("replaced_by_type") or {}) | set(scrub.get("planted_by_type") or {}))
    scrub_rows = [{"PII type": t, "scrubbed (replaced)": (scrub.get("replaced_by_type") or {}).get(t, 0),
                   "planted (demo record)": (scrub.get("planted_by_type") or {}).get(t, "n/a"),
                   "recall": fmt((scrub.get("recall_by_type") or {}).get(t), 4)} for t in types]
    total = sum((scrub.get("replaced_by_type") or {}).values())
    if scrub.get("scored"):
        scrub_note = (f"{total} PII spans scrubbed from the in-domain calibration pool; recall measured against "
                      f"the planted record: {scrub.get('n_survivors', 0)} planted instance(s) survived.")
    else:
        scrub_note = f"{total} PII spans scrubbed; no planted-PII record, so recall was not measured."
    pools = c.get("pools") or {}
    cal_md = "\n".join([
        '<div id="execution">', "", "## Execution", "", "### Calibration sets (step 01)", "",
        f"Pools: {fmt(pools.get('generic_texts'))} generic texts, {fmt(pools.get('in_domain_texts'))} in-domain "
        f"conversations (after scrubbing). Step 01 wall time {fmt(c.get('wall_s'), 1)} s.", "",
        md_table(set_rows), "", "**PII scrub**: " + scrub_note, "", md_table(scrub_rows) if scrub_rows else "", "",
        _independent_pii_md(c.get("pii_independent")), "",
        "</div>",
    ])
    cks = q.get("checkpoints") or []
    run_rows = [{"checkpoint": r["name"], "method": r.get("method"), "bits": r.get("bits"),
                 "group": r.get("group_size"), "calibration": r.get("calibration_source") or "none",
                 "draw": "" if r.get("draw") is None else r.get("draw"),
                 "duo_scaling / apply_clip": "" if r.get("method") != "awq" else f"{r.get('duo_scaling')} / {r.get('apply_clip')}",
                 "simulated": fmt(r.get("simulated")), "search (s)": fmt(r.get("search_wall_s"), 1),
                 "peak RSS (MB)": fmt(r.get("peak_rss_mb"), 0), "size on disk": _mb(r.get("checkpoint_bytes")),
                 "bits/weight": fmt(r.get("effective_bits_per_weight"), 3)} for r in cks]
    ci = _ci_level(M)
    sanity_rows = []
    for s in q.get("sanity") or []:
        vs = [f"{d}: {fmt(v['point'], 3, True)} [{fmt(v['lo'], 3, True)}, {fmt(v['hi'], 3, True)}]"
              for d in ("generic", "in_domain") if (v := s.get(f"vs_rtn_pct_{d}"))]
        sanity_rows.append({"model": s["name"], "ppl generic": fmt(s.get("ppl_generic"), 3),
                            "ppl in-domain": fmt(s.get("ppl_in_domain"), 3),
                            f"vs RTN on own domain (% ppl, {ci})": "; ".join(vs),
                            "worse than RTN": fmt(s.get("worse_than_rtn_on_own_domain")) if "worse_than_rtn_on_own_domain" in s else ""})
    targets = q.get("targets") or {}
    t_rows = [{"target": k, "measured": fmt(v.get("measured"), 1), "target value": fmt(v.get("target"), 1),
               "met": fmt(v.get("met"))} for k, v in targets.items()]
    quant_md = "\n".join([
        "### Quantization runs (step 02)", "",
        md_table(run_rows), "",
        f"Sanity perplexities on held-out text (lower is better; change vs RTN in %, {ci}):", "",
        md_table(sanity_rows), "",
        "Step 02 targets:", "", md_table(t_rows) if t_rows else "_none_",
    ])
    settings = q.get("search_settings") or []
    if settings:
        s_rows = []
        for s in settings:
            v = s.get("vs_rtn_in_domain") or {}
            s_rows.append({"checkpoint": s["name"], "duo_scaling": s.get("duo_scaling"), "apply_clip": s.get("apply_clip"),
                           "search (s)": fmt(s.get("search_wall_s"), 1), "ppl in-domain": fmt(s.get("ppl_in_domain"), 3),
                           f"vs RTN in-domain (%, {ci})": f"{fmt(v.get('point'), 3, True)} [{fmt(v.get('lo'), 3, True)}, "
                                                         f"{fmt(v.get('hi'), 3, True)}]" if v else "n/a"})
        search_md = "\n".join(["### AutoAWQ search settings (same calibration set)", "", md_table(s_rows)])
    else:
        flag = ((man.get("params") or {}).get("quantize") or {}).get("compare_search_settings")
        search_md = ("### AutoAWQ search settings\n\nNot compared in this run"
                     + (" (`quantize.compare_search_settings: false`)." if flag is False else "."))
    cells = [("markdown", cal_md), _fig("calibration"), ("markdown", quant_md),
             ("markdown", search_md)]
    if settings:
        cells.append(_fig("search_settings"))
    return cells


def _outcome(M: Mapping[str, Any]) -> list[tuple[str, str]]:
    e3 = M["03_evaluate"]
    q = M["02_quantize"]
    ci = _ci_level(M)
    cells: list[tuple[str, str]] = []
    # ---- quality vs budget
    rows = []
    for r in e3.get("budget") or []:
        c = r.get("ci") or {}
        if str(r.get("metric", "")).endswith("_ppl"):
            lo, hi = c.get("lo"), c.get("hi")
        else:
            lo = -c["hi"] if _num(c.get("hi")) is not None else None
            hi = -c["lo"] if _num(c.get("lo")) is not None else None
        rows.append({"checkpoint": r["checkpoint"], "metric": r["metric"], "budget": f"{fmt(r.get('limit'))} {r.get('unit')}",
                     "degradation": fmt(r.get("degradation"), 2, True), f"{ci} of degradation": f"[{fmt(lo, 2, True)}, {fmt(hi, 2, True)}]",
                     "worst case": fmt(r.get("worst_case"), 2, True), "verdict": str(r.get("verdict", "")).upper()})
    verdicts = e3.get("verdict_by_checkpoint") or {}
    passed = [k for k, v in verdicts.items() if v == "pass"]
    v_rows = [{"checkpoint": k, "overall verdict": v.upper()} for k, v in verdicts.items()]
    cells.append(("markdown", "\n".join([
        '<div id="outcome">', "", "## Outcome", "", "</div>", "",
        '<div id="budget">', "", "### Quality vs the declared budget (step 03)", "",
        f"Degradation against the exact float baseline (accuracy: points lost; perplexity: % increase), with the "
        f"paired-bootstrap {ci}. A line passes only when the worse end of the interval stays inside the budget; "
        f"it fails when the point estimate is outside, and is inconclusive otherwise.", "",
        md_table(rows), "",
        f"**Overall:** {len(passed)} of {len(verdicts)} checkpoint(s) pass every budget line"
        + (f": {', '.join(f'`{p}`' for p in passed)}." if passed else "."), "",
        md_table(v_rows), "", "</div>"])))
    cells.append(_fig("budget"))
    # ---- calibration effects
    eff = e3.get("calibration_effects") or []
    e_rows = [{"comparison": f"{e['a']} vs {e['b']}", "metric": e["metric"], "effect (a - b)": f"{fmt(e['point'], 2, True)} {e.get('unit', '')}",
               ci: f"[{fmt(e['lo'], 2, True)}, {fmt(e['hi'], 2, True)}]", "draws": f"{e['draws'][0]} vs {e['draws'][1]}",
               "reading": "within noise" if e.get("within_noise") else "CI excludes 0"} for e in eff]
    key = [_effect_sentence(e, ci) for e in _effects(M)]
    cells.append(("markdown", "\n".join([
        '<div id="effects">', "", "### Does calibration data matter? Generic vs in-domain", "",
        *(f"- {s}" for s in key), "" if key else "_No in-domain vs generic comparison in this run._", "",
        f"Effect size = mean over draws of source a minus source b (accuracy points, or % perplexity); the {ci} "
        "resamples both evaluation items and calibration draws.", "",
        md_table(e_rows) if e_rows else "", "", "</div>"])))
    if eff:
        cells.append(_fig("effects"))
    # ---- flips and reference tasks
    cells += _flip_cells(M)
    # ---- matrix + category damage
    mat = e3.get("cross_domain_matrix") or {}
    if mat:
        cols = list(dict.fromkeys(c for row in mat.values() for c in row))
        m_rows = [{"calibration source": src, **{c: fmt(vals.get(c), 2, True) for c in cols}} for src, vals in mat.items()]
        cells.append(("markdown", "\n".join([
            "### Cross-domain matrix", "",
            "Change against the baseline by calibration source (mean over draws): perplexity in %, accuracy in points.", "",
            md_table(m_rows)])))
        cells.append(_fig("matrix"))
    if e3.get("category_damage"):
        cells.append(_fig("category_damage"))
    # ---- worse than RTN
    flagged = q.get("worse_than_rtn_on_own_domain") or []
    by = {s["name"]: s for s in q.get("sanity") or []}
    if flagged:
        items = []
        for n in flagged:
            s = by.get(n, {})
            parts = [f"{d}: {fmt(v['point'], 3, True)}% perplexity vs RTN ({ci} [{fmt(v['lo'], 3, True)}, {fmt(v['hi'], 3, True)}])"
                     for d in s.get("worse_domains") or [] if (v := s.get(f"vs_rtn_pct_{d}"))]
            items.append(f"<li><code>{html.escape(n)}</code>: {html.escape('; '.join(parts) or 'worse than RTN')}</li>")
        cells.append(("markdown", "\n".join([
            '<div id="flagged-rtn" class="callout callout-warn">', "",
            f"<strong>&#9888; {len(flagged)} AWQ checkpoint(s) worse than round-to-nearest on their own calibration "
            "domain</strong> (step 02 sanity check; AWQ's search should never lose to no search on the domain it saw):",
            "<ul>", *items, "</ul>", "</div>"])))
    else:
        cells.append(("markdown", '<div id="flagged-rtn" class="callout callout-ok">\n\n'
                                  "No AWQ checkpoint is worse than round-to-nearest on its own calibration domain "
                                  "(step 02 sanity check).\n\n</div>"))
    cells += _speed_cells(M)
    cells += _verdict_cells(M)
    return cells


def _lm_eval_md(e3: Mapping[str, Any]) -> list[str]:
    """lm-eval-harness accuracy next to the study's own scorer, per model and task."""
    res = e3.get("lm_eval") or {}
    rows = [{"model": model, "task": task, "lm-eval acc": fmt(r.get("acc"), 3), "study acc": fmt(r.get("study_acc"), 3),
             "items judged alike": f"{r.get('agree_items', 'n/a')} / {r.get('n_items', 'n/a')}",
             "max |log-lik diff| (nats)": fmt(r.get("max_abs_ll_diff"), 5)}
            for model, tasks in res.items() for task, r in tasks.items()]
    if not rows:
        return []
    return ['<div id="lm-eval">', "", "### lm-eval-harness on the same items", "",
            "The study's task items exported as local lm-eval multiple-choice tasks and scored by lm-eval-harness on the "
            "same models: the two scorers should judge every item alike (log-likelihood differences come from "
            "batching and, in 16-bit evaluation, rounding).", "", md_table(rows), "", "</div>"]


def _flip_cells(M: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Flip rates per checkpoint and task, and reference tasks (baseline against chance)."""
    e3 = M["03_evaluate"]
    ci = _ci_level(M)
    lines: list[str] = []
    flips = e3.get("flips") or []
    if flips:
        rows = [{"checkpoint": f["checkpoint"], "task": f["task"], "accuracy change (pts)": fmt(f.get("accuracy change (pts)"), 1, True),
                 "flip rate (%)": fmt(f.get("flip rate (%)"), 1), ci: f"[{fmt(f.get('CI low'), 1)}, {fmt(f.get('CI high'), 1)}]",
                 "right->wrong": f.get("right->wrong"), "wrong->right": f.get("wrong->right"), "items": f.get("items")}
                for f in flips]
        lines += ['<div id="flips">', "", "### Flips: answers that change", "",
                  "Equal accuracy can hide many changed answers (Dutta et al., NeurIPS 2024). The flip rate is the share "
                  f"of task items whose correctness differs from the baseline's, with a paired {ci} over items.", "",
                  md_table(rows), "", "</div>"]
    ref = e3.get("reference_tasks") or {}
    if ref:
        r_rows = [{"task": t, "items": v.get("items"), "baseline accuracy (%)": fmt(v.get("baseline accuracy (%)"), 1),
                   "chance (%)": fmt(v.get("chance (%)"), 1), "above chance (pts, 95% CI)": v.get("above chance (pts, 95% CI)")}
                  for t, v in ref.items()]
        lines += ['<div id="reference-tasks">', "", "### Reference tasks (baseline only, outside the budget)", "",
                  "Scored on the baseline alone against chance: a task the model cannot do at full precision cannot "
                  "show what quantization does to it.", "", md_table(r_rows), "", "</div>"]
    lines += _lm_eval_md(e3)
    return [("markdown", "\n".join(lines))] if lines else []


def _speed_cells(M: Mapping[str, Any]) -> list[tuple[str, str]]:
    b = M["04_benchmark"]
    lines = ['<div id="speed">', ""]
    for name, r in _bench_models(M).items():
        hw = (r.get("env") or {}).get("hardware_label", "")
        sp_rows = [{"path": s["path"], "batch": s.get("batch"), "context": s.get("context"), "scope": s.get("scope", ""),
                    "decode speed-up": f"{fmt(s.get('decode_speedup'))}x [{fmt(s.get('decode_speedup_low'))}, {fmt(s.get('decode_speedup_high'))}]",
                    "prefill speed-up": f"{fmt(s.get('prefill_speedup'))}x [{fmt(s.get('prefill_speedup_low'))}, {fmt(s.get('prefill_speedup_high'))}]"}
                   for s in _speed_rows(r)]
        mem_rows = [{"path": m["path"], "weights, whole model": _gb(m.get("weight_bytes_full_model")),
                     "weights on disk": _gb(m.get("weight_bytes_on_disk")),
                     "quantized linears vs fp16": f"{fmt(m.get('quantized_linear_ratio_vs_fp16'))}x"
                     if m.get("quantized_linear_ratio_vs_fp16") is not None else "n/a",
                     "peak RSS while timing (MB)": fmt(m.get("peak_rss_run_mb"), 0)} for m in r.get("memory") or []]
        fleet_rows = [{"path": f["path"], "batch": f.get("batch_size"), "decode tokens/s/device": fmt(f.get("decode_tokens_per_s_per_device")),
                       "devices at peak": f.get("devices_at_peak"), "bound by": f.get("bound_by"),
                       "cost/hour": _money(f.get("cost_per_hour")), "cost per 1,000 conversations": _money(f.get("cost_per_1000_conversations"))}
                      for f in r.get("fleet") or []]
        agree_rows = [{"path": a["path"], "logits RMS diff / RMS, vs dequantized weights": fmt(a.get("rel_rms_diff"), 4),
                       "top-1 agreement": fmt(a.get("top1_agreement"), 3),
                       "vs the timed baseline": fmt(a.get("rel_rms_diff_vs_baseline"), 4), "loaded by": a.get("loader", "")}
                      for a in r.get("agreement") or []]
        lines += [f"**{name} model** on {hw} (speed-up = path tokens/s / baseline tokens/s, median; brackets: "
                  "range the repeats allow):", "", md_table(sp_rows), "", md_table(mem_rows), "",
                  md_table(fleet_rows) if fleet_rows else "_no fleet estimate_", ""]
        if agree_rows:
            lines += ["Each path's logits on one fixed prompt against the dequantized checkpoint (the weights its "
                      "kernel holds: a path that computes the wrong thing shows a difference near 1) and against the "
                      "timed baseline (which adds the quantization error when that is the original model):", "",
                      md_table(agree_rows), ""]
        for note in r.get("notes") or []:
            lines.append(f"- note: {_esc(note)}")
        lines.append("")
    t_rows = [{"target": k, "measured": fmt(v.get("measured")), "target value": fmt(v.get("target")),
               "met": fmt(v.get("met")), "where": v.get("where", "")} for k, v in (b.get("targets") or {}).items()]
    lines += ["Benchmark targets:", "", md_table(t_rows) if t_rows else "_none_", "", "</div>"]
    cells = [("markdown", '<div id="speed-cost"></div>\n\n### Speed, memory and cost (step 04)'),
             ("markdown", _trap_callout(M)),
             ("markdown", "\n".join(lines)), _fig("speedups"),
             _fig("memory_cost")]
    return cells


def _trap_callout(M: Mapping[str, Any]) -> str:
    """The trap flag: a red callout naming every quantized path that ran slower than the baseline."""
    traps = M["04_benchmark"].get("traps") or []
    if not traps:
        return ('<div id="traps" class="callout callout-ok">\n\n<strong>Trap check:</strong> no quantized path was '
                "slower than the float baseline at any measured shape.\n\n</div>")
    groups: dict[tuple[str, str], list[dict]] = {}
    for t in traps:
        groups.setdefault((str(t.get("model", "")), str(t.get("path"))), []).append(t)
    items = []
    for (model, path), ts in groups.items():
        scopes = {t.get("scope") for t in ts}
        pick = "full_model" if "full_model" in scopes else ("measured" if "measured" in scopes else None)
        shown = [t for t in ts if t.get("scope") == pick] or ts
        parts = [f"{html.escape(str(t.get('phase')))} {fmt(t.get('speedup'))}x (batch {t.get('batch')}, context "
                 f"{t.get('context')}{', clearly slower' if t.get('clear') else ', within noise'})" for t in shown]
        scope_txt = f" [scope {pick}]" if pick else ""
        items.append(f"<li><strong>{html.escape(model)} / {html.escape(path)}</strong>{scope_txt}: "
                     f"{'; '.join(parts)}<br><small>{html.escape(str(shown[0].get('explanation', '')))}</small></li>")
    detail = "".join(f"<li>{html.escape(str(t.get('model', '')))}: {html.escape(str(t.get('explanation', '')))}</li>"
                     for t in traps)
    return "\n".join([
        '<div id="traps" class="callout callout-danger">', "",
        f"<strong>&#9888; TRAP: quantized paths SLOWER than the float baseline</strong> "
        f"({len(traps)} flagged measurement(s) on {len(groups)} path(s)). Serving a flagged path costs more than the "
        "baseline, not less:", "<ul>", *items, "</ul>",
        f"<details><summary>all {len(traps)} flags (every scope)</summary><ul>{detail}</ul></details>", "</div>"])


def _rollout_summary_rows(s: Mapping[str, Any]) -> list[dict]:
    conv = s.get("conversations") or {}
    srm = s.get("srm") or []
    failed = [x for x in srm if not x.get("ok")]
    guards = [g for g in s.get("guardrails") or [] if g.get("metric") != "satisfaction"]
    rows = [
        {"quantity": "decision", "value": str(s.get("decision", "n/a")).upper()},
        {"quantity": "data", "value": "SIMULATED logs (seeded simulator)" if s.get("simulated") else "real rollout logs"},
        {"quantity": "scenario", "value": s.get("scenario") or "n/a"},
        {"quantity": "stopped at look", "value": s.get("stopped_at_look") if s.get("stopped_at_look") is not None else "not stopped (ran every look)"},
        {"quantity": "looks", "value": s.get("n_looks")},
        {"quantity": "method", "value": s.get("method")},
        {"quantity": "non-inferiority margin", "value": f"{fmt(100 * _num(s.get('margin')), 2) if _num(s.get('margin')) is not None else 'n/a'} satisfaction points"},
        {"quantity": "alpha", "value": fmt(s.get("alpha"), 3)},
        {"quantity": "conversations (baseline / quantized)", "value": f"{fmt(conv.get('baseline'))} / {fmt(conv.get('quantized'))}"},
        {"quantity": "final difference, quantized - baseline", "value": f"{fmt(100 * _num(s['final_difference']), 2, True)} points" if _num(s.get('final_difference')) is not None else "n/a"},
        {"quantity": "final one-sided lower bound (NI test)", "value": f"{fmt(100 * _num(s['final_ni_lower']), 2, True)} points" if _num(s.get('final_ni_lower')) is not None else "n/a"},
    ]
    if guards:
        rows.append({"quantity": "guardrails", "value": "; ".join(
            f"{g['metric']} (margin {_unit_value(g, g.get('margin'))}, {'higher' if g.get('higher_is_better') else 'lower'} "
            f"is better)" for g in guards)})
    if srm:
        rows.append({"quantity": f"SRM check (chi-square, p < {fmt(s.get('srm_alpha'), 3)} stops)", "value": (
            f"failed at look(s) {', '.join(str(x['look']) for x in failed)}: do not trust those looks" if failed
            else f"passed at every look (smallest p = {fmt(min(x['p_value'] for x in srm), 4)})")})
    lat = s.get("latency") or {}
    if lat.get("note") and s.get("simulated"):
        rows.append({"quantity": "simulated latency", "value": lat["note"]})
    return rows


def _srm_check_text(s: Mapping[str, Any]) -> str:
    """Whether the SRM check caught a scenario's broken assignment, in words."""
    srm = s.get("srm") or []
    failed = [x["look"] for x in srm if not x.get("ok")]
    if s.get("decision") == "stop (SRM)":
        return "the SRM check works"
    if failed:
        return (f"the SRM check failed from look {failed[0]}, after another rule had already stopped the rollout at "
                f"look {s.get('stopped_at_look')}")
    smallest = min((x["p_value"] for x in srm), default=None)
    return ("the SRM check did NOT fire at any look"
            + (f" (smallest p = {smallest:.2g}; too few conversations to see the loss)" if smallest is not None else ""))


def _unit_value(g: Mapping[str, Any], x: Any, sign: bool = False) -> str:
    """A difference, bound or margin of metric ``g`` in its display unit (points or seconds)."""
    v = _num(x)
    if v is None:
        return "n/a"
    if g.get("unit") == "points":
        return f"{fmt(100 * v, 2, sign)} points"
    return f"{fmt(v, 3, sign)} s"


def _guardrail_rows(s: Mapping[str, Any]) -> list[dict]:
    rows = []
    for g in s.get("guardrails") or []:
        rows.append({"metric": g["metric"], "direction": "higher is better" if g.get("higher_is_better") else "lower is better",
                     "margin": _unit_value(g, g.get("margin")),
                     "baseline / quantized": f"{fmt(g.get('final_mean_baseline'), 3)} / {fmt(g.get('final_mean_quantized'), 3)}",
                     "difference": _unit_value(g, g.get("final_difference"), True),
                     "one-sided bound (NI test)": _unit_value(g, g.get("final_ni_bound"), True),
                     "non-inferior": fmt(g.get("final_non_inferior")),
                     "significantly worse": fmt(g.get("final_significantly_worse"))})
    return rows


def _srm_rows(s: Mapping[str, Any]) -> list[dict]:
    return [{"look": x["look"], "observed quantized share": fmt(x.get("observed_share"), 4),
             "planned quantized share": fmt(x.get("planned_share"), 4), "p-value": f"{_num(x.get('p_value')) or 0:.2g}",
             "verdict": "ok" if x.get("ok") else "SRM: do not trust this look"} for x in s.get("srm") or []]


def _power_rows(plan: Mapping[str, Any]) -> list[dict]:
    return [{"metric": r["metric"], "margin": _unit_value(r, r.get("margin")),
             "baseline": fmt(r.get("baseline"), 3), "sd": fmt(r.get("sd"), 3),
             "power target (each)": f"{100 * (_num(r.get('power_target')) or 0):.1f}%",
             "days needed": r.get("days_needed") if r.get("days_needed") is not None else "beyond the horizon",
             "days scheduled": r.get("days_scheduled"),
             "power at the end of the schedule": f"{100 * (_num(r.get('power_at_schedule_end')) or 0):.1f}%"}
            for r in plan.get("metrics") or []]


def _power_md(plan: Mapping[str, Any] | None) -> list[str]:
    if not plan:
        return ["**Power plan:** not recorded (this run's step 05 predates the power plan; re-run step 05).", ""]
    needed = plan.get("days_needed")
    head = (f"**Power plan before launch** ({plan.get('K')} metrics; the ship rule needs all of them, so beta is split: "
            f"each test is planned at {100 * (_num(plan.get('power_per_metric')) or 0):.1f}% power for "
            f"{100 * (_num(plan.get('power')) or 0):.0f}% overall, one-sided alpha {fmt(plan.get('alpha_one_sided'), 3)}, "
            f"{fmt(plan.get('daily_conversations'))} conversations/day): **{needed if needed is not None else 'more than the horizon of'} "
            f"day(s) needed, {plan.get('days_scheduled')} scheduled**. A {plan.get('note', 'fixed-horizon approximation')}.")
    out = [head, "", md_table(_power_rows(plan)), ""]
    if plan.get("warning"):
        out += [f'<div class="callout callout-danger"><strong>&#9888; {html.escape(str(plan["warning"]))}</strong></div>', ""]
    return out


def _verdict_cells(M: Mapping[str, Any]) -> list[tuple[str, str]]:
    r5 = M["05_rollout_analysis"]
    cand = r5.get("candidate") or {}
    main = r5.get("rollout") or {}
    worse = r5.get("worse_scenario")
    broken = r5.get("broken_assignment_scenario")
    sim = bool(main.get("simulated"))
    label = '<span class="sim-label">SIMULATED</span> ' if sim else ""
    decision = str(main.get("decision", "n/a"))
    cls = {"cut over": "callout-ok", "roll back": "callout-danger", "stop (SRM)": "callout-danger"}.get(decision, "callout-info")
    meaning = {"cut over": "every metric non-inferior at the final stage",
               "roll back": "a metric significantly worse than baseline",
               "hold": "the schedule ended without cut over or roll back",
               "stop (SRM)": "sample-ratio mismatch: do not trust the looks from there on",
               "continue": "the rollout has not reached its last planned look"}.get(decision)
    lines = ['<div id="verdict">', "", "### Rollout verdict (step 05)", ""]
    history = (M["manifest"].get("budget_history") or [])
    from quantstudy.pipeline.manifest import budget_changed_after_results

    if budget_changed_after_results(M["manifest"]):
        def _b(entry: Mapping[str, Any]) -> str:
            return "; ".join(f"{b['metric']} {b['max_drop']} {b['unit']}" for b in entry.get("budget") or [])
        lines += ['<div class="callout callout-danger"><strong>&#9888; The quality budget was changed after results '
                  "were seen in this run folder.</strong> Verdicts below use the newer budget.<br>"
                  f"First declared ({html.escape(str(history[0].get('recorded')))}): {html.escape(_b(history[0]))}<br>"
                  f"Now ({html.escape(str(history[-1].get('recorded')))}): {html.escape(_b(history[-1]))}</div>", ""]
    lines += [
        f'<div class="callout {cls}"><strong>{label}Rollout decision: {html.escape(decision.upper())}</strong> for '
        f"<code>{html.escape(str(cand.get('checkpoint', 'n/a')))}</code>"
        + (f" ({html.escape(meaning)})" if meaning else "")
        + (" &mdash; these are simulated logs, not real users." if sim else "") + "</div>", "",
        f"Candidate `{cand.get('checkpoint', 'n/a')}`: measured task-quality change "
        f"{fmt(cand.get('quality_change_points'), 2, True)} points ({', '.join(cand.get('tasks') or [])}); "
        f"passed the offline budget: **{fmt(cand.get('passed_offline_budget'))}**.", "",
        _candidate_md(M), "",
        "Decision rule: cut over only when satisfaction and every guardrail are non-inferior at the final stage; roll "
        "back when any is significantly worse; stop when the sample-ratio check fails; hold when the schedule ends "
        "first.", "",
        md_table(_rollout_summary_rows(main)), "",
    ]
    lines += _power_md(r5.get("power_plan") or main.get("power_plan"))
    if main.get("guardrails"):
        look = (main["guardrails"][0].get("deciding_look") if main["guardrails"] else None) or main.get("n_looks")
        lines += [f"**{'SIMULATED ' if sim else ''}Satisfaction and guardrails** at look {look}, where the decision "
                  "was taken (the stop, else the last look; differences are quantized - baseline):", "",
                  md_table(_guardrail_rows(main)), ""]
    if main.get("srm"):
        lines += [f"**Sample-ratio check per look** (cumulative counts against the schedule's served shares, "
                  f"chi-square; p < {fmt(main.get('srm_alpha'), 3)} stops the rollout):", "", md_table(_srm_rows(main)), ""]
    if worse:
        lines += [f"Check of the rollback trigger: the {'SIMULATED ' if worse.get('simulated') else ''}'worse' scenario "
                  f"ends in **{str(worse.get('decision', 'n/a')).upper()}**"
                  + (f" (stopped at look {worse.get('stopped_at_look')})" if worse.get("stopped_at_look") is not None else "")
                  + ".", ""]
    if broken:
        lines += [f"Check of the SRM stop: the {'SIMULATED ' if broken.get('simulated') else ''}'broken_assignment' "
                  f"scenario (a logging bug loses part of the quantized arm) ends in **{str(broken.get('decision', 'n/a')).upper()}**"
                  + (f" at look {broken.get('stopped_at_look')}" if broken.get("stopped_at_look") is not None else "")
                  + f": {_srm_check_text(broken)}.", ""]
    lines.append("</div>")
    cells = [("markdown", "\n".join(lines)), _fig("rollout", "fig_rollout(M, 'rollout')")]
    if main.get("guardrails"):
        cells.append(_fig("guardrails", "fig_guardrails(M, 'rollout')"))
    if (r5.get("power_plan") or {}).get("curve"):
        cells.append(_fig("power_plan", "fig_power_plan(M)"))
    if worse:
        cells.append(_fig("worse_scenario", "fig_rollout(M, 'worse_scenario')"))
    if broken and broken.get("guardrails"):
        cells.append(_fig("broken_assignment_scenario", "fig_guardrails(M, 'broken_assignment_scenario')"))
    return cells


def _candidate_row(role: str, c: Mapping[str, Any], ci: str) -> dict:
    unit = c.get("unit", "")
    return {"role": role, "checkpoint": f"`{c.get('checkpoint')}`", "calibration": c.get("calibration") or "none",
            "draw": "" if c.get("draw") is None else c["draw"],
            f"worst case ({ci}, worse end)": f"{fmt(c.get('worst_case'), 2, True)} {unit}",
            "point estimate": f"{fmt(c.get('point'), 2, True)} {unit}", "limit": f"{fmt(c.get('limit'))} {unit}",
            "passes every offline line": fmt(c.get("passed_offline_budget"))}


def _candidate_md(M: Mapping[str, Any]) -> str:
    """How the shipped candidate was chosen: the rule from params, the candidate and the runner-up."""
    cand = M["05_rollout_analysis"].get("candidate") or {}
    if not cand.get("rule"):
        return ('<div id="candidate">\n\n**How the candidate was chosen:** not recorded (this run\'s step 05 predates '
                "`rollout.candidate_rule`; re-run step 05 to record the rule and the runner-up).\n\n</div>")
    ci = _ci_level(M)
    rows = [_candidate_row("shipped candidate", cand, ci)]
    if cand.get("runner_up"):
        rows.append(_candidate_row("runner-up", cand["runner_up"], ci))
    fails = ("" if cand.get("passed_offline_budget") else
             "**No checkpoint passes every offline budget line: the candidate is the best one overall and FAILS the "
             "offline budget.**")
    return "\n".join(['<div id="candidate">', "",
                      f"**How the candidate was chosen** (`rollout.candidate_rule: {cand['rule']}`): "
                      f"{cand.get('rule_text', '')}.", "", md_table(rows), "", fails, "", "</div>"])


def _lessons(M: Mapping[str, Any]) -> str:
    ci = _ci_level(M)
    out: list[str] = []
    for e in _effects(M):
        out.append(_effect_sentence(e, ci))
    for e in _effects(M, "in_domain", "RTN")[:1]:
        out.append(_effect_sentence(e, ci))
    e3 = M["03_evaluate"]
    verdicts = e3.get("verdict_by_checkpoint") or {}
    passed = [k for k, v in verdicts.items() if v == "pass"]
    out.append(f"{len(passed)} of {len(verdicts)} quantized checkpoint(s) kept every offline quality-budget line "
               f"inside its limit at the worse end of the {ci}" + (f" ({', '.join(passed)})." if passed else "."))
    fails = {}
    for r in e3.get("budget") or []:
        if r.get("verdict") != "pass":
            fails.setdefault(r["metric"], []).append(r)
    for metric, rs in fails.items():
        worst = max(rs, key=lambda r: _num(r.get("worst_case")) or -math.inf)
        lab = _label(metric)
        out.append(f"{lab[0].upper() + lab[1:]} kept {len(rs)} checkpoint(s) from passing (fail or inconclusive); "
                   f"the largest worst case was {fmt(worst.get('worst_case'), 2, True)} {worst.get('unit')} against a "
                   f"budget of {fmt(worst.get('limit'))} {worst.get('unit')} (`{worst['checkpoint']}`).")
    flagged = M["02_quantize"].get("worse_than_rtn_on_own_domain") or []
    if flagged:
        out.append(f"{len(flagged)} AWQ checkpoint(s) were worse than round-to-nearest on their own calibration "
                   f"domain: {', '.join(flagged)}.")
    name, r = _main_bench(M)
    for s in _speed_rows(r):
        if s.get("path") == "fast4":
            tgt = (M["04_benchmark"].get("targets") or {}).get("cpu_fast_decode_speedup_1b_b1") or {}
            met = (f" (target {fmt(tgt.get('target'))}x: {'met' if tgt.get('met') else 'NOT met'})"
                   if tgt.get("target") is not None else "")
            out.append(f"With the {name} model on {(r.get('env') or {}).get('hardware_label', 'this hardware')}, "
                       f"batch {s.get('batch')}, context {s.get('context')}, the fast 4-bit path decoded at "
                       f"{fmt(s.get('decode_speedup'))}x and prefilled at {fmt(s.get('prefill_speedup'))}x the "
                       f"baseline speed{met}.")
            break
    served = _served_head_text(M)
    if served:
        out.append(served)
    base_f, fast_f = _fleet_row(r, "baseline"), _fleet_row(r, "fast4")
    if base_f and fast_f:
        out.append(f"Fleet at peak: {base_f.get('devices_at_peak')} device(s) for the baseline "
                   f"({_money(base_f.get('cost_per_1000_conversations'))} per 1,000 conversations) vs "
                   f"{fast_f.get('devices_at_peak')} for fast4 ({_money(fast_f.get('cost_per_1000_conversations'))}).")
    ratio = r.get("bytes_ratio")
    if _num(ratio) is not None:
        out.append(f"The quantized linears take {fmt(ratio)}x fewer bytes than float16.")
    traps = M["04_benchmark"].get("traps") or []
    if traps:
        paths = sorted({f"{t.get('model', '')}/{t.get('path')}" for t in traps})
        slowest = min(traps, key=lambda t: _num(t.get("speedup")) or math.inf)
        out.append(f"The trap was real: {len(traps)} measurement(s) on {', '.join(paths)} ran slower than the baseline "
                   f"(slowest {fmt(slowest.get('speedup'))}x, {slowest.get('model', '')}/{slowest.get('path')} "
                   f"{slowest.get('phase')}).")
    else:
        out.append("No quantized path ran slower than the baseline at the measured shapes.")
    main = M["05_rollout_analysis"].get("rollout") or {}
    worse = M["05_rollout_analysis"].get("worse_scenario")
    broken = M["05_rollout_analysis"].get("broken_assignment_scenario")
    out.append(f"The {'SIMULATED ' if main.get('simulated') else ''}rollout ended in '{main.get('decision')}'"
               + (f" at look {main.get('stopped_at_look')}" if main.get("stopped_at_look") is not None else
                  f" after {main.get('n_looks')} look(s)")
               + (f"; the simulated 'worse' scenario ended in '{worse.get('decision')}'" if worse else "")
               + (f"; the simulated broken-assignment scenario ended in '{broken.get('decision')}'" if broken else "")
               + ".")
    plan = M["05_rollout_analysis"].get("power_plan")
    if plan:
        out.append(f"The power plan asked for {plan.get('days_needed') if plan.get('days_needed') is not None else 'more'} "
                   f"day(s) for {plan.get('K')} metrics at {100 * (_num(plan.get('power')) or 0):.0f}% overall power; "
                   f"the schedule had {plan.get('days_scheduled')}"
                   + (" (enough)." if plan.get("sufficient") else ", too few: underpowered."))
    rb = e3.get("rollback_check") or {}
    out.append(f"Rollback: the archived baseline {'reproduced' if rb.get('identical') else 'did NOT reproduce'} the "
               "baseline's metrics bit for bit.")
    return "\n".join(['<div id="lessons">', "", "## Lessons", "",
                      "Each sentence below is generated from this run's metrics.", "",
                      *(f"{i}. {s}" for i, s in enumerate(out, 1)), "", "</div>"])


def _checklist_md(M: Mapping[str, Any], run_dir: Path) -> str:
    items = []
    for ok, item, evidence in _checklist(M, run_dir):
        mark = '<span class="tick">&#10004;</span>' if ok else '<span class="cross">&#10008;</span>'
        items.append(f'<li class="{"ok" if ok else "missing"}" data-ok="{str(ok).lower()}">{mark} '
                     f"<strong>{html.escape(item)}</strong>: {html.escape(evidence)}</li>")
    return "\n".join(['<div id="checklist">', "", "## Process checklist", "",
                      "Ticked from the manifest and metrics of this run.", "",
                      '<ul class="checklist">', *items, "</ul>", "", "</div>"])


# =========================================================================== notebook
SETUP = """\
%matplotlib inline
%config InlineBackend.figure_formats = ['png']
import warnings
warnings.filterwarnings("ignore")
import matplotlib
matplotlib.rcParams.update({{"figure.dpi": 80, "savefig.dpi": 80, "font.size": 9}})
from quantstudy import report as R
R.start_figures()
M = R.load_metrics({run_dir!r})"""


def build_notebook(run_dir: str | Path):
    """The report notebook (not executed): generated markdown + figure code cells."""
    import nbformat

    run_dir = Path(run_dir).resolve()
    M = load_metrics(run_dir)
    cells: list[tuple[str, str]] = [
        ("markdown", _title(M, run_dir) + "\n\n" + answer_html(M) + "\n\n" + _toc(M)),
        ("code", SETUP.format(run_dir=str(run_dir))),
        ("markdown", _stamp(M, run_dir)),
        ("markdown", _situation(M)),
        ("markdown", _decision(M)),
        *_execution(M),
        *_outcome(M),
        ("markdown", _lessons(M)),
        ("markdown", _checklist_md(M, run_dir)),
    ]
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["title"] = f"Quantization study report: {M['manifest'].get('run_id') or run_dir.name}"
    for kind, src in cells:
        nb.cells.append(nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src))
    return nb


def execute_notebook(nb, cwd: str | Path | None = None, timeout: int = CELL_TIMEOUT_S):
    """Run the notebook's code cells with nbclient (kernel python3, cwd = project root)."""
    from nbclient import NotebookClient

    from quantstudy.paths import project_root

    cwd = Path(cwd) if cwd is not None else project_root()
    NotebookClient(nb, kernel_name=KERNEL, timeout=timeout, allow_errors=False,
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


# Wide tables scroll inside the page; figures scale down; a print style for the PDF.
BASE_CSS = """
main { max-width: 1200px; margin: 0 auto; }
.jp-RenderedHTMLCommon table, .jp-RenderedHTML table { display: block; max-width: 100%; overflow-x: auto; }
.jp-RenderedHTMLCommon img, figure img { max-width: 100%; height: auto; }
.jp-RenderedHTMLCommon pre { overflow-x: auto; }
"""
CSS = BASE_CSS + """
.jp-RenderedHTMLCommon table { font-size: 12px; margin-left: 0; }
.callout { border-left: 8px solid; border-radius: 4px; padding: 10px 16px; margin: 12px 0; }
.callout-danger { background: #fde8e8; border-color: #c81e1e; color: #5b1010; }
.callout-warn { background: #fff4e0; border-color: #e08a00; color: #4d3000; }
.callout-ok { background: #e6f6ea; border-color: #2ca02c; color: #0e3d12; }
.callout-info { background: #e8f0fb; border-color: #1f77b4; color: #0d2a45; }
.callout strong { font-size: 1.05em; }
.sim-label { background: #444; color: #fff; font-weight: bold; padding: 1px 8px; border-radius: 3px; letter-spacing: 0.08em; }
ul.checklist { list-style: none; padding-left: 0.5em; }
ul.checklist li { margin: 4px 0; }
.tick { color: #2ca02c; font-weight: bold; }
.cross { color: #c81e1e; font-weight: bold; }
#stamp { background: #f5f5f5; border: 1px solid #ddd; border-radius: 4px; padding: 4px 16px; }
.answer { border: 1px solid #9db9dc; border-left: 8px solid #1f77b4; border-radius: 6px; background: #f4f8fd;
          padding: 6px 16px; margin: 8px 0 10px; font-size: 14px; line-height: 1.4; }
.answer .answer-head { margin: 4px 0; }
.answer ul { margin: 4px 0; padding-left: 1.1em; }
.answer li { margin: 4px 0; }
.answer li.answer-bad { color: #6b0f0f; }
.answer .answer-q { font-weight: bold; margin-right: 4px; }
.go, .nogo { color: #fff; font-weight: bold; padding: 0 6px; border-radius: 3px; }
.go { background: #2ca02c; } .nogo { background: #c81e1e; }
.toc { font-size: 13px; border-top: 1px solid #ddd; border-bottom: 1px solid #ddd; padding: 4px 0; margin: 6px 0 12px; }
.toc ol { display: flex; flex-wrap: wrap; gap: 2px 18px; margin: 2px 0 0; padding-left: 0;
          list-style-position: inside; }
figure.report-figure { margin: 8px 0 18px; }
figure.report-figure figcaption { font-size: 13px; color: #333; margin-top: 4px; }
@media print {
  @page { size: A4; margin: 12mm; }
  main { max-width: none; }
  .jp-RenderedHTMLCommon table, .jp-RenderedHTML table { display: table; overflow: visible; font-size: 8px;
                                                         table-layout: auto; width: 100%; }
  .jp-RenderedHTMLCommon td { overflow-wrap: anywhere; }
  figure, .callout, .answer, tr, img, pre { break-inside: avoid; page-break-inside: avoid; }
  h1, h2, h3 { break-after: avoid; page-break-after: avoid; }
  a { color: inherit; text-decoration: none; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def _template(css: str) -> str:
    """The lab template, minus every script it would fetch from a CDN (require.js, MathJax,
    mermaid): pages with no JavaScript that render offline. The CSS goes last, so it wins."""
    return ("{%- extends 'index.html.j2' -%}\n"
            "{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}\n"
            "{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}\n"
            "{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}\n"
            '{% block html_head_css %}<style type="text/css">' + css + "</style>{% endblock html_head_css %}\n")


TEMPLATE = _template(CSS)
TEMPLATE_FILE = "quantstudy_report.html.j2"
NOTEBOOK_TEMPLATE_FILE = "quantstudy_notebook.html.j2"


def _exporter(template_file: str, **kwargs):
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    loader = DictLoader({TEMPLATE_FILE: TEMPLATE, NOTEBOOK_TEMPLATE_FILE: _template(BASE_CSS)})
    return HTMLExporter(template_name="lab", template_file=template_file, extra_loaders=[loader], **kwargs)


def export_html(nb) -> str:
    """nbconvert HTMLExporter: lab template without CDN scripts, code inputs and prompts hidden."""
    exporter = _exporter(TEMPLATE_FILE, exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    return body


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def render_step_notebooks(run_dir: str | Path, manifest: Mapping[str, Any] | None = None) -> dict[str, Path | str]:
    """Each executed step notebook rendered to HTML beside it (code and outputs kept, no CDN
    scripts): {step: the .html path, or why it was not rendered}."""
    import nbformat

    run_dir = Path(run_dir)
    steps = (manifest or json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))).get("steps") or {}
    out: dict[str, Path | str] = {}
    for name in STEP_NAMES:
        source = run_dir / ((steps.get(name) or {}).get("notebook") or f"notebooks/{name}.ipynb")
        page = source.with_suffix(".html")
        try:
            nb = nbformat.read(source, as_version=4)
            _write_atomic(page, _exporter(NOTEBOOK_TEMPLATE_FILE).from_notebook_node(nb)[0])
            out[name] = page
        except Exception as exc:  # noqa: BLE001 - a notebook that will not render keeps its .ipynb link
            page.unlink(missing_ok=True)
            out[name] = f"not rendered ({type(exc).__name__}: {exc})"
    return out


# =========================================================================== PDF
PDF_FILE = "report.pdf"
PDF_TIMEOUT_S = 180
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Headless Chromium for print-to-PDF: $QUANTSTUDY_CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    import os
    import shutil

    env = os.environ.get("QUANTSTUDY_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def write_pdf(html_path: str | Path) -> str:
    """Print ``html_path`` to ``report.pdf`` beside it with headless Chromium; one line saying
    what happened. Never raises: without Chromium (or when it fails) the PDF is skipped."""
    import shutil
    import subprocess
    import tempfile

    html_path = Path(html_path)
    pdf = html_path.with_name(PDF_FILE)
    pdf.unlink(missing_ok=True)  # never leave a PDF of an older report behind
    chrome = find_chromium()
    if chrome is None:
        return f"PDF skipped: Chromium not found (install chromium to get {PDF_FILE} next to the HTML)"
    with tempfile.TemporaryDirectory(prefix="quantstudy-pdf-") as tmp:
        tmp_pdf = Path(tmp) / PDF_FILE
        cmd = [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--disable-extensions", "--disable-background-networking", "--disable-sync", f"--user-data-dir={tmp}",
               "--no-pdf-header-footer", "--print-to-pdf-no-header", f"--print-to-pdf={tmp_pdf}", html_path.as_uri()]
        try:
            subprocess.run(cmd, capture_output=True, timeout=PDF_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"PDF skipped: Chromium failed ({type(exc).__name__}: {exc})"
        if not tmp_pdf.is_file() or tmp_pdf.stat().st_size == 0:
            return f"PDF skipped: Chromium wrote no PDF ({chrome})"
        shutil.move(str(tmp_pdf), str(pdf))
    return f"pdf: {pdf}"


def build_report(run_dir: str | Path, allow_stale: bool = False) -> Path:
    """Render ``run_dir/report.html`` (and ``report.pdf`` when Chromium is installed, and each
    executed notebook as HTML); ReportError (before anything else) for an incomplete run, a
    stale one unless ``allow_stale`` (then a banner names the stale steps), or a metrics.json
    that breaks its step's contract."""
    run_dir = Path(run_dir).resolve()
    manifest = check_complete(run_dir, allow_stale=allow_stale)
    load_metrics(run_dir)  # every metrics.json against its contract, before anything is written
    render_step_notebooks(run_dir, manifest)
    nb = build_notebook(run_dir)
    execute_notebook(nb)
    out = run_dir / REPORT_FILE
    _write_atomic(out, export_html(nb))
    stale = stale_steps(manifest)
    if stale:
        from quantstudy.pipeline.manifest import mark_report_out_of_date

        mark_report_out_of_date(run_dir, "rendered with stale steps: " + "; ".join(f"{k}: {v}" for k, v in stale.items()))
    print(write_pdf(out))
    return out


__all__ = ["ReportError", "answer_html", "build_report", "build_notebook", "check_complete", "execute_notebook",
           "export_html", "load_metrics", "render_step_notebooks", "write_pdf", "REPORT_FILE", "PDF_FILE"]
