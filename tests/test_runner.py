"""The runner on three small fixture notebooks: a_make -> b_consume -> c_check.

a_make gets study + quantize params and writes values.json; b_consume reads a_make's
output and data.conversations; c_check reads b_consume's output and fails when
rollout.scenario is 'worse'.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import nbformat
import pytest
from conftest import conversation_lines

from quantstudy import cli
from quantstudy.config.params import STEP_SECTIONS
from quantstudy.pipeline import manifest as provenance
from quantstudy.pipeline import runner
from quantstudy.pipeline.manifest import budget_changed_after_results
from quantstudy.pipeline.runner import Pipeline, Step

FIXTURE_STEPS = (
    Step("a_make", "a_make.ipynb", (), ("model.path",)),
    Step("b_consume", "b_consume.ipynb", ("a_make",), ("data.conversations",)),
    Step("c_check", "c_check.ipynb", ("b_consume",)),
)
FIXTURE_SECTIONS = {"a_make": ("study", "quantize"), "b_consume": ("data",), "c_check": ("rollout",)}
NAMES = [s.name for s in FIXTURE_STEPS]


@pytest.fixture
def pipeline(project: Path) -> Pipeline:
    return Pipeline(steps=FIXTURE_STEPS, sections=FIXTURE_SECTIONS, notebooks_dir=project / "notebooks", report=False)


@pytest.fixture
def run(pipeline, capsys):
    """run(*cli args) -> (exit code, stdout, stderr) through cli.main with the fixture steps."""

    def go(*args: str) -> tuple[int, str, str]:
        code = cli.main(["run", *args], pipeline=pipeline)
        out, err = capsys.readouterr()
        return code, out, err

    return go


def manifest(project: Path, run_id: str = "study") -> dict:
    return json.loads((project / "outputs" / run_id / "manifest.json").read_text())


def statuses(project: Path, run_id: str = "study") -> dict[str, str]:
    return {k: v["status"] for k, v in manifest(project, run_id)["steps"].items()}


def starts(project: Path) -> dict[str, str]:
    return {k: v["start"] for k, v in manifest(project)["steps"].items()}


# --------------------------------------------------------------------------- definitions
def test_real_steps_follow_step_sections():
    assert [s.name for s in runner.STEPS] == list(STEP_SECTIONS)
    assert [s.notebook for s in runner.STEPS] == [f"{n}.ipynb" for n in STEP_SECTIONS]
    needs = {s.name: s.needs for s in runner.STEPS}
    assert needs == {
        "01_calibration": (),
        "02_quantize": ("01_calibration",),
        "03_evaluate": ("01_calibration", "02_quantize"),
        "04_benchmark": ("02_quantize",),
        "05_rollout_analysis": ("03_evaluate", "04_benchmark"),
    }


def test_step_names_resolve():
    assert runner.resolve_step_name("calibration") == "01_calibration"
    assert runner.resolve_step_name("02_quantize") == "02_quantize"
    assert runner.resolve_step_name("05") == "05_rollout_analysis"
    with pytest.raises(runner.StepSelectionError, match="valid steps: 01_calibration"):
        runner.resolve_step_name("quantise")
    picked = runner.select_steps(runner.STEPS, from_step="evaluate")
    assert [s.name for s in picked] == ["03_evaluate", "04_benchmark", "05_rollout_analysis"]
    picked = runner.select_steps(runner.STEPS, only=["benchmark", "01_calibration"])
    assert [s.name for s in picked] == ["01_calibration", "04_benchmark"]


def test_external_inputs_per_step(write_params, project):
    from quantstudy.config.params import load_params

    p = load_params(write_params())
    model, conv, tasks = (
        project / "models/tiny",
        project / "data/conversations.jsonl",
        project / "data/task_items.jsonl",
    )
    assert provenance.external_inputs(p, "01_calibration") == [conv, model]  # no lexicon in the fixture params
    assert provenance.external_inputs(p, "02_quantize") == [
        model,
        conv,
    ]  # its sanity check reads held-out conversations
    assert provenance.external_inputs(p, "03_evaluate") == [model, conv, tasks]
    assert provenance.external_inputs(p, "04_benchmark") == [model]
    assert provenance.external_inputs(p, "05_rollout_analysis") == []
    hashes = provenance.input_hashes(p, runner.STEPS[1], project / "outputs" / "x")
    assert list(hashes) == ["data/conversations.jsonl", "models/tiny/config.json"]
    # A hub id is recorded by name.
    hub = p.model_copy(update={"model": p.model.model_copy(update={"source": "hf", "path": "org/some-model"})})
    hub_hashes = provenance.input_hashes(hub, runner.STEPS[1], project / "outputs" / "x")
    assert hub_hashes["hf:org/some-model"] == "org/some-model" and "models/tiny/config.json" not in hub_hashes


def test_notebook_hash_ignores_outputs_and_metadata(tmp_path):
    src = Path(__file__).parent / "fixtures" / "notebooks" / "a_make.ipynb"
    nb = nbformat.read(src, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="hi")]
    nb.cells[1].execution_count = 3
    nb.metadata["papermill"] = {"x": 1}
    other = tmp_path / "a.ipynb"
    nbformat.write(nb, other)
    assert provenance.notebook_source_sha256(other) == provenance.notebook_source_sha256(src)
    nb.cells[1].source += "\n# changed"
    nbformat.write(nb, other)
    assert provenance.notebook_source_sha256(other) != provenance.notebook_source_sha256(src)


def test_bad_pipeline_definition_is_refused():
    with pytest.raises(ValueError, match="not an earlier step"):
        Pipeline(steps=(Step("b", "b.ipynb", ("a",)), Step("a", "a.ipynb")), sections={"a": (), "b": ()})


# --------------------------------------------------------------------------- running
def test_run_writes_folder_and_manifest_then_skips(write_params, project, run):
    params = write_params()
    code, out, err = run(str(params))
    assert code == 0, err
    assert "run study: 3 completed" in out
    run_dir = project / "outputs" / "study"
    assert (run_dir / "params.yaml").is_file()
    for name in NAMES:
        assert (run_dir / "notebooks" / f"{name}.ipynb").is_file()
        assert (run_dir / name / "metrics.json").is_file()
    assert json.loads((run_dir / "c_check" / "metrics.json").read_text())["n_conversations"] == 2

    m = manifest(project)
    for key in ("run_id", "params_file", "params", "git", "python", "platform", "packages", "steps"):
        assert key in m
    assert m["run_id"] == "study" and m["params_file"] == "params/study.yaml"
    assert m["params"]["quantize"]["group_size"] == 128
    assert set(m["git"]) == {"commit", "dirty"}
    assert m["packages"]["papermill"] and "torch" in m["packages"]
    assert m["complete"] is True
    sha = re.compile(r"^[0-9a-f]{64}$")
    for name in NAMES:
        rec = m["steps"][name]
        assert rec["status"] == "completed"
        assert rec["error"] is None
        assert rec["duration_s"] > 0 and rec["start"] < rec["end"]
        assert rec["notebook"] == f"notebooks/{name}.ipynb"
        assert sha.match(rec["notebook_sha256"]) and sha.match(rec["params_sha256"])
        assert rec["outputs"] and all(sha.match(h) for h in rec["outputs"].values())
        assert f"{name}/metrics.json" in rec["outputs"]
    assert set(m["steps"]["a_make"]["inputs"]) == {"models/tiny/config.json"}
    assert set(m["steps"]["b_consume"]["inputs"]) == {
        "data/conversations.jsonl",
        "a_make/metrics.json",
        "a_make/values.json",
    }
    assert (
        m["steps"]["b_consume"]["inputs"]["a_make/values.json"] == m["steps"]["a_make"]["outputs"]["a_make/values.json"]
    )

    # The executed notebook got the run parameters.
    executed = nbformat.read(run_dir / "notebooks" / "b_consume.ipynb", as_version=4)
    injected = next(c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert f'output_dir = "{run_dir / "b_consume"}"' in injected.source
    assert "input_dirs = {" in injected.source and "quantize_group_size" not in injected.source

    # Second run: nothing changed, everything skipped, records kept.
    first = starts(project)
    code, out, err = run(str(params))
    assert code == 0, err
    assert "3 skipped" in out
    for name in NAMES:
        assert f"skip {name} (unchanged)" in err
    assert statuses(project) == {n: "skipped" for n in NAMES}
    assert starts(project) == first
    assert manifest(project)["complete"] is True

    # --force re-runs everything.
    code, out, err = run(str(params), "--force")
    assert code == 0, err
    assert statuses(project) == {n: "completed" for n in NAMES}
    assert all(starts(project)[n] > first[n] for n in NAMES)


def test_changes_rerun_the_step_and_downstream(write_params, project, run):
    params = write_params()
    assert run(str(params))[0] == 0
    before = starts(project)

    # A param only b_consume gets: a skipped, b and c re-run.
    write_params(**{"data.eval_fraction": 0.3})
    code, _, err = run(str(params))
    assert code == 0, err
    assert statuses(project) == {"a_make": "skipped", "b_consume": "completed", "c_check": "completed"}
    after = starts(project)
    assert after["a_make"] == before["a_make"] and after["c_check"] > before["c_check"]

    # An input file of b_consume changes: b and c re-run.
    (project / "data" / "conversations.jsonl").write_text(conversation_lines(3))
    code, _, err = run(str(params))
    assert code == 0, err
    assert statuses(project) == {"a_make": "skipped", "b_consume": "completed", "c_check": "completed"}
    assert json.loads((project / "outputs/study/c_check/metrics.json").read_text())["n_conversations"] == 3

    # A param of the first step: all three re-run.
    write_params(**{"data.eval_fraction": 0.3, "quantize.group_size": 64})
    code, _, err = run(str(params))
    assert code == 0, err
    assert statuses(project) == {n: "completed" for n in NAMES}
    assert json.loads((project / "outputs/study/c_check/metrics.json").read_text())["group_size_seen"] == 64

    # An output deleted by hand: that step re-runs (and with it the steps after it).
    (project / "outputs/study/b_consume/metrics.json").unlink()
    code, _, err = run(str(params))
    assert code == 0, err
    assert statuses(project) == {"a_make": "skipped", "b_consume": "completed", "c_check": "completed"}


def test_failing_step_keeps_partial_notebook_and_earlier_outputs(write_params, project, run):
    params = write_params(**{"rollout.scenario": "worse"})
    code, out, err = run(str(params))
    assert code == 1
    assert "Traceback" not in err
    assert "step c_check failed" in err and "ValueError: asked to fail" in err
    executed = project / "outputs" / "study" / "notebooks" / "c_check.ipynb"
    assert "outputs/study/notebooks/c_check.ipynb" in err
    nb = nbformat.read(executed, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors and errors[0].ename == "ValueError"

    m = manifest(project)
    rec = m["steps"]["c_check"]
    assert rec["status"] == "failed"
    assert rec["error"]["ename"] == "ValueError" and rec["error"]["evalue"] == "asked to fail"
    assert isinstance(rec["error"]["cell_index"], int)
    assert rec["outputs"] == {"c_check/partial.txt": rec["outputs"]["c_check/partial.txt"]}
    assert m["complete"] is False
    for name in ("a_make", "b_consume"):
        assert m["steps"][name]["status"] == "completed"
        assert (project / "outputs" / "study" / name / "metrics.json").is_file()

    # Fixed: the earlier steps are skipped, the failed one re-runs.
    write_params(**{"rollout.scenario": "measured"})
    code, _, err = run(str(params))
    assert code == 0, err
    assert statuses(project) == {"a_make": "skipped", "b_consume": "skipped", "c_check": "completed"}
    assert (project / "outputs/study/c_check/metrics.json").is_file()


def test_failure_stops_later_steps(write_params, project, pipeline):
    steps = (Step("c_first", "c_check.ipynb"), Step("a_after", "a_make.ipynb"))
    pipe = Pipeline(
        steps=steps,
        sections={"c_first": ("rollout",), "a_after": ("study",)},
        notebooks_dir=pipeline.notebooks_dir,
        report=False,
    )
    result = runner.run_study(write_params(**{"rollout.scenario": "worse"}), pipeline=pipe, progress=False)
    assert not result.ok and result.failed.name == "c_first"
    assert [o.name for o in result.outcomes] == ["c_first"]
    assert "a_after" not in manifest(project)["steps"]


def test_selection_with_steps_and_from(write_params, project, run):
    params = write_params()
    code, _, err = run(str(params), "--steps", "make")
    assert code == 0, err
    assert statuses(project) == {"a_make": "completed"}

    # c_check needs b_consume, which has not run: refused before anything starts.
    code, _, err = run(str(params), "--steps", "c_check")
    assert code == 2
    assert "c_check needs b_consume" in err

    code, _, err = run(str(params), "--from", "consume")
    assert code == 0, err
    assert statuses(project) == {n: "completed" for n in NAMES}
    before = starts(project)

    code, _, err = run(str(params), "--steps", "check", "--force")
    assert code == 0, err
    after = starts(project)
    assert after["c_check"] > before["c_check"]
    assert after["a_make"] == before["a_make"] and after["b_consume"] == before["b_consume"]

    code, _, err = run(str(params), "--steps", "nope")
    assert code == 2
    assert "unknown step 'nope'" in err and "a_make" in err and "Traceback" not in err


def test_run_id_and_report_hook(write_params, project, pipeline, capsys, monkeypatch):
    calls = []
    fake = types.ModuleType("quantstudy.report")
    fake.build_report = lambda run_dir: calls.append(run_dir) or run_dir / "report.html"
    import quantstudy

    monkeypatch.setitem(sys.modules, "quantstudy.report", fake)
    monkeypatch.setattr(quantstudy, "report", fake, raising=False)  # when an earlier test imported the real one
    pipe = Pipeline(steps=FIXTURE_STEPS[:1], sections=FIXTURE_SECTIONS, notebooks_dir=pipeline.notebooks_dir)
    params = write_params()

    assert cli.main(["run", str(params), "--run-id", "other"], pipeline=pipe) == 0
    out, _ = capsys.readouterr()
    assert calls == [project / "outputs" / "other"]
    assert "report:" in out
    assert manifest(project, "other")["run_id"] == "other"

    assert cli.main(["run", str(params), "--run-id", "other", "--no-report"], pipeline=pipe) == 0
    assert len(calls) == 1

    # No report module yet: a note, and the run still succeeds.
    empty = types.ModuleType("quantstudy.report")
    monkeypatch.setitem(sys.modules, "quantstudy.report", empty)
    monkeypatch.setattr(quantstudy, "report", empty, raising=False)
    assert cli.main(["run", str(params), "--run-id", "other"], pipeline=pipe) == 0
    out, _ = capsys.readouterr()
    assert "report not built" in out


def test_a_library_change_reruns_the_steps(write_params, project, run, monkeypatch, tmp_path):
    """The skip key covers the library a step runs: editing a module of (a copy of) the package
    re-runs every step, and each step records the commit and code hash that computed it."""
    import shutil

    import quantstudy

    lib = tmp_path / "quantstudy_copy"
    shutil.copytree(Path(quantstudy.__file__).parent, lib, ignore=shutil.ignore_patterns("__pycache__"))
    real = runner.code_sha256
    monkeypatch.setattr(runner, "code_sha256", lambda: real(lib))
    params = write_params()
    assert run(str(params))[0] == 0
    first = manifest(project)["steps"]
    assert all(re.match(r"^[0-9a-f]{64}$", first[n]["code_sha256"]) for n in NAMES)
    assert all("git_commit" in first[n] for n in NAMES)
    assert run(str(params))[0] == 0
    assert statuses(project) == {n: "skipped" for n in NAMES}

    scorer = lib / "metrics" / "scoring.py"
    scorer.write_text(scorer.read_text() + "\n# a changed scorer\n")
    code, _, err = run(str(params))
    assert code == 0, err
    assert statuses(project) == {n: "completed" for n in NAMES}
    again = manifest(project)["steps"]
    assert all(again[n]["code_sha256"] != first[n]["code_sha256"] for n in NAMES)
    assert again["a_make"]["reason"] == "library code or key package versions changed"


def test_budget_history_survives_a_change_after_results(write_params, project, capsys):
    """The first evaluation records the budget in the manifest before it runs; a later run
    that brings another budget is recorded as a change after results, and --force keeps it."""
    sections = dict(FIXTURE_SECTIONS, c_check=("rollout", "evaluate"))
    pipe = Pipeline(steps=FIXTURE_STEPS, sections=sections, notebooks_dir=project / "notebooks", report=False)
    params = write_params()
    assert cli.main(["run", str(params)], pipeline=pipe) == 0
    history = manifest(project)["budget_history"]
    assert len(history) == 1 and history[0]["after_results"] is False and history[0]["step"] == "c_check"
    assert not budget_changed_after_results(manifest(project))

    loose = [
        {"metric": "retention_acc", "max_drop": 10.0, "unit": "points"},
        {"metric": "satisfaction", "max_drop": 2.0, "unit": "points"},
    ]
    write_params(**{"evaluate.budget": loose})
    assert cli.main(["run", str(params)], pipeline=pipe) == 0
    assert cli.main(["run", str(params), "--force"], pipeline=pipe) == 0
    m = manifest(project)
    assert len(m["budget_history"]) == 2 and m["budget_history"][1]["after_results"] is True
    assert m["budget_history"][1]["budget"][0]["max_drop"] == 10.0
    assert budget_changed_after_results(m)
    capsys.readouterr()


def test_one_run_per_folder(write_params, project, run, tmp_path):
    """A live run's lock refuses a second run in one line naming its pid; a stale lock (its
    process is gone) is taken over; the lock is released after the run."""
    import subprocess

    params = write_params()
    run_dir = project / "outputs" / "study"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / runner.LOCK).write_text(f"{holder.pid} 2026-01-01T00:00:00\n")
        code, out, err = run(str(params))
        assert code == 2 and f"process {holder.pid}" in err and "another run" in err
        assert len(err.strip().splitlines()) == 1 and not (run_dir / "a_make").exists()
    finally:
        holder.kill()
        holder.wait()
    code, out, err = run(str(params))  # the holder is gone: stale lock, taken over
    assert code == 0, err
    assert not (run_dir / runner.LOCK).exists()


def test_manifest_follows_the_umask(write_params, project, run):
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert run(str(write_params()))[0] == 0
    finally:
        os.umask(old)
    mode = stat.S_IMODE((project / "outputs" / "study" / "manifest.json").stat().st_mode)
    assert mode == 0o644, oct(mode)


def test_a_label_change_reruns_nothing_and_step_keys_skip_unread_fields(write_params, project, run):
    from quantstudy.config.params import load_params

    params = write_params()
    assert run(str(params))[0] == 0
    write_params(**{"study.name": "renamed"})
    code, _, err = run(str(params))
    assert code == 0, err
    assert statuses(project) == {n: "skipped" for n in NAMES}
    p = load_params(params)
    keys = runner.key_parameters(p, "02_quantize", STEP_SECTIONS["02_quantize"])
    assert "data_task_items" not in keys and "study_name" not in keys and "data_conversations" in keys
    assert "model_dtype" not in runner.key_parameters(p, "01_calibration", STEP_SECTIONS["01_calibration"])
    assert "quantize_group_size" in runner.key_parameters(p, "02_quantize", STEP_SECTIONS["02_quantize"])


def test_partial_runs_mark_downstream_steps_stale(write_params, project, run):
    params = write_params()
    assert run(str(params))[0] == 0
    write_params(**{"quantize.group_size": 64})  # a_make reads it
    code, out, err = run(str(params), "--steps", "a_make")
    assert code == 0, err
    m = manifest(project)
    assert m["complete"] is False and m["stale_steps"] == ["b_consume", "c_check"]
    assert m["steps"]["b_consume"]["stale"] is True and "a_make changed" in m["steps"]["b_consume"]["stale_reason"]
    assert "stale steps" in out
    code, _, err = run(str(params))  # b and c re-run: nothing stale any more
    assert code == 0, err
    m = manifest(project)
    assert m["complete"] is True and m["stale_steps"] == [] and "stale" not in m["steps"]["c_check"]


def test_a_failed_rerun_keeps_the_good_result(write_params, project, run):
    params = write_params()
    assert run(str(params))[0] == 0
    run_dir = project / "outputs" / "study"
    good = (run_dir / "c_check" / "metrics.json").read_bytes()
    good_nb = (run_dir / "notebooks" / "c_check.ipynb").read_bytes()
    (run_dir / "report.html").write_text("<html><body><h1>report</h1></body></html>")
    write_params(**{"rollout.scenario": "worse"})  # c_check fails on 'worse'
    code, out, err = run(str(params))
    assert code == 1 and "c_check.failed.ipynb" in err
    assert (run_dir / "c_check" / "metrics.json").read_bytes() == good
    assert (run_dir / "notebooks" / "c_check.ipynb").read_bytes() == good_nb
    assert (run_dir / "notebooks" / "c_check.failed.ipynb").is_file()
    m = manifest(project)
    rec = m["steps"]["c_check"]
    assert rec["status"] == "completed" and rec["failed_attempt"]["status"] == "failed" and m["complete"] is False
    assert 'id="report-out-of-date"' in (run_dir / "report.html").read_text()
    write_params()  # back to the params of the good result
    code, _, err = run(str(params))
    assert code == 0, err
    m = manifest(project)
    assert m["complete"] is True and "failed_attempt" not in m["steps"]["c_check"]


def test_report_refuses_stale_runs_unless_asked(tmp_path):
    import shutil

    from quantstudy import report

    run_dir = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "run", run_dir)
    m = json.loads((run_dir / "manifest.json").read_text())
    report.check_complete(run_dir)
    m["steps"]["03_evaluate"].update(stale=True, stale_reason="02_quantize changed since it ran")
    (run_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(report.ReportError, match="stale steps.*03_evaluate.*--allow-stale"):
        report.check_complete(run_dir)
    assert report.check_complete(run_dir, allow_stale=True)


def test_git_info_outside_a_repository_takes_the_commit_from_the_environment(tmp_path, monkeypatch):
    """A copy of the tree made elsewhere (a lent GPU machine) stamps the commit it came from,
    even where it carries a stale .git."""
    monkeypatch.delenv("QUANTSTUDY_GIT_COMMIT", raising=False)
    assert provenance.git_info(tmp_path)["commit"] is None
    assert provenance.git_info()["commit"] not in (None, "abc123")  # this repository's own commit
    monkeypatch.setenv("QUANTSTUDY_GIT_COMMIT", "abc123")
    assert provenance.git_info(tmp_path) == {"commit": "abc123", "dirty": None, "from_env": True}
    assert provenance.git_info()["commit"] == "abc123"  # the variable wins over a (possibly stale) .git
