"""The one Markdown table writer (benchmark tables, the report): padded GitHub tables that also read well as text.

Examples:
    >>> print(table(["block", "ms"], [["BoT3", 1.5], ["DAT3", 12.25]]))
    | block |    ms |
    |-------|------:|
    | BoT3  |   1.5 |
    | DAT3  | 12.25 |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["table"]


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub Markdown table with columns padded to their widest cell.

    Args:
        header: Column titles.
        rows: Cells, one sequence per row (``str()`` of each is written).
        align: One character per column, ``l`` or ``r`` (default: the first column left, the others right).
    """
    align = align or ("l" + "r" * (len(header) - 1))
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align must be one 'l' or 'r' per column ({len(header)} columns), got {align!r}")
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(vals: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) if a == "l" else v.rjust(w) for v, w, a in zip(vals, widths, align)) + " |"

    sep = "|" + "|".join("-" * (w + 1) + ":" if a == "r" else "-" * (w + 2) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in cells)])
