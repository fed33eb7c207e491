"""quantstudy: does 4-bit AWQ cut serving cost without users noticing, and how much does
the choice of calibration data matter? Notebooks communicate; this package repeats."""

__version__ = "0.1.0"
