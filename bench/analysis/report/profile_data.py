"""The numbers of the report's "Where the time goes" section (issue 13), from the runs' profile.parquet rows.

Pandas in, pandas out (no plotting, no HTML): the profile rows of every run joined to the ok case they explain,
and the per-case and per-setting summaries the section's tables and sentences are made from. Nothing here is a
constant about the hardware: every number is read off or summed from the profile rows.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.analysis.report.data import Merged
from bench.analysis.report.formatting import text
from bench.profiling.opkinds import is_depthwise, kind_order

KEY = ["run_id", "case_id"]
# what the profile rows take from their results row (the report's names of the case and its setting)
CASE_COLUMNS = ("run_id", "case_id", "model", "variant", "base", "config", "device_key", "precision", "threads",
                "resolution", "megapixels", "mobile_proxy")
TOP_N = 10
PARTS = ("mixer", "ffn", "other")
ONE_BY_ONE = "conv-1x1"
MATMUL = "matmul"


def has_profile(m: Merged) -> bool:
    """Whether any run holds profile rows: the section is shown then, and only then."""
    return any(r.profile is not None and len(r.profile) for r in m.runs)


def roof_label(row: dict) -> str:
    """The device setting a roofline belongs to: device, precision, threads (what calibration is measured per)."""
    threads = row.get("threads")
    t = f" t{int(threads)}" if text(threads) and int(threads) > 0 else ""
    return f"{text(row.get('device_key')) or '?'} {text(row.get('precision')) or '?'}{t}"


def profile_table(m: Merged) -> pd.DataFrame:
    """Every profile row of the ok cases the report uses (a case measured in several runs: the run m.ok keeps),
    with the case's names: `case` (model and resolution), `config`, `roof` (roof_label)."""
    frames = []
    for run in m.runs:
        if run.profile is not None and len(run.profile):
            p = run.profile.copy()
            p["run_id"] = p["run_id"].fillna(run.run_id).astype("string")
            p["case_id"] = p["case_id"].astype("string")
            frames.append(p)
    if not frames or not len(m.ok):
        return pd.DataFrame()
    p = pd.concat(frames, ignore_index=True)
    ok = m.ok[[c for c in CASE_COLUMNS if c in m.ok.columns]].copy()
    ok["run_id"], ok["case_id"] = ok["run_id"].astype("string"), ok["case_id"].astype("string")
    p = p.drop(columns=[c for c in ok.columns if c in p.columns and c not in KEY])
    p = p.merge(ok, on=KEY, how="inner")
    if not len(p):
        return p
    p["case"] = p["model"].astype(str) + " " + p["resolution"].astype(str)
    p["roof"] = [roof_label(r) for r in p[["device_key", "precision", "threads"]].to_dict("records")]
    p["op_kind"] = p["op_kind"].fillna("").astype(str)
    return p.sort_values(["config", "model", "megapixels", "breakdown", "rank"], kind="stable").reset_index(drop=True)


def cases(p: pd.DataFrame) -> pd.DataFrame:
    """One row per profiled case, in the section's order (setting, model, size)."""
    if not len(p):
        return pd.DataFrame(columns=[*KEY, "case", "config", "roof", "variant", "model", "megapixels"])
    cols = [*KEY, "case", "config", "roof", "variant", "model", "base", "megapixels", "resolution", "source"]
    return p[cols].drop_duplicates(KEY).reset_index(drop=True)


def kinds(p: pd.DataFrame) -> pd.DataFrame:
    """The op-kind rows (time and MAC shares, intensity, achieved rate, roofline columns)."""
    return p[p["breakdown"] == "op_kind"].reset_index(drop=True) if len(p) else p


def ordered_kinds(k: pd.DataFrame) -> list[str]:
    """The op kinds present, in the table's order (bench.profiling.opkinds.kind_order)."""
    return sorted({str(x) for x in k["op_kind"] if str(x)}, key=kind_order) if len(k) else []


def share_gaps(k: pd.DataFrame) -> pd.DataFrame:
    """Per case: the op kind (among those with MACs) whose time share exceeds its MAC share the most, and the
    depthwise kinds' summed shares. A kind with no MACs (layout, framework time) has no MAC share to exceed; a case
    where no kind's time share exceeds its MAC share has no row."""
    cols = [*KEY, "case", "config", "op_kind", "time_share", "mac_share", "gap", "dw_kinds", "dw_time_share",
            "dw_mac_share"]
    if not len(k):
        return pd.DataFrame(columns=cols)
    k = k[np.isfinite(k["time_share"]) & np.isfinite(k["mac_share"])]
    with_macs = k[k["macs"].fillna(0) > 0].assign(gap=lambda d: d["time_share"] - d["mac_share"])
    rows = []
    for _, g in with_macs.groupby(KEY, sort=False):
        top = g.loc[g["gap"].idxmax()]
        if not top["gap"] > 0:
            continue
        dw = k[(k["run_id"] == top["run_id"]) & (k["case_id"] == top["case_id"])
               & k["op_kind"].map(is_depthwise)]
        rows.append({**{c: top[c] for c in cols[:7]}, "dw_kinds": len(dw),
                     "dw_time_share": float(dw["time_share"].sum()), "dw_mac_share": float(dw["mac_share"].sum())})
    return pd.DataFrame(rows, columns=cols)


def kind_rates(k: pd.DataFrame) -> pd.DataFrame:
    """Achieved GMAC/s per op kind per device setting (roof), pooled over the setting's profiled cases:
    summed MACs / summed time. With one case this is that case's gmacs_per_s."""
    cols = ["roof", "op_kind", "macs", "time_ms", "cases", "gmacs_per_s"]
    if not len(k):
        return pd.DataFrame(columns=cols)
    d = k[(k["macs"].fillna(0) > 0) & (k["time_ms"].fillna(0) > 0)]
    g = d.groupby(["roof", "op_kind"], sort=True).agg(macs=("macs", "sum"), time_ms=("time_ms", "sum"),
                                                       cases=("case_id", "nunique")).reset_index()
    g["gmacs_per_s"] = g["macs"] / (g["time_ms"] / 1e3) / 1e9
    return g[cols]


def depthwise_rates(rates: pd.DataFrame) -> pd.DataFrame:
    """Per device setting with depthwise convs and a 1x1 conv or matmul to set them against: the pooled depthwise
    rate, the slowest depthwise kind and its rate, the 1x1-conv and matmul rates (NaN where absent)."""
    cols = ["roof", "dw_gmacs_per_s", "dw_kinds", "slowest", "slowest_gmacs_per_s", "conv1x1_gmacs_per_s",
            "matmul_gmacs_per_s", "cases"]
    rows = []
    for roof, g in rates.groupby("roof", sort=True):
        dw = g[g["op_kind"].map(is_depthwise)]
        ref = {kind: g.loc[g["op_kind"] == kind, "gmacs_per_s"] for kind in (ONE_BY_ONE, MATMUL)}
        if not len(dw) or not any(len(v) for v in ref.values()):
            continue
        slow = dw.loc[dw["gmacs_per_s"].idxmin()]
        rows.append(dict(roof=roof, dw_gmacs_per_s=float(dw["macs"].sum() / (dw["time_ms"].sum() / 1e3) / 1e9),
                         dw_kinds=len(dw), slowest=slow["op_kind"], slowest_gmacs_per_s=float(slow["gmacs_per_s"]),
                         conv1x1_gmacs_per_s=float(ref[ONE_BY_ONE].iloc[0]) if len(ref[ONE_BY_ONE]) else np.nan,
                         matmul_gmacs_per_s=float(ref[MATMUL].iloc[0]) if len(ref[MATMUL]) else np.nan,
                         cases=int(g["cases"].max())))
    return pd.DataFrame(rows, columns=cols)


def top_ops(p: pd.DataFrame, n: int = TOP_N) -> pd.DataFrame:
    """The `n` ops with the most time per case (the op rows, by their rank)."""
    ops = p[p["breakdown"] == "op"] if len(p) else p
    if not len(ops):
        return ops
    ops = ops.sort_values([*KEY, "rank", "time_ms"], ascending=[True, True, True, False], kind="stable")
    return ops.groupby(KEY, sort=False).head(n).reset_index(drop=True)


def module_split(p: pd.DataFrame) -> pd.DataFrame:
    """Time share per case, stage and part (mixer, ffn, other), from the module rows."""
    cols = [*KEY, "stage", "part", "time_share", "time_ms"]
    mods = p[p["breakdown"] == "module"] if len(p) else p
    if not len(mods):
        return pd.DataFrame(columns=cols)
    mods = mods.assign(stage=mods["stage"].fillna("").astype(str),
                       part=mods["part"].fillna("other").astype(str).where(lambda s: s.isin(PARTS), "other"))
    return mods.groupby([*KEY, "stage", "part"], sort=False)[["time_share", "time_ms"]].sum().reset_index()[cols]


def overhead(m: Merged, p: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(profiled cases with their profiler, median, profiled time and overhead; cases without a profile and why).

    A case is 'without a profile' when its row gives a profile_reason, or when it is ok in a run that profiled
    other cases but has no rows of its own (then the reason says so)."""
    res = m.results
    if not len(res):
        return res, res
    have = _keys(p)
    profiled_mask = _in(res, have)
    if len(m.ok):  # one row per case: the run m.ok keeps
        profiled_mask &= _in(res, _keys(m.ok))
    reason = res["profile_reason"].fillna("").astype(str) if "profile_reason" in res else pd.Series("", res.index)
    runs_with = {r.run_id for r in m.runs if r.profile is not None and len(r.profile)}
    silent = (res["status"] == "ok") & res["run_id"].astype(str).isin(runs_with) & (reason == "")
    without = res[((reason != "") | silent) & ~_in(res, have)].copy()
    why = reason[without.index]
    without["why"] = why.where(why != "", "no profile rows recorded")
    return res[profiled_mask].reset_index(drop=True), without.reset_index(drop=True)


def _keys(df: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(df["run_id"].astype(str), df["case_id"].astype(str))) if len(df) else set()


def _in(df: pd.DataFrame, keys: set[tuple[str, str]]) -> pd.Series:
    """Whether each row's (run_id, case_id) is in `keys`, as a boolean Series on df's index."""
    return pd.Series([k in keys for k in zip(df["run_id"].astype(str), df["case_id"].astype(str))], index=df.index,
                     dtype=bool)
