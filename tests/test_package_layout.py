"""The package's shape: the demo builder depends on the study package, never the reverse."""

from __future__ import annotations

import ast
import json
import sys
import types
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "lib"


def _imports(path: Path) -> set[str]:
    """Top-level package names a module imports (anywhere in it, lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_study_package_never_imports_the_demo_builder():
    offenders = [p.name for p in sorted((LIB / "quantstudy").rglob("*.py")) if "quantstudy_demo" in _imports(p)]
    assert not offenders, f"quantstudy modules importing quantstudy_demo: {offenders}"


def test_demo_builder_lives_beside_the_package():
    for name in ("supportgen", "chatitems", "train", "modelcard"):
        assert (LIB / "quantstudy_demo" / f"{name}.py").is_file(), name
        assert not (LIB / "quantstudy" / f"{name}.py").exists(), f"{name}.py is demo-building code: quantstudy_demo/"


def test_demo_commands_call_the_package(monkeypatch, capsys):
    from quantstudy_demo import cli

    gen = types.ModuleType("quantstudy_demo.supportgen")
    gen.write_demo_data = lambda: {"conversations": 10, "path": Path("data/demo")}
    train = types.ModuleType("quantstudy_demo.train")
    seen = {}
    train.train_demo_model = lambda config_name, out_dir: seen.update(config=config_name, out=out_dir) or {"ok": 1}
    monkeypatch.setitem(sys.modules, "quantstudy_demo.supportgen", gen)
    monkeypatch.setitem(sys.modules, "quantstudy_demo.train", train)

    assert cli.main(["data"]) == 0
    assert json.loads(capsys.readouterr().out) == {"conversations": 10, "path": "data/demo"}
    assert cli.main(["model", "--out", "models/x", "--config", "tiny"]) == 0
    assert seen == {"config": "tiny", "out": "models/x"}
    assert cli.main(["model"]) == 0
    assert seen == {"config": "demo", "out": "models/demo-support-lm"}


def _quantstudy_imports(path: Path) -> set[str]:
    """quantstudy modules a module imports (``from quantstudy import x`` counts as quantstudy.x)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "quantstudy":
            if node.module == "quantstudy":
                out |= {f"quantstudy.{a.name}" for a in node.names}
            else:
                out.add(".".join(node.module.split(".")[:2]))
        elif isinstance(node, ast.Import):
            out |= {".".join(a.name.split(".")[:2]) for a in node.names if a.name.startswith("quantstudy.")}
    return out


def test_awq_format_depends_on_nothing_of_the_study():
    for path in sorted((LIB / "quantstudy" / "awqformat").glob("*.py")):
        extra = _quantstudy_imports(path) - {"quantstudy.paths", "quantstudy.awqformat"}
        assert not extra, f"{path.name} imports {sorted(extra)}: the format must not know the study"


def test_evaluation_does_not_import_the_quantizer():
    """Loading checkpoints lives in awqformat, so step 03 no longer needs step 02's module (the old cycle)."""
    for path in sorted((LIB / "quantstudy" / "steps" / "evaluate").glob("*.py")):
        imported = _modules_imported(path)
        assert not any(m.startswith("quantstudy.steps.quantize") for m in imported), path.name


def test_metric_registry_is_a_leaf_and_defines_each_metric_once():
    """params, evaluate and report all read the registry; it reads nothing of the study."""
    from quantstudy import report
    from quantstudy.config import params
    from quantstudy.metrics import registry, stats

    assert _quantstudy_imports(LIB / "quantstudy" / "metrics" / "registry.py") == set()
    assert params.BUDGET_METRICS is registry.BUDGET_METRICS
    assert stats.METRIC_TASK is registry.METRIC_TASK
    assert report.METRIC_LABELS == {n: m.label for n, m in registry.METRICS.items()}
    flip, acc, ppl = (registry.metric(n) for n in ("retention_flip_rate", "retention_acc", "indomain_ppl"))
    assert (flip.higher_is_better, acc.higher_is_better, ppl.higher_is_better) == (False, True, False)
    assert "retention_flip_rate" not in registry.BUDGET_METRICS  # reported, not a budget line
    import pytest

    with pytest.raises(ValueError, match="known metrics"):
        registry.metric("bleu")


def _modules_imported(path: Path, names: bool = False) -> set[str]:
    """Full names of the modules a module imports (anywhere in it, lazy imports included). With
    ``names``, also ``pkg.name`` for every ``from pkg import name`` (name may be a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and names:
            found = {f"{node.module}.{a.name}" for a in node.names}
            # ``from pkg import submodule`` runs pkg/__init__ first, but what the code uses is the submodule
            out |= found if all(_is_module(n) for n in found) else found | {node.module}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module} if node.module != "quantstudy" else {f"quantstudy.{a.name}" for a in node.names}
    return out


def test_contracts_import_no_step_module():
    """The steps and the report import the contracts, never the reverse: the contracts read
    pydantic, the standard library, quantstudy.paths and the metric registry, nothing else."""
    allowed = {"quantstudy.paths", "quantstudy.metrics.registry"}
    for path in sorted((LIB / "quantstudy" / "contracts").glob("*.py")):
        for name in _modules_imported(path):
            top = name.split(".")[0]
            ok = (
                top in sys.stdlib_module_names
                or top == "pydantic"
                or name in allowed
                or name.startswith("quantstudy.contracts")
            )
            assert ok, f"contracts/{path.name} imports {name}: the contracts must not know the steps"


def _module_files(name: str) -> list[Path]:
    """The files of a module given as a path under lib/quantstudy: name.py, or every file of the package."""
    folder = LIB / "quantstudy" / name
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [folder.with_suffix(".py")]


def test_the_steps_and_the_report_read_each_other_through_the_contracts():
    for name in ("steps/calibration", "steps/quantize", "steps/evaluate", "steps/rollout", "report"):
        imported = set().union(*(_modules_imported(path) for path in _module_files(name)))
        assert "quantstudy.contracts" in imported, name


def test_steps_are_listed_once():
    """The step list lives in quantstudy.pipeline.steps (a leaf); params and the runner derive from it."""
    from quantstudy.config import params
    from quantstudy.pipeline import runner, steps

    assert _quantstudy_imports(LIB / "quantstudy" / "pipeline" / "steps.py") == set()
    assert runner.STEPS is steps.STEPS and runner.Step is steps.Step
    assert list(params.STEP_SECTIONS) == [s.name for s in steps.STEPS]
    assert all(params.STEP_SECTIONS[s.name] == s.sections for s in steps.STEPS)
    for name, path in (
        ("params.py", LIB / "quantstudy" / "config" / "params.py"),
        ("runner.py", LIB / "quantstudy" / "pipeline" / "runner.py"),
    ):
        text = path.read_text()
        assert '"01_calibration.ipynb"' not in text and '"01_calibration": (' not in text, f"{name} lists steps again"


# Layers, lowest first. A module may import its own layer or a lower one (lazy imports count).
LAYERS: dict[str, int] = {
    "quantstudy": 0,
    "quantstudy.paths": 0,
    "quantstudy.pipeline.steps": 0,
    "quantstudy.metrics.registry": 0,
    "quantstudy.serving": 0,
    "quantstudy.awqformat.autoawq": 0,
    "quantstudy.data": 1,
    "quantstudy.modelsource": 1,
    "quantstudy.rollout_logs": 1,
    "quantstudy.config": 2,
    "quantstudy.awqformat": 3,
    "quantstudy.contracts": 3,
    "quantstudy.metrics": 4,
    "quantstudy.steps": 5,
    "quantstudy.pipeline": 6,
    "quantstudy.report": 6,
    "quantstudy.cli": 7,
}
LAYER_NAMES = ("leaves", "data", "config", "format", "metrics", "steps", "pipeline and report", "cli")
# Within the steps layer a step may import an earlier step, never a later one.
STEP_ORDER = ("calibration", "quantize", "evaluate", "benchmark", "rollout")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)
    return LAYERS[best]


def _is_module(name: str) -> bool:
    path = LIB.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _study_graph() -> dict[str, set[str]]:
    """quantstudy module -> the quantstudy names it imports (full names, lazy imports included)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((LIB / "quantstudy").rglob("*.py")):
        graph[_module_name(path)] = {m for m in _modules_imported(path, names=True) if m.split(".")[0] == "quantstudy"}
    return graph


def test_imports_point_one_way():
    """config -> data -> format -> metrics -> steps -> pipeline/report -> cli, never back."""
    upward = []
    for module, imported in _study_graph().items():
        for name in imported:
            if _layer(name) > _layer(module):
                upward.append(f"{module} ({LAYER_NAMES[_layer(module)]}) imports {name} ({LAYER_NAMES[_layer(name)]})")
    assert not upward, "imports pointing up the layers:\n" + "\n".join(sorted(upward))


def test_a_step_imports_only_earlier_steps():
    backward = []
    for module, imported in _study_graph().items():
        if not module.startswith("quantstudy.steps."):
            continue
        mine = STEP_ORDER.index(module.split(".")[2]) if module.split(".")[2] in STEP_ORDER else None
        for name in imported:
            if name.startswith("quantstudy.steps.") and mine is not None:
                theirs = name.split(".")[2]
                if theirs in STEP_ORDER and STEP_ORDER.index(theirs) > mine:
                    backward.append(f"{module} imports {name}")
    assert not backward, "a step importing a later step:\n" + "\n".join(backward)


def test_every_study_module_has_a_layer_and_no_import_cycles():
    graph = _study_graph()
    for module in graph:
        assert _layer(module) is not None, module
    # A cycle is a path back to where it started; modules (not packages) only, lazy imports included.
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph or nxt == node:
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


MAX_FUNCTION_LINES = 60


def test_no_function_runs_over_60_lines_without_a_reason():
    """A longer function says why on a ``# long: <reason>`` comment line right above it."""
    offenders = []
    for path in sorted(LIB.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines), str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            reason = lines[first - 2].strip() if first >= 2 else ""
            if length > MAX_FUNCTION_LINES and not reason.startswith("# long:"):
                offenders.append(f"{path.relative_to(LIB)}:{node.lineno} {node.name} ({length} lines)")
    assert not offenders, "functions over 60 lines with no '# long:' reason above them:\n" + "\n".join(offenders)


def test_imports_inside_functions_say_why():
    """Imports go at the top of a module; one inside a function (torch, AutoAWQ, papermill: start-up
    time) carries a comment on its line, the line above, or a neighbouring import of its block."""
    silent = []
    for path in sorted(LIB.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.col_offset == 0:
                continue
            near = [lines[i] for i in range(max(0, node.lineno - 4), node.end_lineno)]
            said = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
            said = said or any(n.lstrip().startswith(("import ", "from ")) and "#" in n for n in near)
            if not said:
                silent.append(f"{path.relative_to(LIB)}:{node.lineno} {lines[node.lineno - 1].strip()}")
    assert not silent, "imports inside functions with no reason given:\n" + "\n".join(silent)
