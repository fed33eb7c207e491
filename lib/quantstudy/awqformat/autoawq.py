"""AutoAWQ itself, imported once, quietly, where it is used.

AutoAWQ 0.2.9 (pinned knowingly, see README) prints a long deprecation notice on import and
resets the DeprecationWarning filter, and importing it costs seconds. Every use inside the
package calls :func:`quiet_awq` first, at the point of use, so the steps that never touch AWQ
and ``quantstudy validate`` start without it.
"""
from __future__ import annotations

import sys
import warnings


def quiet_awq():
    """Import ``awq`` (once) with its deprecation notice silenced and the warning filters
    restored; return the module."""
    if "awq" not in sys.modules:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("ignore", DeprecationWarning)
            import awq  # noqa: F401
    return sys.modules["awq"]
