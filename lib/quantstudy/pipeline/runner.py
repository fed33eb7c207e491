"""Run the study's step notebooks through papermill, one run folder per params file
(its layout and the manifest: :mod:`quantstudy.pipeline.manifest`).

Each notebook gets as papermill parameters its flat params (``<section>_<key>``), plus
``run_dir`` and ``output_dir`` (absolute paths) and ``input_dirs`` (needed step -> its
absolute output folder). Notebooks run with the project root as working directory.

A step is skipped when its notebook source, its params, its input files (external files
and the outputs of the steps it needs) are unchanged since a completed run, and every
output it recorded still exists with the same hash. ``force=True`` re-runs; a step that
re-runs makes the steps that need it re-run too.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from quantstudy.config.params import IGNORED_FIELDS, STEP_SECTIONS, StudyParams, flatten, load_params, to_yaml
from quantstudy.paths import OUTPUTS, project_root
from quantstudy.pipeline.manifest import (
    DONE_STATUSES,
    MANIFEST,
    _now,
    _rel,
    _umask,
    code_sha256,
    git_info,
    hash_tree,
    input_hashes,
    mark_report_out_of_date,
    notebook_source_sha256,
    package_versions,
    params_sha256,
    read_manifest,
    record_budget,
    sha256_file,
    write_manifest,
)
from quantstudy.pipeline.steps import STEPS, Step

# --------------------------------------------------------------------------- steps
# The steps are listed once, in quantstudy.pipeline.steps.


@dataclass(frozen=True)
class Pipeline:
    """What to run and where. The default is the real study; tests pass fixture steps."""

    steps: tuple[Step, ...] = STEPS
    sections: Mapping[str, Sequence[str]] = field(default_factory=lambda: dict(STEP_SECTIONS))
    notebooks_dir: Path | None = None  # default: <project root>/notebooks
    outputs_dir: Path | None = None  # default: <project root>/outputs
    report: bool = True  # build the report once every step is done

    def notebooks(self) -> Path:
        return Path(self.notebooks_dir) if self.notebooks_dir else project_root() / "notebooks"

    def outputs(self) -> Path:
        return Path(self.outputs_dir) if self.outputs_dir else project_root() / OUTPUTS

    def step(self, name: str) -> Step:
        return {s.name: s for s in self.steps}[name]

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        for s in self.steps:
            if s.name not in self.sections:
                raise ValueError(f"step {s.name} has no entry in the sections map")
            for need in s.needs:
                if need not in names or names.index(need) >= names.index(s.name):
                    raise ValueError(f"step {s.name} needs {need}, which is not an earlier step")


class StepSelectionError(ValueError):
    """A bad --steps/--from value, or a selected step whose needed step has no output yet."""


def resolve_step_name(name: str, steps: Sequence[Step] = STEPS) -> str:
    """``01_calibration``, ``calibration`` or ``01`` -> ``01_calibration``."""
    for s in steps:
        if name in (s.name, s.short) or (name.isdigit() and s.name.split("_", 1)[0] == name):
            return s.name
    valid = ", ".join(f"{s.name} ({s.short})" if s.short != s.name else s.name for s in steps)
    raise StepSelectionError(f"unknown step {name!r}; valid steps: {valid}")


def select_steps(steps: Sequence[Step], only: Iterable[str] | None = None, from_step: str | None = None) -> list[Step]:
    """The steps to run, in pipeline order."""
    chosen = list(steps)
    if from_step is not None:
        start = resolve_step_name(from_step, steps)
        names = [s.name for s in steps]
        chosen = chosen[names.index(start) :]
    if only:
        wanted = {resolve_step_name(n, steps) for n in only}
        chosen = [s for s in chosen if s.name in wanted]
    return chosen


LOCK = ".run.lock"


class RunLockedError(StepSelectionError):
    """Another live run holds the run folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(run_dir: Path) -> Path:
    """Take the run folder's lock (a file holding our pid). A lock whose process is gone is
    stale and is taken over; a live one is refused in one line naming its pid."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_umask())
        except FileExistsError:
            try:
                holder = int(lock.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                holder = -1
            if holder > 0 and holder != os.getpid() and _pid_alive(holder):
                raise RunLockedError(
                    f"{run_dir}: another run (process {holder}) is using this run folder; "
                    f"wait for it to finish, or use another --run-id"
                ) from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()} {_now()}\n")
        return lock
    raise RunLockedError(f"{run_dir}: could not take the run lock {lock}; remove it if no run is active")


# --------------------------------------------------------------------------- results
@dataclass
class StepOutcome:
    name: str
    status: str  # completed | skipped | failed
    notebook: Path  # executed notebook (absolute)
    duration_s: float = 0.0
    error: dict[str, Any] | None = None

    def error_line(self) -> str:
        if not self.error:
            return ""
        e = self.error
        where = f" at cell {e['cell_index']}" if e.get("cell_index") is not None else ""
        if e.get("exec_count") is not None:
            where += f" (In [{e['exec_count']}])"
        text = f"{e.get('ename')}: {e.get('evalue')}".rstrip(": ")
        return f"step {self.name} failed{where}: {text}"


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    manifest_path: Path
    outcomes: list[StepOutcome]
    complete: bool  # every pipeline step is completed/skipped in the manifest

    @property
    def failed(self) -> StepOutcome | None:
        return next((o for o in self.outcomes if o.status == "failed"), None)

    @property
    def ok(self) -> bool:
        return self.failed is None


# --------------------------------------------------------------------------- running
class _TqdmHandler(logging.Handler):
    """Papermill's log (cell outputs, warnings) printed above our progress bar."""

    _NOISE = (
        "Input Notebook:",
        "Output Notebook:",
        "Working directory:",
        "Executing notebook with kernel",
        "Ending Cell ",
    )

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm  # loaded with the long work it reports on

        try:
            text = self.format(record).rstrip("\n")
            if text.strip().startswith(self._NOISE):
                return
            tqdm.write(text, file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never break a run
            self.handleError(record)


def _kernel_name(nb_path: Path) -> str | None:
    """None (use the notebook's kernelspec) when it names an installed kernel, else python3."""
    import nbformat  # papermill and Jupyter load only when notebooks run

    try:
        name = nbformat.read(str(nb_path), as_version=4).metadata.get("kernelspec", {}).get("name")
    except Exception:
        name = None
    if name:
        try:
            # papermill and Jupyter load only when notebooks run
            from jupyter_client.kernelspec import KernelSpecManager

            if name in KernelSpecManager().find_kernel_specs():
                return None
        except Exception:
            pass
    return "python3"


def _skip_reason(
    record: Mapping[str, Any] | None,
    nb_hash: str,
    p_hash: str,
    inputs: Mapping[str, str],
    run_dir: Path,
    code_hash: str | None = None,
) -> str | None:
    """Why the step must run, or None when it can be skipped."""
    if not record:
        return "no earlier run"
    if record.get("status") not in DONE_STATUSES:
        return f"last run {record.get('status')}"
    if record.get("notebook_sha256") != nb_hash:
        return "notebook changed"
    if code_hash is not None and record.get("code_sha256") != code_hash:
        return "library code or key package versions changed"
    if record.get("params_sha256") != p_hash:
        return "params changed"
    if record.get("inputs") != dict(inputs):
        return "inputs changed"
    for rel, digest in (record.get("outputs") or {}).items():
        f = run_dir / rel
        if not f.is_file() or sha256_file(f) != digest:
            return f"output {rel} changed or missing"
    return None


def mark_stale(records: dict[str, Any], pipeline: "Pipeline", p: StudyParams, code_hash: str) -> list[str]:
    """Flag every done step whose recorded inputs no longer match: an upstream step's current
    outputs differ from what it read, or its params or library code changed since it ran.
    Returns the stale steps (also recorded as ``stale: true`` with a reason)."""
    stale: list[str] = []
    for s in pipeline.steps:
        rec = records.get(s.name)
        if not rec or rec.get("status") not in DONE_STATUSES:
            continue
        reason = None
        if rec.get("params_sha256") != params_sha256(key_parameters(p, s.name, pipeline.sections[s.name])):
            reason = "params changed since it ran"
        elif rec.get("code_sha256") not in (None, code_hash):
            reason = "library code changed since it ran"
        else:
            for need in s.needs:
                up = (records.get(need) or {}).get("outputs") or {}
                mine = {k: v for k, v in (rec.get("inputs") or {}).items() if k.startswith(f"{need}/")}
                if mine != up or need in stale:
                    reason = f"{need} changed since it ran"
                    break
        if reason:
            rec["stale"], rec["stale_reason"] = True, reason
            stale.append(s.name)
        else:
            rec.pop("stale", None)
            rec.pop("stale_reason", None)
    return stale


def key_parameters(p: StudyParams, step: str, sections: Sequence[str]) -> dict[str, Any]:
    """The params a step's skip key covers: its sections, less the fields it never reads."""
    ignored = set(IGNORED_FIELDS.get("*", ())) | set(IGNORED_FIELDS.get(step, ()))
    return {k: v for k, v in flatten(p, tuple(sections)).items() if k not in ignored}


@dataclass
class _Run:
    """What every step of one run shares: the run folder, its manifest and the skip key's parts."""

    run_dir: Path
    manifest: dict[str, Any]
    records: dict[str, Any]
    p: StudyParams
    pipeline: Pipeline
    code_hash: str
    git_now: dict[str, Any]
    say: Callable[[str], None]
    log_cells: bool

    def save(self) -> None:
        self.manifest["updated"] = _now()
        write_manifest(self.run_dir, self.manifest)


def run_study(
    params_file: str | Path,
    *,
    steps: Iterable[str] | None = None,
    from_step: str | None = None,
    force: bool = False,
    run_id: str | None = None,
    pipeline: Pipeline | None = None,
    progress: bool = True,
    log_cells: bool = True,
    on_message: Callable[[str], None] | None = None,
) -> RunResult:
    """Validate the params, then run the selected steps (skipping unchanged ones).

    Raises ParamsError (bad params) or StepSelectionError (bad selection) before any
    notebook starts. A failing step does not raise: see ``RunResult.failed``.
    """
    from tqdm import tqdm  # loaded with the long work it reports on

    pipeline = pipeline or Pipeline()
    params_path = Path(params_file)
    p = load_params(params_path)
    selected = select_steps(pipeline.steps, steps, from_step)
    run_id = run_id or params_path.stem
    if not run_id or "/" in run_id or run_id in (".", ".."):
        raise StepSelectionError(f"invalid run id {run_id!r}")
    run_dir = (pipeline.outputs() / run_id).resolve()
    lock = acquire_lock(run_dir)  # one run per folder at a time
    try:
        manifest = read_manifest(run_dir)
        records: dict[str, Any] = dict(manifest.get("steps") or {})
        _check_selection(selected, records, pipeline.notebooks(), run_dir)
        run = _Run(
            run_dir,
            manifest,
            records,
            p,
            pipeline,
            code_sha256(),
            git_info(),
            on_message or (lambda msg: tqdm.write(msg, file=sys.stderr)),
            log_cells,
        )
        _open_manifest(run, run_id, params_path)
        outcomes: list[StepOutcome] = []
        rerun: set[str] = set()
        bar = tqdm(selected, desc="steps", unit="step", disable=not progress, file=sys.stderr)
        with _papermill_log(log_cells):
            try:
                for step in bar:
                    bar.set_description(step.name)
                    outcome = _run_or_skip(run, step, force, rerun)
                    outcomes.append(outcome)
                    if outcome.status == "failed":
                        break
            finally:
                bar.close()
        return _close_manifest(run, run_id, outcomes)
    finally:
        lock.unlink(missing_ok=True)


def _check_selection(selected: Sequence[Step], records: Mapping[str, Any], nb_dir: Path, run_dir: Path) -> None:
    """Every step must exist, and every needed step must run now or have completed before."""
    chosen = {s.name for s in selected}
    for s in selected:
        src = nb_dir / s.notebook
        if not src.is_file():
            raise StepSelectionError(f"step {s.name}: notebook {src} not found")
        for need in s.needs:
            if need in chosen:
                continue
            rec = records.get(need) or {}
            if rec.get("status") not in DONE_STATUSES or not (run_dir / need).is_dir():
                raise StepSelectionError(
                    f"step {s.name} needs {need}, which has not completed in {run_dir}; run it too (e.g. --from {need})"
                )


def _open_manifest(run: _Run, run_id: str, params_path: Path) -> None:
    """Write the resolved params and the run's provenance before any step starts."""
    (run.run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    (run.run_dir / "params.yaml").write_text(to_yaml(run.p), encoding="utf-8")
    run.manifest.update(
        {
            "run_id": run_id,
            "params_file": _rel(params_path, project_root()),
            "params": run.p.model_dump(mode="json"),
            "git": run.git_now,
            "python": sys.version.split()[0],
            "python_full": sys.version,
            "platform": platform.platform(),
            "machine": platform.machine(),
            "packages": package_versions(),
            "updated": _now(),
            "steps": run.records,
        }
    )
    run.manifest.setdefault("created", run.manifest["updated"])
    run.manifest["step_order"] = [s.name for s in run.pipeline.steps]
    write_manifest(run.run_dir, run.manifest)


@contextmanager
def _papermill_log(log_cells: bool):
    """Papermill's log (cell outputs) printed above the progress bar while the steps run."""
    if not log_cells:
        yield
        return
    pm_logger = logging.getLogger("papermill")
    old_level = pm_logger.level
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    pm_logger.addHandler(handler)
    pm_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        pm_logger.removeHandler(handler)
        pm_logger.setLevel(old_level)


def _run_or_skip(run: _Run, step: Step, force: bool, rerun: set[str]) -> StepOutcome:
    """Skip the step when its skip key is unchanged, else run it. Re-raises an interrupt."""
    src = run.pipeline.notebooks() / step.notebook
    executed = run.run_dir / "notebooks" / f"{step.name}.ipynb"
    nb_hash = notebook_source_sha256(src)
    p_hash = params_sha256(key_parameters(run.p, step.name, run.pipeline.sections[step.name]))
    inputs = input_hashes(run.p, step, run.run_dir)
    prev = run.records.get(step.name)
    reason = "forced" if force else None
    if reason is None and any(n in rerun for n in step.needs):
        reason = "a needed step re-ran"
    if reason is None:
        reason = _skip_reason(prev, nb_hash, p_hash, inputs, run.run_dir, run.code_hash)
    if reason is None:
        rec = dict(prev or {})
        rec.update(status="skipped", reason="unchanged", checked=_now())
        rec.pop("failed_attempt", None)  # the kept result matches the inputs again
        run.records[step.name] = rec
        run.save()
        run.say(f"skip {step.name} (unchanged)")
        return StepOutcome(step.name, "skipped", executed, 0.0)
    rerun.add(step.name)
    key = {"notebook_sha256": nb_hash, "params_sha256": p_hash, "inputs": inputs, "reason": reason}
    return _run_step(run, step, src, executed, prev, key)


def _run_step(
    run: _Run, step: Step, src: Path, executed: Path, prev: Mapping[str, Any] | None, key: Mapping[str, Any]
) -> StepOutcome:
    """Execute one notebook into a fresh output folder; on failure keep an earlier good result."""
    out_dir = run.run_dir / step.name
    backup, had_good = _fresh_output_folder(out_dir, executed, prev)
    rec = _running_record(run, src, executed, key)
    run.records[step.name] = rec
    sections = run.pipeline.sections
    if "evaluate" in sections[step.name] and step.name == next(
        (s.name for s in run.pipeline.steps if "evaluate" in sections[s.name]), None
    ):
        record_budget(run.manifest, run.p, step.name, results_existed=bool(prev and prev.get("outputs")))
    write_manifest(run.run_dir, run.manifest)
    parameters = {
        **flatten(run.p, tuple(sections[step.name])),
        "run_dir": str(run.run_dir),
        "output_dir": str(out_dir),
        "input_dirs": {n: str(run.run_dir / n) for n in step.needs},
    }
    t0 = time.perf_counter()
    error, interrupted = _execute(src, executed, parameters, run.log_cells)
    duration = time.perf_counter() - t0
    rec.update(
        {
            "status": "failed" if error else "completed",
            "end": _now(),
            "duration_s": round(duration, 3),
            "outputs": hash_tree(out_dir, base=run.run_dir),
            "error": error,
        }
    )
    if error and had_good and backup.is_dir():
        executed = _restore_previous(run, step, rec, prev, backup, executed)
    else:
        shutil.rmtree(backup, ignore_errors=True)
    run.save()
    if interrupted is not None:
        raise interrupted
    return StepOutcome(step.name, "failed" if error else rec["status"], executed, duration, error)


def _fresh_output_folder(out_dir: Path, executed: Path, prev: Mapping[str, Any] | None) -> tuple[Path, bool]:
    """Empty the step's output folder: stale files from an older run must not become outputs. A
    good earlier result is moved aside, not deleted, until this run succeeds. Returns (where it
    went, whether there was one)."""
    backup = out_dir.parent / f".{out_dir.name}.previous"
    shutil.rmtree(backup, ignore_errors=True)
    had_good = bool(prev and prev.get("status") in DONE_STATUSES and out_dir.is_dir())
    if out_dir.exists():
        if had_good:
            out_dir.rename(backup)
            if executed.is_file():
                shutil.copy2(executed, backup / ".executed.ipynb")
        else:
            shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    return backup, had_good


def _running_record(run: _Run, src: Path, executed: Path, key: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest record of a step that starts now (completed or failed when it ends)."""
    return {
        "status": "running",
        "source_notebook": _rel(src, project_root()),
        "notebook": _rel(executed, run.run_dir),
        "notebook_sha256": key["notebook_sha256"],
        "params_sha256": key["params_sha256"],
        "code_sha256": run.code_hash,
        "git_commit": run.git_now.get("commit"),
        "git_dirty": run.git_now.get("dirty"),
        "inputs": key["inputs"],
        "outputs": {},
        "start": _now(),
        "end": None,
        "duration_s": None,
        "reason": key["reason"],
        "error": None,
    }


def _execute(
    src: Path, executed: Path, parameters: Mapping[str, Any], log_cells: bool
) -> tuple[dict[str, Any] | None, BaseException | None]:
    """Run one notebook with papermill: (error record or None, an interrupt to re-raise or None)."""
    import papermill as pm  # papermill and Jupyter load only when notebooks run
    from papermill.exceptions import PapermillExecutionError  # papermill and Jupyter load only when notebooks run

    try:
        pm.execute_notebook(
            str(src),
            str(executed),
            parameters=dict(parameters),
            cwd=str(project_root()),
            kernel_name=_kernel_name(src),
            log_output=log_cells,
            progress_bar=False,
            request_save_on_cell_execute=True,
        )
    except PapermillExecutionError as exc:
        return {
            "ename": exc.ename,
            "evalue": exc.evalue,
            "cell_index": exc.cell_index,
            "exec_count": exc.exec_count,
        }, None
    except Exception as exc:  # kernel died, missing kernel, unreadable notebook...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {"ename": type(exc).__name__, "evalue": first, "cell_index": None, "exec_count": None}, None
    except BaseException as exc:  # KeyboardInterrupt: record it, then stop
        return {"ename": type(exc).__name__, "evalue": "interrupted", "cell_index": None, "exec_count": None}, exc
    return None, None


def _restore_previous(
    run: _Run, step: Step, rec: Mapping[str, Any], prev: Mapping[str, Any], backup: Path, executed: Path
) -> Path:
    """A re-run failed: keep the failed attempt for diagnosis, bring the good result back.
    Returns where the failed attempt's notebook now is."""
    out_dir = run.run_dir / step.name
    failed_dir = run.run_dir / f".{step.name}.failed"
    shutil.rmtree(failed_dir, ignore_errors=True)
    out_dir.rename(failed_dir)
    failed_nb = run.run_dir / "notebooks" / f"{step.name}.failed.ipynb"
    if executed.is_file():
        executed.replace(failed_nb)
    if (backup / ".executed.ipynb").is_file():
        (backup / ".executed.ipynb").replace(executed)
    backup.rename(out_dir)
    attempt = {k: rec[k] for k in ("start", "end", "duration_s", "reason", "error")}
    attempt.update(
        status="failed", notebook=_rel(failed_nb, run.run_dir), outputs_kept_in=_rel(failed_dir, run.run_dir)
    )
    run.records[step.name] = {**prev, "failed_attempt": attempt}
    error = rec["error"] or {}
    mark_report_out_of_date(
        run.run_dir,
        f"step {step.name} failed on re-run ({error.get('ename')}: "
        f"{error.get('evalue')}); the results shown are the previous ones",
    )
    return failed_nb


def _close_manifest(run: _Run, run_id: str, outcomes: list[StepOutcome]) -> RunResult:
    """Flag stale steps, record whether the run is complete, and say how it went."""
    stale = mark_stale(run.records, run.pipeline, run.p, run.code_hash)
    complete = not stale and all(
        (run.records.get(s.name) or {}).get("status") in DONE_STATUSES
        and "failed_attempt" not in (run.records.get(s.name) or {})
        for s in run.pipeline.steps
    )
    run.manifest["complete"] = complete
    run.manifest["stale_steps"] = stale
    write_manifest(run.run_dir, run.manifest)
    return RunResult(run_id, run.run_dir, run.run_dir / MANIFEST, outcomes, complete)


def build_report_if_available(run_dir: Path) -> tuple[bool, str]:
    """Call quantstudy.report.build_report(run_dir) when it exists; (built?, message)."""
    try:
        from quantstudy import report  # type: ignore[attr-defined]

        build = report.build_report
    except (ImportError, AttributeError) as exc:
        return False, f"note: report not built (quantstudy.report.build_report is not available: {exc})"
    result = build(Path(run_dir))
    return True, f"report: {result}" if result is not None else "report built"
