"""Results on disk: `results/<run-id>/` with results.parquet, results.csv, samples.parquet, meta.json and (with
--profile) one trace per case in traces/ (`trace_file` names it).

Every write goes to a temporary file in the same folder and is renamed into place, so a run killed at any moment
leaves the previous complete version of every file (a valid partial run that --resume completes). Parquet and
JSON only: nothing here unpickles what a user might have been sent from elsewhere.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from bench import bounded_read
from bench.files import atomic_write
from bench.results import validate
from bench.results.validate import RunFormatError
from bench.schema import COLUMNS, PAIR_COLUMNS, PROFILE_COLUMNS, SAMPLE_COLUMNS, SCHEMA_VERSION

RESULTS = "results.parquet"
RESULTS_CSV = "results.csv"
SAMPLES = "samples.parquet"
PROFILE = "profile.parquet"
PAIRS = "pairs.parquet"
PAIRS_CSV = "pairs.csv"
TRACES = "traces"
META = "meta.json"


def trace_file(case_id: str) -> str:
    """A case's trace file in TRACES: the characters a file system and a URL take as they are, and a digest of the
    whole id so that two ids never share a file."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", case_id)[:160] + "-" + hashlib.sha1(case_id.encode()).hexdigest()[:8] \
        + ".json.gz"


@dataclass
class Run:
    path: Path
    results: pd.DataFrame
    samples: pd.DataFrame
    meta: dict[str, Any]
    unfinished: list[str] = field(default_factory=list)  # ok rows whose samples are not all stored (validate)
    profile: pd.DataFrame | None = None  # profile.parquet (--profile), None when the run has none
    pairs: pd.DataFrame | None = None  # pairs.parquet (interleaved groups' paired decisions), None when none

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id") or self.path.name)


def results_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows (dicts) -> a DataFrame with exactly the schema's columns, in order, with the schema's dtypes."""
    return _schema_frame(rows, COLUMNS)


def profile_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Profile rows -> a DataFrame with exactly bench.schema.PROFILE_COLUMNS, in order, with their dtypes."""
    return _schema_frame(rows, PROFILE_COLUMNS)


def pairs_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Pair rows -> a DataFrame with exactly bench.schema.PAIR_COLUMNS, in order, with their dtypes."""
    return _schema_frame(rows, PAIR_COLUMNS)


def _schema_frame(rows: Iterable[dict[str, Any]], columns: tuple) -> pd.DataFrame:
    """The engine's own rows in a schema: missing columns NA, numbers coerced (validate.py is for files read)."""
    df = pd.DataFrame(list(rows))
    for c in columns:
        if c.name not in df.columns:
            df[c.name] = pd.NA
    df = df[[c.name for c in columns]]
    for c in columns:
        if c.dtype == "int64":
            df[c.name] = pd.to_numeric(df[c.name], errors="coerce").astype("Int64")
        elif c.dtype == "float64":
            df[c.name] = pd.to_numeric(df[c.name], errors="coerce").astype("float64")
        elif c.dtype == "bool":
            df[c.name] = df[c.name].astype("boolean")
        else:
            df[c.name] = df[c.name].astype("string")
    return df


def samples_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    rows = [r if "repeat" in r else {**r, "repeat": 0} for r in rows]
    df = pd.DataFrame(rows, columns=[c.name for c in SAMPLE_COLUMNS])
    return df.astype({"run_id": "string", "case_id": "string", "repeat": "int64", "iter": "int64",
                      "latency_ms": "float64"})


def samples_by_process(samples: pd.DataFrame, by: list[str]) -> dict[tuple, list]:
    """Raw samples grouped for statistics: key (values of `by`) -> one float64 array per process, in process and
    iteration order. Runs written before --repeats existed have no `repeat` column: one process each."""
    if samples is None or not len(samples):
        return {}
    s = samples.assign(repeat=samples["repeat"].fillna(0) if "repeat" in samples.columns else 0)
    s = s.sort_values([c for c in (*by, "repeat", "iter") if c in s.columns], kind="stable")
    return {tuple(str(v) for v in (k if isinstance(k, tuple) else (k,))):
            [r["latency_ms"].to_numpy(dtype="float64") for _, r in g.groupby("repeat", sort=True)]
            for k, g in s.groupby(by if len(by) > 1 else by[0], sort=False)}


def write_results(run_dir: Path, results: pd.DataFrame) -> None:
    atomic_write(run_dir / RESULTS, lambda p: results.to_parquet(p, index=False))
    atomic_write(run_dir / RESULTS_CSV, lambda p: results.to_csv(p, index=False))


def write_samples(run_dir: Path, samples: pd.DataFrame) -> None:
    atomic_write(run_dir / SAMPLES, lambda p: samples.to_parquet(p, index=False))


def write_profile(run_dir: Path, profile: pd.DataFrame) -> None:
    atomic_write(run_dir / PROFILE, lambda p: profile.to_parquet(p, index=False))


def write_pairs(run_dir: Path, pairs: pd.DataFrame) -> None:
    atomic_write(run_dir / PAIRS, lambda p: pairs.to_parquet(p, index=False))
    atomic_write(run_dir / PAIRS_CSV, lambda p: pairs.to_csv(p, index=False))


def write_meta(run_dir: Path, meta: dict[str, Any]) -> None:
    meta = {"schema_version": SCHEMA_VERSION, **meta}

    def write(p: str) -> None:
        with open(p, "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True, default=str)

    atomic_write(run_dir / META, write)


def load_run(path: str | os.PathLike) -> Run:
    """Load a run folder, or a results.parquet/results.csv file inside one, with every file checked
    (bench.results.validate) and results and samples reconciled. Raises RunFormatError (one line)."""
    p = Path(path)
    if p.is_dir():
        run_dir = p
        res_file = p / RESULTS if (p / RESULTS).exists() else p / RESULTS_CSV
    elif p.exists():  # a file; one that is not a regular file (a FIFO, a device) is refused by _read_table
        run_dir, res_file = p.parent, p
    else:
        raise RunFormatError(f"{path}: no such run folder or results file")
    if not res_file.exists():
        raise RunFormatError(f"{path}: no {RESULTS} or {RESULTS_CSV} in it (is it a run folder?)")
    if res_file.suffix not in (".parquet", ".csv"):
        raise RunFormatError(f"{path}: expected a .parquet or .csv results file")
    results = _read_table(res_file, "results")
    missing = [c for c in ("model", "status", "latency_ms_median") if c not in results.columns]
    if missing:
        raise RunFormatError(f"{res_file}: not a results table of this suite (missing columns {', '.join(missing)})")
    results = validate.typed_results(results, res_file)
    meta = _read_meta(run_dir / META)
    samples, unfinished = samples_frame([]), []
    if (run_dir / SAMPLES).exists():
        samples = validate.typed_samples(_read_table(run_dir / SAMPLES, "samples"), run_dir / SAMPLES)
        samples, unfinished = validate.reconcile(results, samples)
    profile = None
    if (run_dir / PROFILE).exists():
        profile = validate.typed_profile(_read_table(run_dir / PROFILE, "profile"), run_dir / PROFILE)
        profile = profile[profile["case_id"].isin(results["case_id"])].reset_index(drop=True)  # committed cases
    pairs = None
    if (run_dir / PAIRS).exists():
        pairs = validate.typed_pairs(_read_table(run_dir / PAIRS, "pairs"), run_dir / PAIRS)
        committed = set(results["case_id"].dropna().astype(str))
        keep = pairs["fast_case_id"].isin(committed) & pairs["slow_case_id"].isin(committed)
        pairs = pairs[keep].reset_index(drop=True)  # pairs of committed rows only
    return Run(path=run_dir, results=results, samples=samples, meta=meta, unfinished=unfinished, profile=profile,
               pairs=pairs)


def _read_table(path: Path, kind: str) -> pd.DataFrame:
    """A table of the run within bench.bounded_read's bounds (regular file, size, columns, cell length)."""
    return bounded_read.read_table(path, kind=kind, error=RunFormatError)


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        meta = bounded_read.load_json(path, what="a meta.json", error=RunFormatError)
    except OSError as e:
        raise RunFormatError(f"{path}: unreadable ({e})".splitlines()[0]) from None
    validate.check_meta(meta, path)
    validate.check_cases(meta, path)
    if meta.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise RunFormatError(f"{path}: schema version {meta.get('schema_version')}, this suite reads {SCHEMA_VERSION}")
    return meta
