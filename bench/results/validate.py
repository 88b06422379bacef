"""Every file of a run folder is checked here, on every load: resume, report, compare and check read runs only
through bench.results.store.load_run, which calls these.

A run folder may have been edited by hand, written by another version, truncated by a full disk or sent from
elsewhere, so nothing in it is trusted: meta.json must have the shape the engine writes, every results column the
type the schema declares (an integer column holds integers within int64, a bool column true/false), samples the
sample schema. A mistake is one `RunFormatError` line naming the file, the row, the column and what is accepted.

`reconcile` then makes the results and the samples agree, because the two files are committed one after the other
(samples first): a sample whose process has no row yet is dropped, and an ok row whose samples are not all there
is reported unfinished (resume measures it again).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.cases import Case, CaseError
from bench.errors import BenchInputError
from bench.schema import COLUMNS, PAIR_COLUMNS, PAIR_DECISIONS, PROFILE_COLUMNS, SAMPLE_COLUMNS, STATUSES

INT64_MAX = 2**63 - 1
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
# meta.json keys the engine reads back, and the JSON type each must have when present
META_TYPES: dict[str, type | tuple[type, ...]] = {
    "run_id": str, "kind": str, "host": str, "status": str, "started_at": str, "env": dict, "config": dict,
    "cases": list, "calibration": dict, "health": dict, "resumed": list, "wall_s": (int, float),
    "cases_done": int, "schema_version": int,
}
RUN_STATES = ("created", "running", "interrupted", "complete")


class RunFormatError(BenchInputError):
    """A run folder or file that is missing, corrupt or of another schema; the message is one line for users."""


def check_meta(meta: Any, where: Path | str) -> dict:
    """meta.json as the engine wrote it: a JSON object whose known keys have their types."""
    if not isinstance(meta, dict):
        raise RunFormatError(f"{where}: a JSON {type(meta).__name__} where an object is expected "
                             "(not a meta.json of this suite)")
    for key, typ in META_TYPES.items():
        v = meta.get(key)
        if v is not None and (not isinstance(v, typ) or isinstance(v, bool)):
            names = "/".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))
            raise RunFormatError(f"{where}: {key!r} is a {type(v).__name__}; accepted: {names}")
    if meta.get("status") is not None and meta["status"] not in RUN_STATES:
        raise RunFormatError(f"{where}: status {meta['status']!r}; accepted: {', '.join(RUN_STATES)}")
    for i, c in enumerate(meta.get("cases") or []):
        if not isinstance(c, dict):
            raise RunFormatError(f"{where}: cases[{i}] is a {type(c).__name__}; accepted: an object per case")
    for k, v in (meta.get("calibration") or {}).items():
        if not isinstance(v, dict):
            raise RunFormatError(f"{where}: calibration[{k!r}] is a {type(v).__name__}; accepted: an object")
    return meta


def check_cases(meta: dict, where: Path | str) -> list:
    """The run's planned cases as typed Cases (bench.cases.Case.from_spec checks every field)."""
    try:
        return [Case.from_spec(c) for c in meta.get("cases") or []]
    except (CaseError, TypeError, ValueError) as e:
        raise RunFormatError(f"{where}: a planned case is invalid ({str(e).splitlines()[0]})") from None


def typed_results(df: pd.DataFrame, where: Path | str) -> pd.DataFrame:
    """The results table with the schema's columns and dtypes; a value of the wrong type is refused, not
    coerced to NA (a `threads` of 1.5 or a `channels_last` of 'maybe' is a damaged file, not a missing value)."""
    out = pd.DataFrame(index=range(len(df)))
    for c in COLUMNS:
        col = df[c.name].reset_index(drop=True) if c.name in df.columns else pd.Series([pd.NA] * len(df))
        out[c.name] = _typed(col, c.dtype, c.name, where)
    for col in ("model", "status"):
        if out[col].isna().any():
            i = int(np.flatnonzero(out[col].isna().to_numpy())[0])
            raise RunFormatError(f"{where}: row {i + 1} has no {col}; every row names its model and status")
    bad = ~out["status"].isin(STATUSES)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise RunFormatError(f"{where}: row {i + 1}: status {out['status'][i]!r}; accepted: {', '.join(STATUSES)}")
    return out


def typed_samples(df: pd.DataFrame, where: Path | str) -> pd.DataFrame:
    """samples.parquet in the sample schema (runs written before --repeats have no `repeat`: process 0)."""
    missing = [c for c in ("case_id", "latency_ms") if c not in df.columns]
    if missing:
        raise RunFormatError(f"{where}: not a samples table of this suite (missing columns {', '.join(missing)})")
    out = pd.DataFrame(index=range(len(df)))
    for c in SAMPLE_COLUMNS:
        col = df[c.name].reset_index(drop=True) if c.name in df.columns else pd.Series([0 if c.name in (
            "repeat", "iter") else pd.NA] * len(df))
        out[c.name] = _typed(col, c.dtype, c.name, where)
    if out["case_id"].isna().any() or out["repeat"].isna().any():
        raise RunFormatError(f"{where}: a sample without its case_id or repeat")
    out["repeat"] = out["repeat"].astype("int64")
    out["iter"] = out["iter"].fillna(0).astype("int64")
    return out


def typed_profile(df: pd.DataFrame, where: Path | str) -> pd.DataFrame:
    """profile.parquet in the profile schema (bench.schema.PROFILE_COLUMNS): every row names its case and its
    breakdown."""
    missing = [c for c in ("case_id", "breakdown", "time_ms") if c not in df.columns]
    if missing:
        raise RunFormatError(f"{where}: not a profile table of this suite (missing columns {', '.join(missing)})")
    out = pd.DataFrame(index=range(len(df)))
    for c in PROFILE_COLUMNS:
        col = df[c.name].reset_index(drop=True) if c.name in df.columns else pd.Series([pd.NA] * len(df))
        out[c.name] = _typed(col, c.dtype, c.name, where)
    bad = ~out["breakdown"].isin(("op_kind", "module", "op"))
    if bad.any() or out["case_id"].isna().any():
        i = int(np.flatnonzero((bad | out["case_id"].isna()).to_numpy())[0])
        raise RunFormatError(f"{where}: row {i + 1}: a profile row needs a case_id and a breakdown of op_kind, "
                             "module or op")
    return out


def typed_pairs(df: pd.DataFrame, where: Path | str) -> pd.DataFrame:
    """pairs.parquet in the pair schema (bench.schema.PAIR_COLUMNS): every row names both cases and a verdict."""
    missing = [c for c in ("fast_case_id", "slow_case_id", "ratio", "verdict") if c not in df.columns]
    if missing:
        raise RunFormatError(f"{where}: not a pairs table of this suite (missing columns {', '.join(missing)})")
    out = pd.DataFrame(index=range(len(df)))
    for c in PAIR_COLUMNS:
        col = df[c.name].reset_index(drop=True) if c.name in df.columns else pd.Series([pd.NA] * len(df))
        out[c.name] = _typed(col, c.dtype, c.name, where)
    bad = ~out["verdict"].isin(PAIR_DECISIONS) | out["fast_case_id"].isna() | out["slow_case_id"].isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise RunFormatError(f"{where}: row {i + 1}: a pair row needs fast_case_id, slow_case_id and a verdict of "
                             f"{', '.join(PAIR_DECISIONS)}")
    return out


def _typed(col: pd.Series, dtype: str, name: str, where: Path | str) -> pd.Series:
    if dtype == "int64":
        return _ints(col, name, where)
    if dtype == "float64":
        return _floats(col, name, where)
    if dtype == "bool":
        return _bools(col, name, where)
    return col.astype("string")


def _ints(col: pd.Series, name: str, where) -> pd.Series:
    vals = []
    for i, v in enumerate(col.tolist()):
        if _missing(v):
            vals.append(pd.NA)
            continue
        if isinstance(v, bool) or not _integral(v):
            raise RunFormatError(f"{where}: row {i + 1}: {name} = {_show(v)}; accepted: an integer within int64")
        vals.append(int(float(v)) if not isinstance(v, (int, np.integer)) else int(v))
    return pd.array(vals, dtype="Int64")


def _integral(v: Any) -> bool:
    if isinstance(v, (int, np.integer)):
        return -INT64_MAX - 1 <= int(v) <= INT64_MAX
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return False
    return math.isfinite(f) and f == int(f) and abs(f) <= INT64_MAX


def _floats(col: pd.Series, name: str, where) -> pd.Series:
    vals = []
    for i, v in enumerate(col.tolist()):
        if _missing(v):
            vals.append(float("nan"))
            continue
        try:
            if isinstance(v, bool):
                raise TypeError
            vals.append(float(v))
        except (TypeError, ValueError, OverflowError):
            raise RunFormatError(f"{where}: row {i + 1}: {name} = {_show(v)}; accepted: a number") from None
    return pd.Series(vals, dtype="float64")


def _bools(col: pd.Series, name: str, where) -> pd.Series:
    vals = []
    for i, v in enumerate(col.tolist()):
        s = str(v).strip().lower() if not isinstance(v, (bool, np.bool_)) else ("true" if v else "false")
        if _missing(v):
            vals.append(pd.NA)
        elif s in _TRUE or s in _FALSE:
            vals.append(s in _TRUE)
        else:
            raise RunFormatError(f"{where}: row {i + 1}: {name} = {_show(v)}; accepted: true or false")
    return pd.array(vals, dtype="boolean")


def _missing(v: Any) -> bool:
    if v is None or v is pd.NA:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip() == ""


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def reconcile(results: pd.DataFrame, samples: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Samples that belong to a committed process, and the ok rows whose samples are not all there.

    A row's processes are repeats 0 .. repeats-1; a sample of a later process was written before its row (the
    commit order) and is dropped. An ok row must have exactly `n` finite samples; one that has fewer (a run
    folder written by a version that committed results first, or a samples file replaced by hand) is unfinished:
    its samples are dropped too, and its case_id returned."""
    if not len(results):
        return samples.iloc[0:0], []
    rows = results.dropna(subset=["case_id"]).drop_duplicates("case_id", keep="last").set_index("case_id")
    reps = rows["repeats"].fillna(1).astype("int64")
    known = samples["case_id"].isin(rows.index)
    keep = known & (samples["repeat"].to_numpy() < samples["case_id"].map(reps).fillna(0).to_numpy())
    kept = samples[keep]
    finite = kept[np.isfinite(kept["latency_ms"].to_numpy(dtype="float64"))]
    have = finite.groupby("case_id").size()
    ok = rows[(rows["status"] == "ok") & rows["n"].notna()]
    unfinished = [str(cid) for cid, n in ok["n"].items() if int(have.get(cid, 0)) != int(n)]
    if unfinished:
        kept = kept[~kept["case_id"].isin(unfinished)]
    return kept.reset_index(drop=True), unfinished
