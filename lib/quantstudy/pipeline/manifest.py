"""A run folder's provenance: hashes, environment, the manifest file, the budget history.

Layout of a run folder ``outputs/<run_id>/`` (run_id defaults to the params file's stem):

- ``params.yaml``                 the resolved params (every default filled in)
- ``notebooks/<step>.ipynb``      executed notebooks (partly executed when a step failed)
- ``<step>/``                     the step's artifacts and its ``metrics.json`` (written by the notebook)
- ``manifest.json``               provenance, written atomically after every step

Manifest paths: ``steps.<name>.notebook`` and ``outputs`` keys are relative to the run
folder; ``inputs`` keys are relative to the project root for external files
(absolute when outside it), ``<step>/<file>`` (run-folder relative) for upstream outputs,
and ``hf:<id>`` for a model that is a Hugging Face hub id (value: the id).

The runner (:mod:`quantstudy.pipeline.runner`) writes it; the report reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from quantstudy.config.params import StudyParams
from quantstudy.paths import project_root, resolve
from quantstudy.pipeline.steps import STEPS, Step

DONE_STATUSES = ("completed", "skipped")  # a step whose outputs are valid
MANIFEST = "manifest.json"
PACKAGES = (
    "quantstudy",
    "torch",
    "transformers",
    "autoawq",
    "accelerate",
    "safetensors",
    "tokenizers",
    "datasets",
    "numpy",
    "pandas",
    "scipy",
    "pydantic",
    "PyYAML",
    "papermill",
    "nbformat",
    "nbclient",
    "ipykernel",
    "tqdm",
)
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- hashing
_hash_cache: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """sha256 of a file, streamed. Large files (model weights, hashed by several steps) are
    cached per (path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _hash_cache:
        return _hash_cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    if st.st_size >= _CHUNK:
        _hash_cache[key] = digest
    return digest


def _files_under(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def hash_tree(root: Path, base: Path | None = None) -> dict[str, str]:
    """{relative path: sha256} for a file, or every (non-hidden) file inside a folder."""
    base = base if base is not None else root.parent
    files = [root] if root.is_file() else _files_under(root) if root.is_dir() else []
    return {_rel(p, base): sha256_file(p) for p in files}


def notebook_source_sha256(path: Path) -> str:
    """Hash of the notebook's cells (type + source) only: outputs, counts and metadata ignored."""
    import nbformat  # papermill and Jupyter load only when notebooks run

    nb = nbformat.read(str(path), as_version=4)
    cells = [[c.get("cell_type"), c.get("source", "")] for c in nb.cells]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode()).hexdigest()


def params_sha256(flat: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _rel(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _param_value(p: StudyParams, dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return getattr(getattr(p, section), key)


def external_inputs(p: StudyParams, step: Step | str, steps: Sequence[Step] = STEPS) -> list[Path]:
    """Local files and folders a step reads (resolved against the project root).

    Unset optional inputs (``rollout.logs: null``) and a model that is a hub id rather
    than a local folder are left out; see :func:`input_hashes`.
    """
    st = step if isinstance(step, Step) else {s.name: s for s in steps}[step]
    out: list[Path] = []
    for key in st.inputs:
        value = _param_value(p, key)
        if value is None:
            continue
        path = resolve(value)
        if key == "model.path" and p.model.source == "gguf":
            from quantstudy.modelsource import gguf_path  # only for a GGUF model, or to find the package's own files

            path = gguf_path(value)  # a file, or a resource inside an installed package
        elif key == "model.path" and not path.exists():
            continue  # a Hugging Face hub id
        out.append(path)
    return out


def input_hashes(p: StudyParams, step: Step, run_dir: Path) -> dict[str, str]:
    """Every input of a step with its hash: external files, upstream outputs, hub model ids."""
    root = project_root()
    hashes: dict[str, str] = {}
    for path in external_inputs(p, step):
        if path.is_dir():
            hashes.update({_rel(f, root): sha256_file(f) for f in _files_under(path)})
        elif path.is_file():
            hashes[_rel(path, root)] = sha256_file(path)
        else:
            hashes[_rel(path, root)] = "missing"
    if "model.path" in step.inputs and p.model.source != "gguf" and not resolve(p.model.path).exists():
        hashes[f"hf:{p.model.path}"] = p.model.path
    for need in step.needs:
        hashes.update(hash_tree(run_dir / need, base=run_dir))
    return dict(sorted(hashes.items()))


# --------------------------------------------------------------------------- environment
def git_info(root: Path | None = None) -> dict[str, Any]:
    root = root or project_root()

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    if os.environ.get("QUANTSTUDY_GIT_COMMIT"):
        # A copy of the tree made elsewhere (a lent GPU machine): the commit it was copied from.
        # It wins over git: such a copy may carry a stale .git (seen: the session's first commit).
        return {"commit": os.environ["QUANTSTUDY_GIT_COMMIT"], "dirty": None, "from_env": True}
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_manifest(run_dir: Path, manifest: Mapping[str, Any]) -> Path:
    """Atomic: write a temporary file next to it, then rename over."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=run_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a shared run folder follows the umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# Packages whose version can change a step's numbers: part of every step's skip key.
KEY_PACKAGES = ("torch", "transformers", "autoawq", "tokenizers", "safetensors", "numpy", "gguf", "datasets")


def code_sha256(package_dir: Path | None = None) -> str:
    """Hash of the library a step runs: every source and template file of the installed
    ``quantstudy`` package (paths and contents), and the versions of :data:`KEY_PACKAGES`."""
    import quantstudy  # only for a GGUF model, or to find the package's own files

    root = Path(package_dir or Path(quantstudy.__file__).parent)
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if (
            f.is_file()
            and "__pycache__" not in f.parts
            and f.suffix in (".py", ".j2", ".css", ".json", ".yaml", ".txt")
        ):
            h.update(str(f.relative_to(root)).encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
    h.update(json.dumps(package_versions(KEY_PACKAGES), sort_keys=True).encode())
    return h.hexdigest()


def record_budget(manifest: dict[str, Any], p: StudyParams, step: str, results_existed: bool) -> dict[str, Any] | None:
    """Append the quality budget to ``manifest["budget_history"]`` when it differs from the last
    one recorded (the first evaluation records it before any checkpoint is scored). An entry
    made after results existed in this run folder marks a budget changed after the fact.
    Nothing is ever removed (``--force`` included). Returns the new entry, if any."""
    budget = [b.model_dump(mode="json") for b in p.evaluate.budget]
    digest = hashlib.sha256(json.dumps(budget, sort_keys=True).encode()).hexdigest()
    history = manifest.setdefault("budget_history", [])
    if history and history[-1].get("sha256") == digest:
        return None
    entry = {
        "budget": budget,
        "sha256": digest,
        "recorded": _now(),
        "step": step,
        "after_results": bool(results_existed or history),
    }
    history.append(entry)
    return entry


def budget_changed_after_results(manifest: Mapping[str, Any]) -> bool:
    return any(e.get("after_results") for e in (manifest.get("budget_history") or [])[1:])


REPORT_FILE = "report.html"
OUT_OF_DATE = "report-out-of-date"


def mark_report_out_of_date(run_dir: Path, why: str) -> None:
    """Put a visible banner at the top of an existing report.html."""
    import html  # only for the out-of-date banner

    report = run_dir / REPORT_FILE
    if not report.is_file():
        return
    text = report.read_text(encoding="utf-8")
    banner = (
        f'<div id="{OUT_OF_DATE}" style="background:#fdecea;border:2px solid #d62728;padding:12px;margin:12px;'
        f'font-weight:bold">This report is out of date: {html.escape(why)} ({_now()}). '
        "Re-run the study to rebuild it.</div>"
    )
    if f'id="{OUT_OF_DATE}"' in text:
        return
    at = text.find("<body")
    at = text.find(">", at) + 1 if at >= 0 else 0
    report.write_text(text[:at] + banner + text[at:], encoding="utf-8")
