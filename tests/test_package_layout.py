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
    for name in ("evaluate.py", "lmeval.py"):
        imported = _modules_imported(LIB / "quantstudy" / "steps" / name)
        assert not any(m.startswith("quantstudy.steps.quantize") for m in imported), name


def test_metric_registry_is_a_leaf_and_defines_each_metric_once():
    """params, evaluate and report all read the registry; it reads nothing of the study."""
    from quantstudy import report
    from quantstudy.config import params
    from quantstudy.steps import evaluate
    from quantstudy.metrics import registry

    assert _quantstudy_imports(LIB / "quantstudy" / "metrics" / "registry.py") == set()
    assert params.BUDGET_METRICS is registry.BUDGET_METRICS
    assert evaluate.METRIC_TASK is registry.METRIC_TASK
    assert report.METRIC_LABELS == {n: m.label for n, m in registry.METRICS.items()}
    flip, acc, ppl = (registry.metric(n) for n in ("retention_flip_rate", "retention_acc", "indomain_ppl"))
    assert (flip.higher_is_better, acc.higher_is_better, ppl.higher_is_better) == (False, True, False)
    assert "retention_flip_rate" not in registry.BUDGET_METRICS  # reported, not a budget line
    import pytest

    with pytest.raises(ValueError, match="known metrics"):
        registry.metric("bleu")


def _modules_imported(path: Path) -> set[str]:
    """Full names of the modules a module imports (anywhere in it, lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
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
            ok = (top in sys.stdlib_module_names or top == "pydantic" or name in allowed
                  or name.startswith("quantstudy.contracts"))
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
    from quantstudy.pipeline import runner
    from quantstudy.pipeline import steps

    assert _quantstudy_imports(LIB / "quantstudy" / "pipeline" / "steps.py") == set()
    assert runner.STEPS is steps.STEPS and runner.Step is steps.Step
    assert list(params.STEP_SECTIONS) == [s.name for s in steps.STEPS]
    assert all(params.STEP_SECTIONS[s.name] == s.sections for s in steps.STEPS)
    for name, path in (("params.py", LIB / "quantstudy" / "config" / "params.py"),
                       ("runner.py", LIB / "quantstudy" / "pipeline" / "runner.py")):
        text = path.read_text()
        assert '"01_calibration.ipynb"' not in text and '"01_calibration": (' not in text, f"{name} lists steps again"
