"""Tables for the chapters: an HTML table in the book, aligned text in a terminal and in nbval.

>>> Table([("CoAtNet-0", 25.0), ("CoAtNet-1", 42.2)], ["model", "params (M)"], formats=["", ".1f"])
model      params (M)
---------  ----------
CoAtNet-0        25.0
CoAtNet-1        42.2

Jupyter (and so the HTML book) shows ``_repr_html_``; ``repr`` is the plain text that nbval compares.
Numbers are right-aligned, text left-aligned, each column formatted by its entry of ``formats``
(a format spec such as ``".3f"`` or ``","``; ``""`` for ``str``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from numbers import Number


class Table:
    """Rows of values under named columns, shown as an HTML table (see the module docstring)."""

    def __init__(self, rows: Sequence[Sequence], columns: Sequence[str], formats: Sequence[str] | None = None):
        self.columns = [str(c) for c in columns]
        self.formats = list(formats) if formats is not None else [""] * len(self.columns)
        if len(self.formats) != len(self.columns):
            raise ValueError(f"{len(self.formats)} formats for {len(self.columns)} columns: give one per column")
        self.rows = [list(row) for row in rows]
        for number, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(
                    f"row {number} has {len(row)} values for {len(self.columns)} columns {self.columns}: "
                    "give one value per column"
                )

    def _cells(self) -> list[list[str]]:
        return [[format(value, spec) for value, spec in zip(row, self.formats)] for row in self.rows]

    def _numeric(self) -> list[bool]:
        return [all(isinstance(row[i], Number) for row in self.rows) for i in range(len(self.columns))]

    def __repr__(self) -> str:
        cells, numeric = self._cells(), self._numeric()
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(self.columns)]

        def line(values):
            return "  ".join(
                v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric)
            ).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(self.columns), rule] + [line(row) for row in cells])

    def _repr_html_(self) -> str:
        numeric = self._numeric()

        def cell(tag, value, right):
            style = ' style="text-align: right"' if right else ""
            return f"<{tag}{style}>{html.escape(value)}</{tag}>"

        head = "".join(cell("th", c, r) for c, r in zip(self.columns, numeric))
        body = "".join(
            "<tr>" + "".join(cell("td", v, r) for v, r in zip(row, numeric)) + "</tr>" for row in self._cells()
        )
        return f'<table class="coatlib-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
