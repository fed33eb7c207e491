"""The pipeline's definition: its steps, listed once (``steps.py``)."""
from quantstudy.pipeline.steps import IGNORED_BY_EVERY_STEP, STEPS, Step

__all__ = ["IGNORED_BY_EVERY_STEP", "STEPS", "Step"]
