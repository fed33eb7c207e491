"""The study report: one self-contained ``report.html`` per run folder, the comparison of
several runs, and the benchmark pages under ``docs/``.

:func:`build_report` refuses an incomplete run (:class:`ReportError`), then builds an
in-memory notebook whose markdown cells are generated from the steps' ``metrics.json``
files (and the run's ``manifest.json``) and whose code cells re-plot the figures from
those same numbers, executes it and renders it with nbconvert through
``templates/report.html.j2`` (code hidden, figures embedded, no scripts).

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
figures are ``figure-1``, ``figure-2``, ... with a one-sentence caption (``figures.CAPTIONS``).

Modules: :mod:`~quantstudy.report.build` (read the run, assemble, execute and render the
notebook), :mod:`~quantstudy.report.sections` and :mod:`~quantstudy.report.outcome` (the
sections), :mod:`~quantstudy.report.answer` (the answer box), :mod:`~quantstudy.report.figures`
(the figures, run inside the report notebook), :mod:`~quantstudy.report.lookups` and
:mod:`~quantstudy.report.formatting` (what several of them read and how values are written),
:mod:`~quantstudy.report.pdf` (``report.pdf``), :mod:`~quantstudy.report.compare`
(``quantstudy compare``: runs side by side) and :mod:`~quantstudy.report.benchdoc`
(``quantstudy bench-doc``: the tables of the ``docs/`` benchmark pages).
"""

from __future__ import annotations

from quantstudy.report.answer import answer_html
from quantstudy.report.build import (
    REPORT_FILE,
    ReportError,
    build_notebook,
    build_report,
    check_complete,
    execute_notebook,
    export_html,
    load_metrics,
    render_step_notebooks,
)
from quantstudy.report.compare import CompareError, compare_runs
from quantstudy.report.lookups import METRIC_LABELS, STEP_NAMES, stale_steps
from quantstudy.report.pdf import PDF_FILE, write_pdf

__all__ = [
    "ReportError",
    "answer_html",
    "build_report",
    "build_notebook",
    "check_complete",
    "execute_notebook",
    "export_html",
    "load_metrics",
    "render_step_notebooks",
    "write_pdf",
    "REPORT_FILE",
    "PDF_FILE",
    "METRIC_LABELS",
    "STEP_NAMES",
    "stale_steps",
    "CompareError",
    "compare_runs",
]
