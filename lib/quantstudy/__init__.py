"""quantstudy: does 4-bit AWQ cut serving cost without users noticing, and how much does
the choice of calibration data matter? Notebooks communicate; this package repeats."""
__version__ = "0.1.0"

import warnings as _warnings

# AutoAWQ (pinned knowingly, see README) prints a long deprecation notice on import and resets
# the DeprecationWarning filter; import it once here, quietly, and restore the filters.
with _warnings.catch_warnings(record=True):
    _warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import awq as _awq  # noqa: F401
    except ImportError:  # the package still imports without it; quantization steps will say so
        pass
