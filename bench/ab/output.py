"""An A/B compare's result as a terminal table, Markdown (every cell escaped) and JSON (bench.text renders)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench.cases import setting_label
from bench.text import markdown_table, md_escape, text_table

HEAD = ("case", "A", "B", "design", "n", "B/A", "CI", "sd", "A ms", "B ms", "verdict", "note")
RIGHT = (4, 5, 7, 8, 9)


def _num(v: Any, fmt: str) -> str:
    return format(float(v), fmt) if v is not None and not pd.isna(v) and math.isfinite(float(v)) else "-"


def _side(row: dict, key: str) -> str:
    rev = row.get(f"rev_{key}") or ""
    label = str(row.get(f"model_{key}") or "")
    return f"{label}@{rev}" if rev else label


def cells(row: dict) -> list[str]:
    """One row's cells; the note is the reason of a case that is not decided."""
    note = "" if row["verdict"] in ("slower", "faster", "unchanged") else str(row["reason"])
    backend = f" (B: {row['backend_b']})" if row.get("backend_b") and row["backend_b"] != row["backend"] else ""
    return [f"{row['height']}x{row['width']} {setting_label(row, device=None)}{backend}", _side(row, "a"),
            _side(row, "b"), str(row["design"]), str(row["n"]), _num(row["ratio"], ".3f"),
            f"[{_num(row['ci_low'], '.3f')}, {_num(row['ci_high'], '.3f')}]", _num(row["sd_log"], ".3f"),
            _num(row["a_median_ms"], ".3f"), _num(row["b_median_ms"], ".3f"), str(row["verdict"]), note]


INSTR_HEAD = ("case", "A", "B", "instructions A", "instructions B", "B/A", "verdict", "note")


def instruction_cells(row: dict) -> list[str]:
    note = "" if row["instructions_verdict"] in ("slower", "faster", "unchanged") else str(row["instructions_reason"])
    return [f"{row['height']}x{row['width']} {setting_label(row, device=None)}", _side(row, "a"), _side(row, "b"),
            _num(row.get("instructions_a"), ".4g"), _num(row.get("instructions_b"), ".4g"),
            _num(row.get("instructions_ratio"), ".5f"), str(row["instructions_verdict"]), note]


def _has_instructions(frame: pd.DataFrame) -> bool:
    return "instructions_verdict" in frame.columns


def format_table(frame: pd.DataFrame) -> str:
    out = text_table(HEAD, [cells(r) for r in frame.to_dict("records")], right=RIGHT)
    if _has_instructions(frame):
        out += "\n\ninstructions per forward (valgrind callgrind, 1 thread):\n" + text_table(
            INSTR_HEAD, [instruction_cells(r) for r in frame.to_dict("records")], right=(3, 4, 5))
    return out


def to_markdown(frame: pd.DataFrame, folder: Path | str) -> str:
    """A heading, the table and where it is stored; names come from users, so everything is escaped."""
    rows = [cells(r) for r in frame.to_dict("records")]
    align = "".join("r" if j in RIGHT else "l" for j in range(len(HEAD)))
    out = (f"## A/B compare {md_escape(Path(folder).name)}\n\n{markdown_table(HEAD, rows, align)}\n\n"
           f"{md_escape(summary(frame))}\n")
    if _has_instructions(frame):
        irows = [instruction_cells(r) for r in frame.to_dict("records")]
        out += ("\nInstructions per forward (valgrind callgrind, 1 thread):\n\n"
                + markdown_table(INSTR_HEAD, irows, "lllrrrll") + "\n")
    return out


def to_json_dict(frame: pd.DataFrame, folder: Path | str) -> dict[str, Any]:
    records = [{k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in r.items()}
               for r in frame.to_dict("records")]
    return {"folder": str(folder), "summary": summary(frame), "cases": records}


def summary(frame: pd.DataFrame) -> str:
    """'2 slower, 1 unchanged of 3 cases', or that nothing could be decided."""
    counts = frame["verdict"].value_counts()
    decided = sum(int(counts.get(v, 0)) for v in ("slower", "faster", "unchanged"))
    parts = ", ".join(f"{int(n)} {v}" for v, n in counts.items())
    if not decided:
        return f"nothing could be decided: {parts} of {len(frame)} case(s)"
    return f"{parts} of {len(frame)} case(s)"
