"""The one renderer of a table, for the terminal and for Markdown, and the one Markdown escaper.

compare, gates, the report and the `models` command print tables; they share these so that alignment and
escaping are decided once. Standard library only: the CLI imports this without paying for torch or pandas.
"""
from __future__ import annotations

import re
from typing import Collection, Sequence

# characters Markdown (GitHub's: strikethrough ~, math $) gives a meaning to inside a table cell or a line of text;
# a backslash before any ASCII punctuation is a literal in CommonMark, so escaping one too many costs nothing
_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\|`*_[]#~$"})
# what starts a list item, a block quote or a heading when it opens a line (a list item "- {text}" included)
_MD_LEADING = re.compile(r"^(?:[-+]|\d{1,9}[.)])(?=\s)|^[-=]{2,}")


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> str:
    """Columns two spaces apart under a dashed rule; `right`: indices of right-aligned (numeric) columns.

    Trailing blanks are stripped, so the last column may be free text of any length."""
    widths = [max([len(h), *(len(r[j]) for r in rows)]) for j, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if j in right else c.ljust(w) for j, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(head).rstrip(), "  ".join("-" * w for w in widths)] + [line(r).rstrip() for r in rows])


def md_escape(text: object) -> str:
    """Text for Markdown (a table cell, a heading, a list item): no HTML (GitHub renders it), no pipes, no
    emphasis, strikethrough, links, code spans or math, nothing that opens a list, a heading or a rule, no line
    breaks. Names come from users and machines, so everything goes through here."""
    s = "" if text is None else str(text)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").translate(_MD_SPECIAL)
    s = " ".join(s.split())
    m = _MD_LEADING.match(s)
    return s if m is None else f"{s[:m.end() - 1]}\\{s[m.end() - 1:]}"


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A Markdown table with every cell escaped; `align`: one 'l' or 'r' per column (missing ones: 'l')."""
    cells = [[md_escape(c) for c in r] for r in [head, *rows]]
    rule = ["---:" if align[j:j + 1] == "r" else "---" for j in range(len(head))]
    return "\n".join("| " + " | ".join(r) + " |" for r in [cells[0], rule, *cells[1:]])
