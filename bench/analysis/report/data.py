"""Tidy frames for the report: merged runs (with their paired decisions, pairs.parquet), speedups of msla, A/B of
cases measured in several runs. The scaling-exponent fits are in `scaling`, the paired decisions' rows in `pairs`.

Everything here is pandas/numpy in, pandas out: no plotting and no HTML, so the numbers can be tested alone. The
published numbers of the registry are in `published`, the facts of how the runs were taken in `methodology`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.analysis.report.formatting import missing, number, text
from bench.analysis.report.pairs import speedup_override
from bench.analysis.summary import noisy_line
from bench.cases import IDENTITY, base_name, setting_label
from bench.results.store import Run, load_run, samples_by_process
from bench.stats import median_ci_level, ratio_ci

# Rows are matched on these to compute a speedup: the case identity without the model (only the mixer differs),
# with device_key for device_name. device_key is device_name, plus the host where two merged hosts report the same
# device name (two boxes with the same CPU model are measured apart, not paired).
MATCH = tuple("device_key" if c == "device_name" else c for c in IDENTITY if c != "model")
TARGET = "msla"
BASELINES = ("softmax", "large-kernel")
MOBILE_PROXY = "1 CPU thread: the mobile-class CPU proxy"
# rows written by other tools or older versions may lack fields: filled so that every comparison below is safe
_FILL = (("model", "?"), ("variant", ""), ("level", ""), ("device_name", "unknown device"), ("backend", "?"),
         ("precision", "?"), ("reason", ""), ("noisy_reason", ""))
SPEEDUP_COLUMNS = ("config", "device_name", "mobile_proxy", "base", "level", "resolution", "height", "width",
                   "megapixels", "baseline", "speedup", "ci_low", "ci_high", "ci_method", "target_ms", "baseline_ms",
                   "target_model", "baseline_model", "noisy", "n_min", "ci_level")


@dataclass
class Merged:
    """Runs merged into one comparison."""
    runs: list[Run]
    results: pd.DataFrame  # every row of every run (report columns added: config, device_key, resolution, ...)
    samples: pd.DataFrame  # every sample, with the case's model/config/resolution joined on
    ok: pd.DataFrame  # ok rows with a finite median latency, duplicates across runs resolved (latest run wins)
    notes: list[str] = field(default_factory=list)  # what is missing or was resolved, for the reader
    ab: pd.DataFrame | None = None  # cases measured in more than one run, side by side (ab_pairs, AB_COLUMNS)
    pairs: pd.DataFrame | None = None  # every run's pairs.parquet (bench.schema.PAIR_COLUMNS, run_id filled)


def load_runs(paths: list[Path]) -> list[Run]:
    return [load_run(p) for p in paths]


def _i(v: Any) -> str:
    try:
        return str(int(v))
    except (TypeError, ValueError):
        return "?"


def _base_name(model: Any) -> str:
    """`evit-b1:msla` -> `evit-b1`; `block:softmax` -> `block`; a reference model keeps its name."""
    return base_name(text(model))


def is_mobile_proxy(row: dict | pd.Series) -> bool:
    """One CPU thread: the setting the report reads as a mobile-class CPU."""
    t = row.get("threads")
    if not text(t) or int(t) != 1:
        return False
    device = text(row.get("device"))
    return device.startswith("cpu") or (not device and "cuda" not in str(row.get("device_name")).lower())


# ---------------------------------------------------------------------------------------------------------------
# merging runs


def _with_report_columns(results: pd.DataFrame) -> pd.DataFrame:
    """Blanks filled, and the report's own columns: device_key, config (the setting's label), mobile_proxy,
    pixels, megapixels, resolution, base (the model without its mixer)."""
    for col, fill in _FILL:
        results[col] = results[col].fillna(fill)
    results["noisy"] = results["noisy"].fillna(False).astype(bool)  # blank in runs older than the health guard
    no_status = results["status"].isna()
    results["status"] = results["status"].fillna("unknown")
    results.loc[no_status & (results["reason"] == ""), "reason"] = "no status recorded"
    host = results["host"].fillna("").astype(str)
    name = results["device_name"].astype(str)
    hosts_per_dev = host.groupby(results["device_name"]).transform("nunique")
    results["device_key"] = np.where(hosts_per_dev > 1, name + " @ " + host, name)
    records = results.to_dict("records")
    results["config"] = [setting_label(r, device="device_key") for r in records]
    results["mobile_proxy"] = [is_mobile_proxy(r) for r in records]
    results["pixels"] = results["height"].astype("float64") * results["width"].astype("float64")
    results["megapixels"] = results["pixels"] / 1e6
    results["resolution"] = [f"{_i(h)}x{_i(w)}" for h, w in zip(results["height"], results["width"])]
    results["base"] = [_base_name(m) for m in results["model"]]
    return results


def _all_results(runs: list[Run]) -> pd.DataFrame:
    frames = []
    for order, run in enumerate(runs):
        r = run.results.copy()
        r["run_id"] = r["run_id"].fillna(run.run_id).astype("string")
        r["_run_order"] = order
        frames.append(r)
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return _with_report_columns(results) if len(results) else results


def _ok_rows(results: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows with a latency; a case measured in several runs keeps its row of the latest run given."""
    if not len(results):
        return results, []
    lat = results["latency_ms_median"].astype("float64")
    ok = results[(results["status"] == "ok") & np.isfinite(lat) & (lat > 0)]
    dup = ok.duplicated(subset=["model", *MATCH], keep="last")
    twice = ok[dup | ok.duplicated(subset=["model", *MATCH], keep=False)]
    ab = "the runs are side by side (both medians, their CIs, the ratio) in the A/B table of the case section, " \
        if twice["run_id"].nunique() > 1 else ""
    notes = [f"{int(dup.sum())} case(s) measured in more than one run: the latest run given is used in the "
             f"headline and plots; {ab}all rows stay in the case table"] if dup.any() else []
    return ok[~dup].copy(), notes


def _all_samples(runs: list[Run], results: pd.DataFrame) -> pd.DataFrame:
    """Every raw sample of a case in the results, with its model, variant, config, resolution and status."""
    frames = []
    for run in runs:
        s = run.samples.copy()
        if len(s):
            if "run_id" not in s.columns:
                s["run_id"] = run.run_id
            s["run_id"] = s["run_id"].fillna(run.run_id).astype("string")
            frames.append(s)
    if not frames or not len(results):
        return pd.DataFrame(columns=["run_id", "case_id", "iter", "latency_ms"])
    keep = ["run_id", "case_id", "model", "variant", "config", "resolution", "megapixels", "status"]
    return pd.concat(frames, ignore_index=True).merge(results[keep], on=["run_id", "case_id"], how="inner")


def _all_pairs(runs: list[Run]) -> pd.DataFrame | None:
    """The paired decisions of every run's interleaved groups, run_id filled; None when no run has any."""
    frames = [p.assign(run_id=p["run_id"].fillna(run.run_id).astype("string")) for run in runs
              if isinstance(p := getattr(run, "pairs", None), pd.DataFrame) and len(p)]
    return pd.concat(frames, ignore_index=True) if frames else None


def merge_runs(runs: list[Run]) -> Merged:
    for run in runs:
        if not isinstance(run.meta, dict):
            run.meta = {}
    results = _all_results(runs)
    ok, notes = _ok_rows(results)
    m = Merged(runs=runs, results=results, samples=_all_samples(runs, results), ok=ok, notes=notes,
               pairs=_all_pairs(runs))
    m.ab = ab_pairs(m)
    return m


# ---------------------------------------------------------------------------------------------------------------
# the same case in several runs: A/B

CASE_KEY = ("model", *MATCH)
AB_COLUMNS = ("model", "config", "resolution", "megapixels", "run_a", "run_b", "status_a", "status_b", "reason_a",
              "reason_b", "a_ms", "a_ci_low", "a_ci_high", "b_ms", "b_ci_low", "b_ci_high", "ratio", "ci_low",
              "ci_high", "ci_method", "noisy", "a_ci_level", "b_ci_level", "ci_level", "a_n", "b_n", "n_min")


def _latency(r: dict) -> float:
    """The row's median latency when it is usable (status ok, finite, > 0), else nan."""
    try:
        v = float(r.get("latency_ms_median"))
    except (TypeError, ValueError):
        return float("nan")
    return v if r.get("status") == "ok" and math.isfinite(v) and v > 0 else float("nan")


def _ab_row(a: dict, b: dict, index: dict[tuple, list[np.ndarray]]) -> dict[str, Any]:
    """One A/B pair of the same case: B/A median latency with its CI (as for speedups: bootstrap of the raw
    samples, else the bounds from the two medians' CIs); no ratio unless both sides have a latency."""
    a_ms, b_ms = _latency(a), _latency(b)
    ratio = lo = hi = float("nan")
    how = "none"
    if math.isfinite(a_ms) and math.isfinite(b_ms):
        ratio = b_ms / a_ms
        lo, hi, how = _ratio_ci(index.get((str(a["run_id"]), str(a["case_id"]))),
                                index.get((str(b["run_id"]), str(b["case_id"]))), a, b)

    def f(r: dict, col: str) -> float:
        return float(r[col]) if math.isfinite(_latency(r)) and not missing(r.get(col)) else float("nan")

    return dict(model=a["model"], config=a["config"], resolution=a["resolution"], megapixels=a["megapixels"],
                run_a=str(a["run_id"]), run_b=str(b["run_id"]), status_a=str(a["status"]), status_b=str(b["status"]),
                reason_a=text(a.get("reason")), reason_b=text(b.get("reason")), a_ms=a_ms,
                a_ci_low=f(a, "latency_ms_ci_low"), a_ci_high=f(a, "latency_ms_ci_high"), b_ms=b_ms,
                b_ci_low=f(b, "latency_ms_ci_low"), b_ci_high=f(b, "latency_ms_ci_high"), ratio=ratio, ci_low=lo,
                ci_high=hi, ci_method=how, noisy=bool(a.get("noisy")) or bool(b.get("noisy")),
                a_ci_level=ci_level(a), b_ci_level=ci_level(b), ci_level=ratio_level(how, a, b),
                a_n=number(a.get("n")), b_n=number(b.get("n")), n_min=float(np.fmin(number(a.get("n")),
                                                                                   number(b.get("n")))))


def ab_pairs(m: Merged) -> pd.DataFrame:
    """Every case (model and MATCH columns) measured in more than one run, whatever its status: A is its row of
    the first run given, B its row of each later run (one pair per later run; a run's last row of the case)."""
    res = m.results
    if not len(res) or "_run_order" not in res.columns:
        return pd.DataFrame(columns=list(AB_COLUMNS))
    key = list(CASE_KEY)
    n_runs = res.groupby(key, dropna=False, sort=False)["run_id"].transform("nunique")
    multi = res[n_runs > 1]
    if not len(multi):
        return pd.DataFrame(columns=list(AB_COLUMNS))
    index = samples_by_process(m.samples, ["run_id", "case_id"])
    rows = []
    for _, g in multi.groupby(key, dropna=False, sort=False):
        recs = g.sort_values("_run_order", kind="stable").drop_duplicates("run_id", keep="last").to_dict("records")
        rows += [_ab_row(recs[0], b, index) for b in recs[1:]]
    df = pd.DataFrame(rows, columns=list(AB_COLUMNS))
    return df.sort_values(["config", "model", "megapixels", "run_b"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------------
# speedups


def _ratio_ci(target_groups: list[np.ndarray] | None, base_groups: list[np.ndarray] | None, t_row: dict,
              b_row: dict) -> tuple[float, float, str]:
    """CI of base/target median latency: bootstrap on raw samples when both exist (over processes and samples
    when both cases were measured in several processes, --repeats), else the conservative interval from the two
    medians' CIs (base_low/target_high, base_high/target_low)."""
    if sum(map(len, target_groups or [])) >= 2 and sum(map(len, base_groups or [])) >= 2:
        _, lo, hi, _ = ratio_ci(target_groups, base_groups, n_boot=1000, seed=0)
        if np.isfinite(lo) and np.isfinite(hi):
            return lo, hi, "bootstrap"
    try:
        lo = float(b_row.get("latency_ms_ci_low")) / float(t_row.get("latency_ms_ci_high"))
        hi = float(b_row.get("latency_ms_ci_high")) / float(t_row.get("latency_ms_ci_low"))
        if np.isfinite(lo) and np.isfinite(hi):
            return lo, hi, "bounds"
    except (TypeError, ValueError, ZeroDivisionError):
        pass
    return float("nan"), float("nan"), "none"


def ci_level(r: dict) -> float:
    """The confidence a row's CI of the median reaches: latency_ms_ci_level as recorded; for a row of one process
    written before it was recorded, bench.stats.median_ci_level(n) (95% from 6 samples, less below); else nan."""
    level = number(r.get("latency_ms_ci_level"))
    if np.isfinite(level):
        return level
    n, repeats = number(r.get("n")), number(r.get("repeats"))
    if not np.isfinite(n) or (np.isfinite(repeats) and repeats > 1):
        return float("nan")
    return median_ci_level(int(n))


def ratio_level(how: str, a: dict, b: dict) -> float:
    """The confidence of a ratio's CI from _ratio_ci (`how`): the bootstrap's 95% where both sides' CIs reach
    95% (a bootstrap of a tiny sample does not: the lower level of the two), at least the product of the two
    levels for the bounds (it covers whenever both CIs do), nan without a CI."""
    if how == "bootstrap":
        return float(np.min([0.95, ci_level(a), ci_level(b)]))
    return ci_level(a) * ci_level(b) if how == "bounds" else float("nan")


def _speedup_row(r: dict, baseline: str, index: dict[tuple, list[np.ndarray]], on_pair=None) -> dict[str, Any]:
    """One matched (msla, baseline) pair of the merge: r holds the msla columns as *_t, the baseline's as *_b;
    `on_pair(t, b)`: what the run's paired decision of the two (interleaved) cases replaces (pairs.speedup_override)."""
    t = {k[:-2]: v for k, v in r.items() if k.endswith("_t")}
    b = {k[:-2]: v for k, v in r.items() if k.endswith("_b")}
    lo, hi, how = _ratio_ci(index.get((str(t["run_id"]), str(t["case_id"]))),
                            index.get((str(b["run_id"]), str(b["case_id"]))), t, b)
    t_ms, b_ms = float(t["latency_ms_median"]), float(b["latency_ms_median"])
    out = dict(config=t["config"], device_name=t["device_name"], mobile_proxy=t["mobile_proxy"], base=r["base"],
                level=r["level"], resolution=t["resolution"], height=int(r["height"]), width=int(r["width"]),
                megapixels=t["megapixels"], baseline=baseline, speedup=b_ms / t_ms, ci_low=lo, ci_high=hi,
                ci_method=how, target_ms=t_ms, baseline_ms=b_ms, target_model=t["model"],
                baseline_model=b["model"], noisy=bool(t["noisy"]) or bool(b["noisy"]),
                n_min=min(number(t.get("n")), number(b.get("n"))),  # the fewer samples of the two sides
                ci_level=ratio_level(how, t, b))
    return {**out, **(on_pair(t, b) if on_pair else {})}


def _unfinished_baselines(results: pd.DataFrame) -> list[str]:
    """Baseline cases that were attempted but did not finish tell the most (softmax times out at 2048)."""
    if not len(results):
        return []
    failed = results[(results["status"] != "ok") & results["variant"].isin(BASELINES)]
    return [f"{r['model']} at {r['resolution']} on {r['config']}: {r['status']}"
            + (f" ({r['reason']})" if text(r.get("reason")) else "") + ": no speedup at this point"
            for r in failed.to_dict("records")]


def speedups(m: Merged) -> tuple[pd.DataFrame, list[str]]:
    """msla speedup over each baseline mixer: baseline median latency / msla median latency, per matched case.

    Matched on the base model (evit-b1, block), MATCH columns. Returns the tidy frame and notes on what is missing.
    """
    ok = m.ok
    if not len(ok):
        return pd.DataFrame(columns=list(SPEEDUP_COLUMNS)), ["no ok measurements: speedups not available"]
    index, on_pair = samples_by_process(m.samples, ["run_id", "case_id"]), speedup_override(m.pairs)
    tgt = ok[ok["variant"] == TARGET]
    notes = [] if len(tgt) else [f"no {TARGET} rows: speedups not available"]
    rows = []
    for baseline in BASELINES:
        base = ok[ok["variant"] == baseline]
        if not len(base):
            notes.append(f"no {baseline} rows: speedup over {baseline} not available")
            continue
        if not len(tgt):
            continue
        j = tgt.merge(base, on=["base", *MATCH], suffixes=("_t", "_b"))
        if not len(j):
            notes.append(f"no {TARGET} and {baseline} rows measured at the same model size, device, setting and "
                         f"resolution: speedup over {baseline} not available")
        rows += [_speedup_row(r, baseline, index, on_pair) for r in j.to_dict("records")]
    df = pd.DataFrame(rows, columns=list(SPEEDUP_COLUMNS))
    if len(df):
        df = df.sort_values(["config", "base", "baseline", "megapixels"]).reset_index(drop=True)
    return df, notes + _unfinished_baselines(m.results)


def health_warnings(m: Merged) -> list[str]:
    """One sentence per run with cases measured on a busy machine (bench.health), the run named when several are
    merged; counts from its rows, figures from its meta["health"]."""
    if not len(m.results):
        return []
    out = []
    for run in m.runs:
        rows = m.results[m.results["run_id"] == run.run_id]
        line = noisy_line(rows, (run.meta or {}).get("health"))
        if line:
            out.append(f"{run.run_id}: {line}" if len(m.runs) > 1 else line)
    return out


def status_counts(m: Merged) -> list[tuple[str, int]]:
    if not len(m.results):
        return []
    vc = m.results["status"].fillna("missing").value_counts()
    return [(str(k), int(v)) for k, v in vc.items()]
