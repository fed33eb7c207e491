"""Keep each notebook's ``parameters`` cell equal to ``params/default.yaml``.

The cell holds the run-folder variables (``run_dir``, ``output_dir``, ``input_dirs``), then
one typed literal per ``<section>_<key>`` of the sections the step receives, with the YAML
file's own line comments. ``quantstudy sync-notebooks`` rewrites the cells; a test checks
that they agree.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import nbformat

from quantstudy.config.params import SECTION_MODELS, STEP_SECTIONS, load_params, step_parameters
from quantstudy.paths import resolve
from quantstudy.pipeline.steps import STEPS

_KEY = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*):(.*?)(?:\s+#\s*(.*))?$")


def yaml_comments(path: str | Path) -> dict[str, str]:
    """``section.key`` -> the line comment next to it in a params YAML file."""
    out: dict[str, str] = {}
    section = None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = _KEY.match(line)
        if not m or line.lstrip().startswith(("#", "-")):
            continue
        indent, key, _, comment = m.groups()
        if not indent:
            section = key
        elif section and comment:
            out[f"{section}.{key}"] = comment.strip()
    return out


def _annotation(section: str, key: str, value) -> str:
    ann = SECTION_MODELS[section].model_fields[key].annotation
    optional = type(None) in typing.get_args(ann)
    base = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}
    if value is None or optional:
        inner = [a for a in typing.get_args(ann) if a is not type(None)]
        if inner and typing.get_origin(inner[0]) is typing.Literal:  # a choice of literals: their type
            inner = [type(typing.get_args(inner[0])[0])]
        name = getattr(inner[0], "__name__", "str") if inner else "str"
        return f"{name} | None"
    return base.get(type(value), "str")


def parameters_source(step: str, params_path: str | Path = "params/default.yaml") -> str:
    p = load_params(resolve(params_path), check_files=False)
    comments = yaml_comments(resolve(params_path))
    flat = step_parameters(p, step)
    needs = {s.name: s.needs for s in STEPS}[step]
    inputs = {n: f"outputs/lab/{n}" for n in needs}
    lines = [
        "# Parameters: papermill overrides these; the defaults equal params/default.yaml.",
        'run_dir: str = "outputs/lab"  # run folder (relative paths are from the project root)',
        f'output_dir: str = "outputs/lab/{step}"  # this step\'s artefacts and metrics.json',
        f"input_dirs: dict = {inputs!r}  # upstream steps' output folders",
    ]
    for section in STEP_SECTIONS[step]:
        lines.append(f"# {section}")
        for key in SECTION_MODELS[section].model_fields:
            value = flat[f"{section}_{key}"]
            comment = comments.get(f"{section}.{key}")
            line = f"{section}_{key}: {_annotation(section, key, value)} = {value!r}"
            lines.append(line + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)


def sync_notebooks(
    notebooks_dir: str | Path = "notebooks", params_path: str | Path = "params/default.yaml"
) -> list[str]:
    """Rewrite every step notebook's parameters cell; return the notebooks that changed."""
    changed = []
    for step in STEP_SECTIONS:
        path = resolve(notebooks_dir) / f"{step}.ipynb"
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", []))
        new = parameters_source(step, params_path)
        if cell.source != new:
            cell.source = new
            nbformat.write(nb, path)
            changed.append(path.name)
    return changed
