"""Tidy frames for the report: merged runs, speedups of msla, scaling-exponent fits, reference models.

Everything here is pandas/numpy in, pandas out: no plotting and no HTML, so the numbers can be tested alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.results.store import Run, load_run

# Rows are matched on these to compute a speedup (same device, setting and size; only the mixer differs).
# device_key is device_name, plus the host where two merged hosts report the same device name (two boxes with the
# same CPU model are measured apart, not paired).
MATCH = ("level", "height", "width", "device_key", "backend", "precision", "batch", "threads", "channels_last",
         "folded")
# A "config": everything that identifies a measurement setting apart from the model and the resolution.
CONFIG = ("device_name", "backend", "precision", "batch", "threads", "channels_last", "folded")
TARGET = "msla"
BASELINES = ("softmax", "large-kernel")
MOBILE_PROXY = "1 CPU thread: the mobile-class CPU proxy"


@dataclass
class Merged:
    """Runs merged into one comparison."""
    runs: list[Run]
    results: pd.DataFrame  # every row of every run (a `run_label` and `config` column added)
    samples: pd.DataFrame  # every sample, with the case's model/config/resolution joined on
    ok: pd.DataFrame  # ok rows with a finite median latency, duplicates across runs resolved (latest run wins)
    notes: list[str] = field(default_factory=list)  # what is missing or was resolved, for the reader


def load_runs(paths: list[Path]) -> list[Run]:
    return [load_run(p) for p in paths]


def _is_cpu(device: Any, device_name: Any) -> bool:
    d = "" if device is None or device is pd.NA else str(device)
    return d.startswith("cpu") or (not d and "cuda" not in str(device_name).lower())


def config_label(row: dict | pd.Series) -> str:
    """A short human label of a measurement setting (device, backend, precision, batch, threads, layout)."""
    def g(k, default=""):
        v = row.get(k, default)
        return default if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v
    parts = [str(g("device_key", "") or g("device_name", "?") or "?"), str(g("backend", "?")), str(g("precision", "?")),
             f"b{int(g('batch', 0) or 0)}"]
    threads = int(g("threads", 0) or 0)
    if threads:
        parts.append(f"{threads} thread" + ("s" if threads > 1 else ""))
    if bool(g("channels_last", False)):
        parts.append("channels_last")
    if bool(g("folded", False)):
        parts.append("folded")
    return " · ".join(parts)


def is_mobile_proxy(row: dict | pd.Series) -> bool:
    t = row.get("threads")
    return t is not None and t is not pd.NA and int(t) == 1 and _is_cpu(row.get("device"), row.get("device_name"))


def merge_runs(runs: list[Run]) -> Merged:
    notes: list[str] = []
    frames, sframes = [], []
    for order, run in enumerate(runs):
        if not isinstance(run.meta, dict):
            run.meta = {}
        r = run.results.copy()
        r["run_id"] = r["run_id"].fillna(run.run_id).astype("string")
        r["_run_order"] = order
        frames.append(r)
        s = run.samples.copy()
        if len(s):
            if "run_id" not in s.columns:
                s["run_id"] = run.run_id
            s["run_id"] = s["run_id"].fillna(run.run_id).astype("string")
            sframes.append(s)
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(results):
        # rows written by other tools or older versions may lack fields: make every comparison below safe
        for col, fill in (("model", "?"), ("variant", ""), ("level", ""), ("device_name", "unknown device"),
                          ("backend", "?"), ("precision", "?"), ("reason", "")):
            results[col] = results[col].fillna(fill)
        no_status = results["status"].isna()
        results["status"] = results["status"].fillna("unknown")
        results.loc[no_status & (results["reason"] == ""), "reason"] = "no status recorded"
        host = results["host"].fillna("").astype(str)
        hosts_per_dev = host.groupby(results["device_name"]).transform("nunique")
        results["device_key"] = np.where(hosts_per_dev > 1, results["device_name"].astype(str) + " @ " + host,
                                         results["device_name"].astype(str))
        results["config"] = [config_label(r) for r in results.to_dict("records")]
        results["mobile_proxy"] = [is_mobile_proxy(r) for r in results.to_dict("records")]
        results["pixels"] = (results["height"].astype("float64") * results["width"].astype("float64"))
        results["megapixels"] = results["pixels"] / 1e6
        results["resolution"] = [f"{_i(h)}x{_i(w)}" for h, w in zip(results["height"], results["width"])]
        results["base"] = [_base_name(m) for m in results["model"]]
    if len(results):
        lat = results["latency_ms_median"].astype("float64")
        ok = results[(results["status"] == "ok") & np.isfinite(lat) & (lat > 0)].copy()
    else:
        ok = results
    if len(ok):
        ident = ["model", *MATCH]
        dup = ok.duplicated(subset=ident, keep="last")
        if dup.any():
            notes.append(f"{int(dup.sum())} case(s) measured in more than one run: the latest run given is used "
                         f"in the headline and plots (all rows stay in the case table)")
        ok = ok[~dup].copy()
    samples = pd.concat(sframes, ignore_index=True) if sframes else pd.DataFrame(
        columns=["run_id", "case_id", "iter", "latency_ms"])
    if not len(results):
        samples = samples.iloc[0:0]
    elif len(samples):
        keep = ["run_id", "case_id", "model", "variant", "config", "resolution", "megapixels", "status"]
        samples = samples.merge(results[keep], on=["run_id", "case_id"], how="inner")
    return Merged(runs=runs, results=results, samples=samples, ok=ok, notes=notes)


def _i(v) -> str:
    try:
        return str(int(v))
    except (TypeError, ValueError):
        return "?"


def _base_name(model: Any) -> str:
    """`evit-b1:msla` -> `evit-b1`; `block:softmax` -> `block`; a reference model keeps its name."""
    m = "" if model is None or model is pd.NA else str(model)
    return m.rsplit(":", 1)[0] if ":" in m else m


# ---------------------------------------------------------------------------------------------------------------
# speedups

def _ratio_ci(target_groups: list[np.ndarray] | None, base_groups: list[np.ndarray] | None, t_row, b_row):
    """CI of base/target median latency: bootstrap on raw samples when both exist (over processes and samples
    when both cases were measured in several processes, --repeats), else the conservative interval from the two
    medians' CIs (base_low/target_high, base_high/target_low)."""
    target_samples = np.concatenate(target_groups) if target_groups else None
    base_samples = np.concatenate(base_groups) if base_groups else None
    if target_samples is not None and base_samples is not None and len(target_samples) >= 2 \
            and len(base_samples) >= 2:
        try:
            from bench.stats import ratio_ci
            _, lo, hi, _ = ratio_ci(target_groups, base_groups, n_boot=1000, seed=0)
            if np.isfinite(lo) and np.isfinite(hi):
                return lo, hi, "bootstrap"
        except Exception:  # stats module missing or changed: fall back to the interval bound below
            pass
    tl, th = t_row.get("latency_ms_ci_low"), t_row.get("latency_ms_ci_high")
    bl, bh = b_row.get("latency_ms_ci_low"), b_row.get("latency_ms_ci_high")
    try:
        lo, hi = float(bl) / float(th), float(bh) / float(tl)
        if np.isfinite(lo) and np.isfinite(hi):
            return lo, hi, "bounds"
    except (TypeError, ValueError, ZeroDivisionError):
        pass
    return float("nan"), float("nan"), "none"


def speedups(m: Merged) -> tuple[pd.DataFrame, list[str]]:
    """msla speedup over each baseline mixer: baseline median latency / msla median latency, per matched case.

    Matched on the base model (evit-b1, block), MATCH columns. Returns the tidy frame and notes on what is missing.
    """
    notes: list[str] = []
    cols = ["config", "device_name", "mobile_proxy", "base", "level", "resolution", "height", "width",
            "megapixels", "baseline", "speedup", "ci_low", "ci_high", "ci_method", "target_ms", "baseline_ms",
            "target_model", "baseline_model"]
    ok = m.ok
    if not len(ok):
        return pd.DataFrame(columns=cols), ["no ok measurements: speedups not available"]
    sample_index = _sample_index(m.samples)
    rows = []
    tgt = ok[ok["variant"] == TARGET]
    if not len(tgt):
        notes.append(f"no {TARGET} rows: speedups not available")
    for baseline in BASELINES:
        base = ok[ok["variant"] == baseline]
        if not len(base):
            notes.append(f"no {baseline} rows: speedup over {baseline} not available")
            continue
        if not len(tgt):
            continue
        key = ["base", *MATCH]
        j = tgt.merge(base, on=key, suffixes=("_t", "_b"))
        if not len(j):
            notes.append(f"no {TARGET} and {baseline} rows measured at the same model size, device, setting and "
                         f"resolution: speedup over {baseline} not available")
            continue
        for r in j.to_dict("records"):
            t_row = {k[:-2]: v for k, v in r.items() if k.endswith("_t")}
            b_row = {k[:-2]: v for k, v in r.items() if k.endswith("_b")}
            ts = sample_index.get((str(t_row["run_id"]), str(t_row["case_id"])))
            bs = sample_index.get((str(b_row["run_id"]), str(b_row["case_id"])))
            sp = float(b_row["latency_ms_median"]) / float(t_row["latency_ms_median"])
            lo, hi, how = _ratio_ci(ts, bs, t_row, b_row)
            rows.append(dict(config=t_row["config"], device_name=t_row["device_name"],
                             mobile_proxy=t_row["mobile_proxy"],
                             base=r["base"], level=r["level"], resolution=t_row["resolution"],
                             height=int(r["height"]), width=int(r["width"]), megapixels=t_row["megapixels"],
                             baseline=baseline, speedup=sp, ci_low=lo, ci_high=hi, ci_method=how,
                             target_ms=float(t_row["latency_ms_median"]),
                             baseline_ms=float(b_row["latency_ms_median"]),
                             target_model=t_row["model"], baseline_model=b_row["model"]))
    df = pd.DataFrame(rows, columns=cols)
    # Baseline cases that were attempted but did not finish tell the most (softmax times out at 2048).
    failed = m.results[(m.results["status"] != "ok") & m.results["variant"].isin(BASELINES)] \
        if len(m.results) else m.results
    for r in failed.to_dict("records") if len(failed) else []:
        notes.append(f"{r['model']} at {r['resolution']} on {r['config']}: {r['status']}"
                     + (f" ({r['reason']})" if _s(r.get("reason")) else "") + ": no speedup at this point")
    if len(df):
        df = df.sort_values(["config", "base", "baseline", "megapixels"]).reset_index(drop=True)
    return df, notes


def _s(v) -> str:
    return "" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(v)


def _sample_index(samples: pd.DataFrame) -> dict[tuple[str, str], list[np.ndarray]]:
    """(run_id, case_id) -> the case's samples, one array per process (--repeats; one array without)."""
    from bench.results.store import samples_by_process

    return samples_by_process(samples, ["run_id", "case_id"])


# ---------------------------------------------------------------------------------------------------------------
# scaling exponent

def fit_exponent(pixels, latency_ms, conf: float = 0.95) -> dict:
    """Least-squares fit of log(latency) = a + k log(pixels): exponent k, its standard error and CI.

    With 2 distinct sizes the fit is exact (no SE); with fewer, no fit.
    """
    x = np.log(np.asarray(pixels, dtype="float64"))
    y = np.log(np.asarray(latency_ms, dtype="float64"))
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    out = dict(n_points=n, n_sizes=int(np.unique(x).size), exponent=float("nan"), se=float("nan"),
               ci_low=float("nan"), ci_high=float("nan"), r2=float("nan"))
    if out["n_sizes"] < 2:
        return out
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    k = float(((x - xm) * (y - ym)).sum() / sxx)
    a = ym - k * xm
    resid = y - (a + k * x)
    sst = float(((y - ym) ** 2).sum())
    out["exponent"] = k
    out["r2"] = 1.0 - float((resid ** 2).sum()) / sst if sst > 0 else 1.0
    if n > 2:
        from scipy import stats as st
        s2 = float((resid ** 2).sum()) / (n - 2)
        se = math.sqrt(s2 / sxx)
        t = float(st.t.ppf(0.5 + conf / 2, n - 2))
        out.update(se=se, ci_low=k - t * se, ci_high=k + t * se)
    return out


def exponent_word(k: float) -> str:
    if not np.isfinite(k):
        return ""
    if k < 0.8:
        return "sub-linear (fixed costs dominate)"
    if k < 1.3:
        return "near linear"
    if k < 1.7:
        return "between linear and quadratic"
    return "near quadratic"


def scaling_exponents(m: Merged) -> tuple[pd.DataFrame, list[str]]:
    cols = ["config", "device_name", "mobile_proxy", "model", "variant", "level", "n_points", "n_sizes",
            "resolutions", "exponent", "se", "ci_low", "ci_high", "r2", "reading"]
    notes: list[str] = []
    ok = m.ok
    if not len(ok):
        return pd.DataFrame(columns=cols), ["no ok measurements: scaling exponents not available"]
    rows = []
    single: dict[str, list[str]] = {}
    for (config, model), g in ok.groupby(["config", "model"], sort=True):
        f = fit_exponent(g["pixels"], g["latency_ms_median"])
        res = ", ".join(r for r in g.sort_values("pixels")["resolution"].drop_duplicates())
        if f["n_sizes"] < 2:
            single.setdefault(f"{config} ({res})", []).append(str(model))
            continue
        first = g.iloc[0]
        rows.append(dict(config=config, device_name=first["device_name"], mobile_proxy=bool(first["mobile_proxy"]),
                         model=model, variant=first["variant"], level=first["level"], resolutions=res,
                         reading=exponent_word(f["exponent"]), **f))
    for where, models in single.items():
        names = ", ".join(models[:6]) + (f" and {len(models) - 6} more" if len(models) > 6 else "")
        notes.append(f"one resolution only on {where}: no scaling exponent for {names}")
    df = pd.DataFrame(rows, columns=cols)
    return df, notes


# ---------------------------------------------------------------------------------------------------------------
# reference models (published numbers from the registry beside our measured rows)

def reference_models(m: Merged) -> tuple[list[dict], list[str]]:
    """One entry per registry model that has published numbers: published values and our measured ones."""
    try:
        from models.registry import get_model_info, list_models
        names = list_models()
    except Exception as e:  # the registry is optional for the report: a results folder alone must render
        return [], [f"model registry not available ({type(e).__name__}): published numbers not shown"]
    out: list[dict] = []
    results = m.results
    for name in names:
        try:
            info = get_model_info(name)
        except Exception:
            continue
        pub = getattr(info, "published", None)
        if pub is None:
            continue
        h, w = (info.input_size if getattr(info, "input_size", None) else (None, None))
        mine = results[results["model"] == name] if len(results) else results
        measured_params = _first_num(mine, "params")
        if len(mine) and h:
            at_size = mine[(mine["height"] == h) & (mine["width"] == w)]
        else:
            at_size = mine.iloc[0:0] if len(mine) else mine
        measured_macs = _first_num(at_size[at_size["batch"] == 1] if len(at_size) else at_size, "macs")
        lat = []
        for r in (at_size.to_dict("records") if len(at_size) else []):
            lat.append(dict(config=r["config"], status=r["status"], reason=_s(r.get("reason")),
                            latency_ms=r["latency_ms_median"] if r["status"] == "ok" else None,
                            batch=r["batch"]))
        out.append(dict(
            name=name, family=getattr(info, "family", ""), dataset=getattr(info, "dataset", None) or "",
            input_size=f"{h}x{w}" if h else "", pub_params_m=pub.params_m, pub_macs_g=pub.macs_g,
            pub_latency=dict(pub.latency_ms or {}), pub_miou=pub.miou, pub_source=pub.source,
            params_m=measured_params / 1e6 if measured_params is not None else None,
            macs_g=measured_macs / 1e9 if measured_macs is not None else None,
            measured=lat, in_results=bool(len(mine))))
    if not out:
        return [], ["the model registry has no published numbers"]
    return out, []


def _first_num(df: pd.DataFrame, col: str) -> float | None:
    if not len(df) or col not in df.columns:
        return None
    v = pd.to_numeric(df[col], errors="coerce").dropna()
    return float(v.iloc[0]) if len(v) else None


# ---------------------------------------------------------------------------------------------------------------
# methodology

def _flatten(d: Any, prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if isinstance(d, dict):
        for k in sorted(d, key=str):
            out += _flatten(d[k], f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        for i, x in enumerate(d):
            out += _flatten(x, f"{prefix}[{i}]")
    else:
        v = ", ".join(map(str, d)) if isinstance(d, list) else str(d)
        out.append((prefix, v if len(v) <= 400 else v[:400] + "…"))
    return out


CLOCK_WORDS = ("clock", "power", "governor", "freq", "turbo", "boost", "persistence", "pstate", "thermal")
# meta.json entries worth a line of their own (the rest is in the collapsed full listing)
FACT_WORDS = ("command", "git.", "env.torch", "env.python", "cpu_model", "gpus", "gpu.", "cuda", "driver",
              "calibration", "load_avg", "isolation", "min_time", "max_time", "timeout", "status", "wall_s",
              "ram_total")
MAX_META = 400


def methodology(m: Merged) -> dict:
    """Facts about how the numbers were taken, from the results table and each run's meta.json."""
    res = m.results
    ok = m.ok

    def rng(col):
        if not len(ok) or col not in ok.columns:
            return "not recorded"
        v = pd.to_numeric(ok[col], errors="coerce").dropna()
        if not len(v):
            return "not recorded"
        lo, hi = v.min(), v.max()
        return f"{lo:g}" if lo == hi else f"{lo:g} to {hi:g} (median {v.median():g})"

    conv = ok["converged"].dropna() if len(ok) else pd.Series([], dtype="boolean")
    threads = sorted({int(t) for t in res["threads"].dropna()}) if len(res) else []
    runs = []
    for run in m.runs:
        flat = _flatten({k: v for k, v in run.meta.items() if k != "cases"})  # cases: the table has them
        clocks = [(k, v) for k, v in flat if any(w in k.lower() for w in CLOCK_WORDS)]
        facts = [(k, v) for k, v in flat if any(w in k.lower() for w in FACT_WORDS)
                 and not any(w in k.lower() for w in CLOCK_WORDS + ("torch_parallel",))
                 and (not k.startswith("calibration") or k.endswith(("gmacs_per_s", "kernel")))][:40]
        if len(flat) > MAX_META:
            flat = flat[:MAX_META] + [("…", f"{len(flat) - MAX_META} more entries in meta.json")]
        r = run.results
        runs.append(dict(
            run_id=run.run_id, path=str(run.path),
            hosts=sorted({str(h) for h in r["host"].dropna()}) if len(r) else [],
            devices=sorted({str(h) for h in r["device_name"].dropna()}) if len(r) else [],
            n_cases=len(r), n_ok=int((r["status"] == "ok").sum()) if len(r) else 0,
            n_samples=len(run.samples), meta=flat, clocks=clocks, facts=facts,
            started=_s(run.meta.get("started_at") or (r["started_at"].dropna().min() if len(r) else "")),
        ))
    return dict(
        warmup=rng("warmup_iters"), samples=rng("n"), repeats=rng("repeats"), repeat_cv=rng("latency_ms_repeat_cv"),
        converged=(f"{int(conv.sum())} of {len(conv)} ok cases reached the CI target" if len(conv) else
                   "not recorded"),
        threads=", ".join(map(str, threads)) if threads else "not recorded",
        runs=runs,
        multi_host=len({h for r in runs for h in r["hosts"]}) > 1,
    )


def status_counts(m: Merged) -> list[tuple[str, int]]:
    if not len(m.results):
        return []
    vc = m.results["status"].fillna("missing").value_counts()
    return [(str(k), int(v)) for k, v in vc.items()]
