"""An A/B compare's folder OUT/ab-<date>-<time>-<rand>/: ab.parquet (one row per case), ab_samples.parquet (one row
per timed block or call) and meta.json (environment, sides, configuration, status), each rewritten atomically
(bench.files) after every round, so an interrupted compare leaves what it had measured.

The columns and their types are bench.schema's (AB_COLUMNS, AB_INSTRUCTION_COLUMNS, AB_SAMPLE_COLUMNS), as the run
folder's are. `load_ab` reads a folder back and checks every file the way bench.results.validate checks a run
folder: a folder may have been edited, truncated or sent from elsewhere, so a missing file, a missing column or a
value of the wrong type is one ABFormatError line naming the file, the row, the column and what is accepted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from bench import bounded_read
from bench.ab.decide import Decision
from bench.ab.spec import Side
from bench.cases import Case
from bench.errors import BenchInputError, shown
from bench.files import atomic_write
from bench.schema import (AB_COLUMN_NAMES, AB_COLUMNS, AB_INSTRUCTION_COLUMNS, AB_SAMPLE_COLUMNS, AB_VERDICTS,
                          Column)
from bench.results.store import write_meta

RESULTS = "ab.parquet"
SAMPLES = "ab_samples.parquet"
META = "meta.json"
COLUMNS = AB_COLUMN_NAMES
SAMPLE_COLUMNS = tuple(c.name for c in AB_SAMPLE_COLUMNS)


@dataclass
class CaseRun:
    """One case while it is measured: its per-process log ratios, per-process medians, samples and its fate."""

    case: Case
    a: Side
    b: Side
    ratios: list[float] = field(default_factory=list)
    a_ms: list[float] = field(default_factory=list)  # per-process medians
    b_ms: list[float] = field(default_factory=list)
    cycles: list[int] = field(default_factory=list)  # ABBA cycles per process (same-process design)
    cycle_ratios: list[list[float]] = field(default_factory=list)  # per process: its cycles' log ratios
    cycles_s: list[float] = field(default_factory=list)  # per process: seconds in counted cycles
    process_time_s: float | None = None  # a long call's stretched --process-time (bench.ab.engine)
    block: int | None = None  # calls per ABBA block (the last process's)
    samples: list[tuple] = field(default_factory=list)  # SAMPLE_COLUMNS
    processes: int = 0
    wall_s: float = 0.0
    unit_s: float = 0.0  # wall time of the last unit (one process, or a pair), to foresee the budget
    looks: int | None = None  # K, planned after the first unit (bench.ab.decide.planned_looks)
    look: Decision | None = None  # the latest look with numbers
    failure: str = ""

    @property
    def open(self) -> bool:
        return not self.failure and (self.look is None or self.look.verdict == "continue")

    def add_samples(self, process: int, pairs: Iterable[tuple[str, float]]) -> None:
        count = {"a": 0, "b": 0}
        for side, ms in pairs:
            self.samples.append((self.case.case_id, process, side, count[side], float(ms)))
            count[side] += 1


def _exp(v: float | None) -> float:
    return math.exp(v) if v is not None and math.isfinite(v) else float("nan")


def result_row(run: CaseRun, design: str, revs: tuple[str, str]) -> dict[str, Any]:
    """The case's row: A's identity, the sides, the statistic as ratios, the medians and the verdict."""
    d = run.look
    verdict = "failed" if run.failure else (d.verdict if d is not None else "undecided")
    if verdict == "continue":
        verdict = "undecided"
    reason = run.failure or (d.reason if d is not None else "not measured")
    return {**run.case.identity(), "case_id": run.case.case_id, "model_a": run.a.label, "model_b": run.b.label,
            "rev_a": revs[0], "rev_b": revs[1], "backend_b": run.b.backend, "design": design,
            "processes": run.processes, "n": len(run.ratios),
            "ratio": _exp(d.mean) if d is not None else _exp(float(np.mean(run.ratios))) if run.ratios else float("nan"),
            "ci_low": _exp(d.ci_low) if d else float("nan"), "ci_high": _exp(d.ci_high) if d else float("nan"),
            "confidence": d.confidence if d else float("nan"),
            "sd_log": float(np.std(run.ratios, ddof=1)) if len(run.ratios) > 1 else float("nan"),
            "a_median_ms": float(np.median(run.a_ms)) if run.a_ms else float("nan"),
            "b_median_ms": float(np.median(run.b_ms)) if run.b_ms else float("nan"),
            "block": run.block, "cycles": float(np.median(run.cycles)) if run.cycles else float("nan"),
            "verdict": verdict, "reason": reason, "wall_s": run.wall_s}


def results_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=list(COLUMNS))


def samples_frame(runs: Iterable[CaseRun]) -> pd.DataFrame:
    df = pd.DataFrame([s for r in runs for s in r.samples], columns=list(SAMPLE_COLUMNS))
    return df.astype({c.name: c.dtype for c in AB_SAMPLE_COLUMNS})


def save(folder: Path, results: pd.DataFrame, samples: pd.DataFrame, meta: dict[str, Any]) -> None:
    atomic_write(folder / RESULTS, lambda p: results.to_parquet(p, index=False))
    atomic_write(folder / SAMPLES, lambda p: samples.to_parquet(p, index=False))
    write_meta(folder, meta)


# ---------------------------------------------------------------------------------------------------------------
# reading a folder back


class ABFormatError(BenchInputError):
    """An A/B folder or file that is missing, corrupt or not of this suite; the message is one line for users."""


@dataclass(frozen=True)
class ABFolder:
    """An A/B folder as loaded: its tables in bench.schema's types (nullable Int64, boolean, string) and meta.json."""

    path: Path
    results: pd.DataFrame  # AB_COLUMNS, + AB_INSTRUCTION_COLUMNS after --metric instructions
    samples: pd.DataFrame  # AB_SAMPLE_COLUMNS
    meta: dict[str, Any]


META_TYPES: dict[str, type | tuple[type, ...]] = {
    "run_id": str, "kind": str, "status": str, "started_at": str, "updated_at": str, "env": dict, "config": dict,
    "cases": list, "sides": dict, "wall_s": (int, float)}
STATES = ("created", "running", "interrupted", "complete")
_PANDAS = {"int64": "Int64", "float64": "float64", "bool": "boolean", "string": "string"}
_ACCEPTED = {"int64": "an integer", "float64": "a number", "bool": "true or false", "string": "text"}


def load_ab(path: str | Path) -> ABFolder:
    """The A/B folder at `path` (OUT/ab-*) with every file checked; raises ABFormatError (one line)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ABFormatError(f"{path}: no such A/B folder; accepted: a folder OUT/ab-* written by `ab`")
    for name in (RESULTS, SAMPLES, META):
        if not (folder / name).is_file():
            raise ABFormatError(f"{path}: no {name} in it; accepted: an A/B folder ({RESULTS}, {SAMPLES}, {META})")
    meta = _check_meta(folder / META)
    results = _read(folder / RESULTS, "A/B results")
    counted = [c for c in AB_INSTRUCTION_COLUMNS if c.name in results.columns]
    results = _typed(results, AB_COLUMNS + (AB_INSTRUCTION_COLUMNS if counted else ()), folder / RESULTS)
    _check_values(results, "verdict", AB_VERDICTS, folder / RESULTS)
    samples = _typed(_read(folder / SAMPLES, "A/B samples"), AB_SAMPLE_COLUMNS, folder / SAMPLES)
    _check_values(samples, "side", ("a", "b"), folder / SAMPLES)
    return ABFolder(folder, results, samples, meta)


def _read(path: Path, kind: str) -> pd.DataFrame:
    return bounded_read.read_table(path, kind=kind, error=ABFormatError)


def _check_meta(path: Path) -> dict[str, Any]:
    """meta.json as the engine writes it: an object of kind "ab" whose known keys have their types."""
    try:
        meta = bounded_read.load_json(path, what="a meta.json", error=ABFormatError)
    except OSError as e:
        raise ABFormatError(f"{path}: unreadable ({e})".splitlines()[0]) from None
    if not isinstance(meta, dict) or meta.get("kind") != "ab":
        raise ABFormatError(f"{path}: not the meta.json of an A/B folder; accepted: a JSON object with kind \"ab\"")
    for key, typ in META_TYPES.items():
        v = meta.get(key)
        if v is not None and (not isinstance(v, typ) or isinstance(v, bool)):
            names = "/".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))
            raise ABFormatError(f"{path}: {key!r} is a {type(v).__name__}; accepted: {names}")
    if meta.get("status") is not None and meta["status"] not in STATES:
        raise ABFormatError(f"{path}: status {meta['status']!r}; accepted: {', '.join(STATES)}")
    return meta


def _typed(df: pd.DataFrame, columns: tuple[Column, ...], where: Path) -> pd.DataFrame:
    """The columns in the schema's order and types; a missing column or a value of another type is refused (a
    `processes` of 1.5 or a `ratio` of "fast" is a damaged file, not a missing value)."""
    missing = [c.name for c in columns if c.name not in df.columns]
    if missing:
        raise ABFormatError(f"{where}: missing columns {', '.join(missing)}; accepted: the columns of bench.schema")
    out = pd.DataFrame(index=range(len(df)))
    for c in columns:
        values = df[c.name].tolist()
        for i, v in enumerate(values):
            if not _missing(v) and not _fits(v, c.dtype):
                raise ABFormatError(f"{where}: row {i + 1}: {c.name} = {shown(v)}; accepted: {_ACCEPTED[c.dtype]}")
        cells = [None if _missing(v) else (int(v) if c.dtype == "int64" else v) for v in values]
        out[c.name] = pd.array(cells, dtype=_PANDAS[c.dtype])
    return out


def _check_values(df: pd.DataFrame, column: str, accepted: tuple[str, ...], where: Path) -> None:
    bad = df[column].isna() | ~df[column].isin(accepted)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ABFormatError(f"{where}: row {i + 1}: {column} = {shown(df[column][i])}; accepted: "
                            f"{', '.join(accepted)}")


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _fits(v: Any, dtype: str) -> bool:
    if dtype == "string":
        return isinstance(v, str)
    if dtype == "bool":
        return isinstance(v, (bool, np.bool_))
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return False
    if dtype == "float64":
        return True
    if isinstance(v, (int, np.integer)):
        return -2 ** 63 <= int(v) < 2 ** 63
    return math.isfinite(v) and v == int(v) and abs(v) < 2 ** 63
