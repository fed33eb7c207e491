"""``quantstudy compare RUN_A RUN_B [...] --out FILE.html [--force]``: runs side by side.

One static page (no scripts, no notebook to execute) built from each run folder's
``manifest.json`` and ``*/metrics.json``: the params fields that differ between the runs,
each run's answer box (its links point into that run's ``report.html``), the headline
calibration effects with their CIs, the budgets and verdicts, speed and memory.

Runs whose quality budgets differ are refused (:class:`CompareError`) unless ``force``:
their pass/fail verdicts answer different questions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from quantstudy.report.answer import answer_html, deciding_line, line_text
from quantstudy.report.build import REPORT_FILE, ReportError, check_complete, load_metrics, read_template
from quantstudy.report.formatting import escape_html, fmt, size
from quantstudy.report.lookups import calibration_effects, ci_level, label, main_bench, speed_rows


class CompareError(ValueError):
    """The runs cannot be compared (fewer than two, not complete run folders, different budgets)."""


# --------------------------------------------------------------------------- params and budgets
def flat_params(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """{"section.key": value} of a run's resolved params (from its manifest)."""
    return {
        f"{sec}.{key}": value
        for sec, values in (manifest.get("params") or {}).items()
        if isinstance(values, dict)
        for key, value in values.items()
    }


def params_diff(manifests: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """{"section.key": [value per run]} for every params field that differs between the runs."""
    flats = [flat_params(m) for m in manifests]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    out = {}
    for k in keys:
        values = [f.get(k) for f in flats]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            out[k] = values
    return out


def budget_of(M: Mapping[str, Any]) -> list[dict]:
    """The run's declared quality budget (params, else what step 03 echoed)."""
    budget = ((M["manifest"].get("params") or {}).get("evaluate") or {}).get("budget")
    return list(budget if budget is not None else M["03_evaluate"].get("budget_declared") or [])


def _budget_text(budget: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{b.get('metric')} {b.get('max_drop')} {b.get('unit')}" for b in budget) or "none"


def diff_line(diff: Mapping[str, Any], limit: int = 30) -> str:
    keys = list(diff)
    shown = ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
    return f"params that differ: {shown}" if keys else "params identical"


# --------------------------------------------------------------------------- loading
def load_runs(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """load_metrics of each run folder (stale runs allowed: their answer box says so)."""
    if len(run_dirs) < 2:
        raise CompareError("compare needs at least two run folders")
    runs = []
    for d in run_dirs:
        d = Path(d)
        if not d.is_dir():
            raise CompareError(f"{d}: not a run folder")
        try:
            check_complete(d, allow_stale=True)
            runs.append(load_metrics(d))
        except ReportError as exc:
            raise CompareError(str(exc)) from None
    return runs


def labels(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Run ids, numbered when two runs share one."""
    ids = [r["manifest"].get("run_id") or Path(r["run_dir"]).name for r in runs]
    return ids if len(set(ids)) == len(ids) else [f"{i} ({n})" for n, i in enumerate(ids, 1)]


# --------------------------------------------------------------------------- page sections
def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table of already escaped cells."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _value(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return escape_html(text if len(text) <= 160 else text[:157] + "...")


def _diff_section(names: Sequence[str], diff: Mapping[str, list]) -> str:
    if not diff:
        return '<section id="params"><h2>Params</h2><p>Identical in every run.</p></section>'
    rows = [[f"<code>{escape_html(k)}</code>", *(_value(v) for v in vals)] for k, vals in diff.items()]
    return (
        '<section id="params"><h2>Params that differ</h2>'
        + _table(["field", *map(escape_html, names)], rows)
        + "</section>"
    )


def _answers(runs: Sequence[Mapping[str, Any]], names: Sequence[str], out_dir: Path) -> str:
    cols = []
    for i, (M, name) in enumerate(zip(runs, names)):
        report = Path(os.path.relpath(Path(M["run_dir"]) / REPORT_FILE, out_dir)).as_posix()
        cols.append(
            f'<div class="run"><h3>{escape_html(name)}</h3><p><small><code>{escape_html(M["run_dir"])}</code> &middot; '
            f'<a href="{escape_html(report)}">report</a></small></p>{answer_html(M, escape_html(report), f"answer-{i}")}</div>'
        )
    return f'<section id="answers"><h2>Answers</h2><div class="runs">{"".join(cols)}</div></section>'


def _effect_cell(e: Mapping[str, Any] | None, ci: str) -> str:
    if not e:
        return "n/a"
    unit = str(e.get("unit", ""))
    u = "%" if unit.startswith("%") else f" {unit}"
    reading = "within noise" if e.get("within_noise") else "CI excludes 0"
    return (
        f"{fmt(e['point'], 2, True)}{u} [{fmt(e['lo'], 2, True)}, {fmt(e['hi'], 2, True)}] "
        f"<small>({escape_html(ci)}, draws {escape_html(' vs '.join(map(str, e.get('draws') or [])))}; {reading})</small>"
    )


def _effects_section(runs: Sequence[Mapping[str, Any]], names: Sequence[str]) -> str:
    per_run = [{e["metric"]: e for e in calibration_effects(M)} for M in runs]
    metrics = list(dict.fromkeys(m for p in per_run for m in p))
    rows = [
        [escape_html(label(m)), *(_effect_cell(p.get(m), ci_level(M)) for p, M in zip(per_run, runs))] for m in metrics
    ]
    return (
        '<section id="effects"><h2>Calibration effects: in-domain minus generic</h2>'
        + (_table(["metric", *map(escape_html, names)], rows) if rows else "<p>No run compared the two sources.</p>")
        + "</section>"
    )


def _verdict_cell(M: Mapping[str, Any]) -> str:
    verdicts = M["03_evaluate"].get("verdict_by_checkpoint") or {}
    cand = M["05_rollout_analysis"].get("candidate") or {}
    name = cand.get("checkpoint", "n/a")
    go = verdicts.get(name) == "pass"
    rule = f"; rule <code>{escape_html(cand['rule'])}</code>" if cand.get("rule") else ""
    return (
        f'<span class="{"go" if go else "nogo"}">{"GO" if go else "NO-GO"}</span> '
        f"{sum(v == 'pass' for v in verdicts.values())} of {len(verdicts)} pass; candidate <code>{escape_html(name)}</code>"
        f"{rule}; decided by {escape_html(line_text(deciding_line(M, name)))}"
    )


def _budget_section(runs: Sequence[Mapping[str, Any]], names: Sequence[str]) -> str:
    budgets = [escape_html(_budget_text(budget_of(M))) for M in runs]
    rollout = []
    for M in runs:
        main = M["05_rollout_analysis"].get("rollout") or {}
        rollout.append(
            ("SIMULATED " if main.get("simulated") else "") + escape_html(str(main.get("decision", "n/a")).upper())
        )
    rows = [["declared budget", *budgets], ["offline verdict", *map(_verdict_cell, runs)], ["rollout", *rollout]]
    return (
        '<section id="budget"><h2>Budgets and verdicts</h2>'
        + _table(["", *map(escape_html, names)], rows)
        + "</section>"
    )


def _speed_cell(M: Mapping[str, Any]) -> str:
    name, r = main_bench(M)
    hw = (r.get("env") or {}).get("hardware_label") or "n/a"
    parts = [
        f"{escape_html(s['path'])}: decode {fmt(s.get('decode_speedup'))}x, prefill {fmt(s.get('prefill_speedup'))}x "
        f"(batch {s.get('batch')}, context {s.get('context')})"
        for s in speed_rows(r)
    ]
    mem = [f"{escape_html(m['path'])} {size(m.get('weight_bytes_full_model'))}" for m in r.get("memory") or []]
    traps = len(M["04_benchmark"].get("traps") or [])
    return (
        f"<strong>{escape_html(name)}</strong> on {escape_html(hw)}<br>{'<br>'.join(parts) or 'no speed rows'}<br>weights: "
        f"{', '.join(mem) or 'n/a'}<br>{'<span class=nogo>TRAP</span> ' if traps else ''}{traps} trap flag(s)"
    )


def _speed_section(runs: Sequence[Mapping[str, Any]], names: Sequence[str]) -> str:
    return (
        '<section id="speed"><h2>Speed and memory (step 04)</h2>'
        + _table(list(map(escape_html, names)), [[_speed_cell(M) for M in runs]])
        + "</section>"
    )


PAGE_WIDTH_RULE = "main { max-width: 1200px; margin: 0 auto; }"  # page.css's; the comparison is wider


def render(runs: Sequence[Mapping[str, Any]], out: Path, forced_budgets: bool) -> str:
    """The comparison page (styles from ``templates/``: page.css less its width rule, report.css, compare.css)."""
    names = labels(runs)
    diff = params_diff([M["manifest"] for M in runs])
    warn = (
        '<p class="warn"><strong>The runs have different quality budgets</strong> (compared with --force): '
        "their pass/fail verdicts answer different questions.</p>"
        if forced_budgets
        else ""
    )
    body = "".join(
        [
            f"<h1>Run comparison: {escape_html(', '.join(names))}</h1>",
            warn,
            f'<p>{len(runs)} runs, side by side; {len(diff)} params field(s) differ (<a href="#params">which</a>).</p>',
            _answers(runs, names, out.parent),
            _effects_section(runs, names),
            _budget_section(runs, names),
            _speed_section(runs, names),
            _diff_section(names, diff),
        ]
    )
    css = (
        read_template("page.css").replace(PAGE_WIDTH_RULE, "")
        + read_template("report.css")
        + read_template("compare.css")
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Run comparison: '
        f"{escape_html(', '.join(names))}</title><style>{css}</style></head><body><main>{body}</main></body></html>"
    )


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path, force: bool = False) -> tuple[Path, str]:
    """Write the comparison page; (its path, a one-line summary). CompareError when the runs
    cannot be compared, or have different budgets and not ``force``."""
    runs = load_runs(run_dirs)
    budgets = [budget_of(M) for M in runs]
    differ = any(b != budgets[0] for b in budgets[1:])
    diff = params_diff([M["manifest"] for M in runs])
    if differ and not force:
        names = labels(runs)
        raise CompareError(
            "the runs' quality budgets differ ("
            + "; ".join(f"{n}: {_budget_text(b)}" for n, b in zip(names, budgets))
            + "), so their verdicts are not comparable; "
            f"{diff_line(diff)}; pass --force to compare anyway"
        )
    out = Path(out)
    if out.is_dir():
        raise CompareError(f"--out {out}: is a folder; give the HTML file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(runs, out.resolve(), differ), encoding="utf-8")
    return out, f"comparison: {out} ({diff_line(diff)})"


__all__ = ["CompareError", "compare_runs", "params_diff", "budget_of", "load_runs"]
