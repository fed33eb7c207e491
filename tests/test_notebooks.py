"""Static checks on the study's step notebooks (notebooks/*.ipynb); nothing is executed.

Each notebook is committed clean, has one `parameters` cell whose defaults equal
params/default.yaml for that step, and keeps its logic in the package (no def/class).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import nbformat
import pytest

from quantstudy.config.params import STEP_SECTIONS, load_params, step_parameters
from quantstudy.pipeline import runner

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
DEFAULT_PARAMS = REPO / "params" / "default.yaml"
IDS = [p.stem for p in NOTEBOOKS]


def test_every_step_has_a_notebook():
    assert sorted(p.stem for p in NOTEBOOKS) == sorted(STEP_SECTIONS), "notebooks/ must hold one notebook per step"


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(str(path), as_version=4)


def _parameters_cells(nb: nbformat.NotebookNode) -> list[Any]:
    return [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]


def _code(cell: Any) -> ast.Module:
    # IPython magics and shell escapes are not Python; blank them for parsing.
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in cell.source.splitlines()]
    return ast.parse("\n".join(lines))


def parameter_defaults(cell: Any) -> dict[str, Any]:
    """Top-level `name = literal` and `name: type = literal` assignments of a cell."""
    out: dict[str, Any] = {}
    for node in _code(cell).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value = node.target.id, node.value
        else:
            continue
        try:
            out[name] = ast.literal_eval(value)
        except ValueError:
            out[name] = ast.unparse(value)  # not a literal: compared as source, will not match
    return out


def test_runner_steps_match_step_sections():
    assert [s.name for s in runner.STEPS] == list(STEP_SECTIONS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_without_outputs(path):
    nb = _read(path)
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_one_parameters_cell(path):
    assert len(_parameters_cells(_read(path))) == 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_parameter_defaults_equal_default_params(path):
    assert path.stem in STEP_SECTIONS, f"{path.name} is not a step notebook"
    assert DEFAULT_PARAMS.is_file(), "params/default.yaml is missing"
    expected = step_parameters(load_params(DEFAULT_PARAMS, check_files=False), path.stem)
    cells = _parameters_cells(_read(path))
    assert cells, f"{path.name}: no parameters cell"
    found = parameter_defaults(cells[0])
    missing = sorted(set(expected) - set(found))
    assert not missing, f"{path.name}: parameters cell lacks {missing}"
    wrong = {k: (found[k], expected[k]) for k in expected if found[k] != expected[k]}
    assert not wrong, f"{path.name}: defaults differ from params/default.yaml (found, expected): {wrong}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_parameters_cell_runs_as_python(path):
    """The cell runs in a bare kernel namespace: its annotations name only builtins."""
    cell = _parameters_cells(_read(path))[0]
    exec(compile(cell.source, f"{path.name}:parameters", "exec"), {})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_definitions_in_notebooks(path):
    defs = []
    for i, cell in enumerate(_read(path).cells):
        if cell.cell_type != "code":
            continue
        for node in ast.walk(_code(cell)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defs.append(f"cell {i}: {node.name}")
    assert not defs, f"{path.name}: move these into lib/quantstudy: {defs}"


def test_checks_work_on_a_fixture_notebook():
    """The parsers above, on a fixture notebook (so they are exercised before notebooks exist)."""
    nb = _read(Path(__file__).parent / "fixtures" / "notebooks" / "a_make.ipynb")
    cells = _parameters_cells(nb)
    assert len(cells) == 1
    assert parameter_defaults(cells[0]) == {
        "study_seed": 0,
        "quantize_group_size": 128,
        "run_dir": "",
        "output_dir": "",
        "input_dirs": {},
    }
    annotated = nbformat.v4.new_code_cell("x: int = 3\ny = [1, 2]\n%matplotlib inline\nz = len(y)")
    assert parameter_defaults(annotated) == {"x": 3, "y": [1, 2], "z": "len(y)"}


def test_run_folder_paths_resolve_against_the_project_root(monkeypatch, tmp_path):
    """JupyterLab runs a notebook with its working directory in notebooks/: the relative
    defaults of the parameters cell must still land under <project root>/outputs/lab."""
    from quantstudy.config.params import validate_notebook
    from quantstudy.paths import project_root

    monkeypatch.chdir(REPO / "notebooks")
    cell = _parameters_cells(_read(REPO / "notebooks" / "03_evaluate.ipynb"))[0]
    namespace = dict(parameter_defaults(cell))
    validate_notebook(namespace, "03_evaluate")
    root = project_root()
    assert namespace["output_dir"] == str(root / "outputs" / "lab" / "03_evaluate")
    assert namespace["run_dir"] == str(root / "outputs" / "lab")
    assert namespace["input_dirs"] == {
        "01_calibration": str(root / "outputs" / "lab" / "01_calibration"),
        "02_quantize": str(root / "outputs" / "lab" / "02_quantize"),
    }


@pytest.mark.slow
def test_notebook_run_from_notebooks_folder_writes_under_outputs(tmp_path):
    """Execute a real step notebook as JupyterLab would (cwd notebooks/) and check where its
    files land: step 05 on a fixture step-03 folder (seconds)."""
    import json
    import shutil

    import papermill as pm

    lab = REPO / "outputs" / "lab"
    fixture = REPO / "tests" / "fixtures" / "run" / "03_evaluate"
    stray = REPO / "notebooks" / "outputs"
    assert fixture.is_dir(), "tests/fixtures/run/03_evaluate is committed"
    shutil.rmtree(lab / "05_rollout_analysis", ignore_errors=True)
    src_03 = lab / "03_evaluate"
    had_03 = src_03.exists()
    if not had_03:
        shutil.copytree(fixture, src_03)
    try:
        pm.execute_notebook(
            str(REPO / "notebooks" / "05_rollout_analysis.ipynb"),
            str(tmp_path / "05.ipynb"),
            cwd=str(REPO / "notebooks"),
            kernel_name="python3",
            progress_bar=False,
        )
        assert (lab / "05_rollout_analysis" / "metrics.json").is_file()
        assert json.loads((lab / "05_rollout_analysis" / "metrics.json").read_text())["rollout"]["decision"]
        assert not stray.exists(), "the notebook wrote into notebooks/outputs"
    finally:
        shutil.rmtree(stray, ignore_errors=True)
        if not had_03:
            shutil.rmtree(src_03, ignore_errors=True)
