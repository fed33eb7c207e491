"""Build a run's ``report.html``: read the run, assemble the report notebook, execute it, render it.

:func:`build_report` refuses an incomplete run (:class:`ReportError`), then builds an
in-memory notebook whose markdown cells come from :mod:`quantstudy.report.sections` and
:mod:`quantstudy.report.outcome` and whose code cells redraw the figures
(:mod:`quantstudy.report.figures`) from the same numbers. The notebook is executed with
nbclient (kernel ``python3``, working directory = project root) and exported with nbconvert's
``HTMLExporter`` through ``templates/report.html.j2`` (lab template, code hidden, figures
embedded as base64 PNGs, no scripts: MathJax, require.js and mermaid are left out so the
page needs no network; styles from ``templates/page.css`` and ``templates/report.css``).
Each executed step notebook is rendered beside its ``.ipynb`` with
``templates/step_notebook.html.j2``, and ``report.pdf`` is printed next to the page
(:mod:`quantstudy.report.pdf`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from jinja2 import FileSystemLoader

from quantstudy import contracts
from quantstudy.paths import project_root
from quantstudy.pipeline.manifest import DONE_STATUSES, MANIFEST, mark_report_out_of_date
from quantstudy.report import outcome, sections
from quantstudy.report.answer import answer_html
from quantstudy.report.lookups import METRICS, STEP_NAMES, stale_steps
from quantstudy.report.pdf import write_pdf

REPORT_FILE = "report.html"
KERNEL = "python3"
CELL_TIMEOUT_S = 300
TEMPLATES = Path(__file__).with_name("templates")
REPORT_TEMPLATE = "report.html.j2"
STEP_NOTEBOOK_TEMPLATE = "step_notebook.html.j2"


class ReportError(ValueError):
    """The run folder cannot be reported on (missing manifest, steps not done, metrics missing)."""


# =========================================================================== reading the run
def _read_manifest(run_dir: Path, problems: list[str]) -> dict[str, Any]:
    """The run's manifest ({} when it is missing or unreadable, with the reason added to ``problems``)."""
    path = run_dir / MANIFEST
    if not path.is_file():
        problems.append(f"{MANIFEST} is missing")
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        problems.append(f"{MANIFEST} is unreadable ({exc})")
        return {}
    return manifest if isinstance(manifest, dict) else {}


def check_complete(run_dir: str | Path, allow_stale: bool = False) -> dict[str, Any]:
    """The run's manifest, or ReportError naming every missing, unfinished or (unless
    ``allow_stale``) stale step."""
    run_dir = Path(run_dir)
    problems: list[str] = []
    manifest = _read_manifest(run_dir, problems)
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
        raise ReportError(
            f"{run_dir}: incomplete run, no report built: "
            + ", ".join(problems)
            + ". Run the missing steps first (quantstudy run PARAMS --from STEP)."
        )
    stale = stale_steps(manifest)
    if stale and not allow_stale:
        raise ReportError(
            f"{run_dir}: stale steps, no report built: "
            + ", ".join(f"{k} ({v})" for k, v in stale.items())
            + ". Re-run them (quantstudy run PARAMS), or render anyway with --allow-stale."
        )
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


# =========================================================================== the notebook
SETUP = """\
%matplotlib inline
%config InlineBackend.figure_formats = ['png']
import warnings
warnings.filterwarnings("ignore")
import matplotlib
matplotlib.rcParams.update({{"figure.dpi": 80, "savefig.dpi": 80, "font.size": 9}})
from quantstudy.report import figures as R
from quantstudy.report.build import load_metrics
R.start_figures()
M = load_metrics({run_dir!r})"""


def report_cells(M: Mapping[str, Any], run_dir: Path) -> sections.Cells:
    """The report's cells in page order: title with the answer box and contents, the setup code,
    then every section."""
    return [
        ("markdown", sections.title(M, run_dir) + "\n\n" + answer_html(M) + "\n\n" + sections.toc(M)),
        ("code", SETUP.format(run_dir=str(run_dir))),
        ("markdown", sections.stamp(M, run_dir)),
        ("markdown", sections.situation(M)),
        ("markdown", sections.decision(M)),
        *sections.execution_cells(M),
        *outcome.outcome_cells(M),
        ("markdown", sections.lessons(M)),
        ("markdown", sections.checklist_md(M, run_dir)),
    ]


def build_notebook(run_dir: str | Path):
    """The report notebook (not executed): generated markdown + figure code cells."""
    import nbformat  # lazy, like nbclient and nbconvert: seconds of start-up the CLI's other commands need not pay

    run_dir = Path(run_dir).resolve()
    M = load_metrics(run_dir)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["title"] = f"Quantization study report: {M['manifest'].get('run_id') or run_dir.name}"
    for kind, src in report_cells(M, run_dir):
        nb.cells.append(nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src))
    return nb


def execute_notebook(nb, cwd: str | Path | None = None, timeout: int = CELL_TIMEOUT_S):
    """Run the notebook's code cells with nbclient (kernel python3, cwd = project root)."""
    from nbclient import NotebookClient  # lazy: start-up time (see build_notebook)

    cwd = Path(cwd) if cwd is not None else project_root()
    NotebookClient(
        nb, kernel_name=KERNEL, timeout=timeout, allow_errors=False, resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return nb


# =========================================================================== HTML
def read_template(name: str) -> str:
    """A file of ``templates/`` (the CSS, for pages built without nbconvert)."""
    return (TEMPLATES / name).read_text(encoding="utf-8")


def _exporter(template_file: str, **kwargs):
    from nbconvert import HTMLExporter  # lazy: start-up time (see build_notebook)

    return HTMLExporter(
        template_name="lab", template_file=template_file, extra_loaders=[FileSystemLoader(str(TEMPLATES))], **kwargs
    )


def export_html(nb) -> str:
    """nbconvert HTMLExporter: lab template without CDN scripts, code inputs and prompts hidden."""
    exporter = _exporter(REPORT_TEMPLATE, exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    return body


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def render_step_notebooks(run_dir: str | Path, manifest: Mapping[str, Any] | None = None) -> dict[str, Path | str]:
    """Each executed step notebook rendered to HTML beside it (code and outputs kept, no CDN
    scripts): {step: the .html path, or why it was not rendered}."""
    import nbformat  # lazy: start-up time (see build_notebook)

    run_dir = Path(run_dir)
    steps = (manifest or json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))).get("steps") or {}
    out: dict[str, Path | str] = {}
    for name in STEP_NAMES:
        source = run_dir / ((steps.get(name) or {}).get("notebook") or f"notebooks/{name}.ipynb")
        page = source.with_suffix(".html")
        try:
            nb = nbformat.read(source, as_version=4)
            _write_atomic(page, _exporter(STEP_NOTEBOOK_TEMPLATE).from_notebook_node(nb)[0])
            out[name] = page
        except Exception as exc:  # noqa: BLE001 - a notebook that will not render keeps its .ipynb link
            page.unlink(missing_ok=True)
            out[name] = f"not rendered ({type(exc).__name__}: {exc})"
    return out


# =========================================================================== the whole report
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
        mark_report_out_of_date(
            run_dir, "rendered with stale steps: " + "; ".join(f"{k}: {v}" for k, v in stale.items())
        )
    print(write_pdf(out))
    return out
