"""quantstudy: does 4-bit AWQ cut serving cost without users noticing, and how much does
the choice of calibration data matter? Notebooks communicate; this package repeats."""
__version__ = "0.1.0"

import sys as _sys
import warnings as _warnings


def quiet_awq():
    """Import AutoAWQ (pinned knowingly, see README) once, quietly, and return it. It prints a
    long deprecation notice on import and resets the DeprecationWarning filter, and importing
    it costs seconds, so every use inside the package goes through here, at the point of use
    (steps that never touch AWQ, and `quantstudy validate`, start without it)."""
    if "awq" not in _sys.modules:
        with _warnings.catch_warnings(record=True):
            _warnings.simplefilter("ignore", DeprecationWarning)
            import awq  # noqa: F401
    return _sys.modules["awq"]
