"""How the report writes values: numbers, sizes, money, escaped text and markdown tables.

Pure functions of their arguments, shared by the report's sections, its answer box and the
comparison page.
"""

from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence


def num(x: Any) -> float | None:
    """``x`` as a finite float, else None."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt(x: Any, nd: int = 2, sign: bool = False) -> str:
    """A number for the text; 'n/a' for None/NaN; other values as str."""
    if isinstance(x, bool) or x is None:
        return {True: "yes", False: "no", None: "n/a"}[x]
    v = num(x)
    if v is None:
        return "n/a" if isinstance(x, (int, float)) else str(x)
    if isinstance(x, int) and not sign:
        return f"{x:,}"
    if round(v, nd) == 0:
        v = 0.0  # no "-0.00"
    return f"{v:+,.{nd}f}" if sign else f"{v:,.{nd}f}"


def escape_html(x: Any) -> str:
    """``x`` as text safe inside HTML, quotes included (for attribute values too)."""
    return html.escape(str(x), quote=True)


def md_cell(x: Any) -> str:
    """``x`` as the text of a markdown table cell: HTML escaped, pipes kept out of the grid."""
    return html.escape(str(x), quote=False).replace("|", "\\|")


def md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A markdown table of already formatted values."""
    if not rows:
        return "_(none)_"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(md_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(md_cell(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def gb(b: Any) -> str:
    """Bytes in GB (10^9)."""
    v = num(b)
    return "n/a" if v is None else f"{v / 1e9:,.3f} GB"


def mb(b: Any) -> str:
    """Bytes in MB (10^6)."""
    v = num(b)
    return "n/a" if v is None else f"{v / 1e6:,.2f} MB"


def size(b: Any) -> str:
    """Bytes in GB from 10^9 bytes up, else in MB."""
    v = num(b)
    return "n/a" if v is None else gb(v) if v >= 1e9 else mb(v)


def money(x: Any) -> str:
    """Dollars to four decimals."""
    v = num(x)
    return "n/a" if v is None else f"${v:,.4f}"
