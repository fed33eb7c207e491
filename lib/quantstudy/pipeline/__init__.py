"""The pipeline: its steps, listed once (``steps.py``), the runner that executes them
(``runner.py``) and the provenance it writes (``manifest.py``)."""

from quantstudy.pipeline.steps import IGNORED_BY_EVERY_STEP, STEPS, Step

__all__ = ["IGNORED_BY_EVERY_STEP", "STEPS", "Step"]
