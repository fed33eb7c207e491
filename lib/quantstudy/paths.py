"""Where things live. Relative paths in params are relative to the project root, so a
notebook opened in JupyterLab (cwd notebooks/) and a batch run (cwd root) agree."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def project_root() -> Path:
    env = os.environ.get("QUANTSTUDY_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parents[2]  # lib/quantstudy/paths.py -> repo root (editable install)
    if (here / "params").is_dir() and (here / "pyproject.toml").is_file():
        return here
    for folder in [Path.cwd(), *Path.cwd().parents]:
        if (folder / "params").is_dir() and (folder / "pyproject.toml").is_file():
            return folder
    return Path.cwd()


def resolve(path: str | Path) -> Path:
    """An absolute path; relative ones are taken from the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


OUTPUTS = "outputs"
