"""How the numbers were taken: timing facts from the results table and each run's meta.json, for the report's
methodology section (a reader judges a latency by how it was measured)."""
from __future__ import annotations

from typing import Any

import pandas as pd

from bench.analysis.meta import flatten_meta
from bench.analysis.report.data import Merged, text
from bench.results.store import Run

CLOCK_WORDS = ("clock", "power", "governor", "freq", "turbo", "boost", "persistence", "pstate", "thermal")
# meta.json entries worth a line of their own (the rest is in the collapsed full listing)
FACT_WORDS = ("command", "git.", "env.torch", "env.python", "cpu_model", "gpus", "gpu.", "cuda", "driver",
              "calibration", "load_avg", "isolation", "min_time", "max_time", "timeout", "status", "wall_s",
              "ram_total", "health.summary.noisy", "health.summary.others_cores_max", "health.summary.drift")
MAX_META = 400
MAX_VALUE = 400


def _entries(meta: dict) -> list[tuple[str, str]]:
    """meta.json as sorted (key, text) lines; the cases and their per-process health figures are left out (the
    case table has them, with noisy_reason)."""
    health = {k: v for k, v in (meta.get("health") or {}).items() if k != "cases"}
    flat = flatten_meta({k: v for k, v in meta.items() if k != "cases"} | ({"health": health} if health else {}))
    out = []
    for k in sorted(flat):
        v = flat[k]
        text = ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
        out.append((k, text if len(text) <= MAX_VALUE else text[:MAX_VALUE] + "…"))
    return out


def _is_fact(key: str) -> bool:
    k = key.lower()
    return (any(w in k for w in FACT_WORDS) and not any(w in k for w in CLOCK_WORDS + ("torch_parallel",))
            and (not k.startswith("calibration") or k.endswith(("gmacs_per_s", "kernel"))))


def _run_facts(run: Run) -> dict[str, Any]:
    flat = _entries(run.meta)
    clocks = [(k, v) for k, v in flat if any(w in k.lower() for w in CLOCK_WORDS)]
    facts = [(k, v) for k, v in flat if _is_fact(k)][:40]
    if len(flat) > MAX_META:
        flat = flat[:MAX_META] + [("…", f"{len(flat) - MAX_META} more entries in meta.json")]
    r = run.results
    return dict(
        run_id=run.run_id, path=str(run.path),
        hosts=sorted({str(h) for h in r["host"].dropna()}) if len(r) else [],
        devices=sorted({str(h) for h in r["device_name"].dropna()}) if len(r) else [],
        n_cases=len(r), n_ok=int((r["status"] == "ok").sum()) if len(r) else 0,
        n_samples=len(run.samples), meta=flat, clocks=clocks, facts=facts,
        started=text(run.meta.get("started_at") or (r["started_at"].dropna().min() if len(r) else "")))


def _range(ok: pd.DataFrame, col: str) -> str:
    if not len(ok) or col not in ok.columns:
        return "not recorded"
    v = pd.to_numeric(ok[col], errors="coerce").dropna()
    if not len(v):
        return "not recorded"
    lo, hi = v.min(), v.max()
    return f"{lo:g}" if lo == hi else f"{lo:g} to {hi:g} (median {v.median():g})"


def methodology(m: Merged) -> dict[str, Any]:
    """Facts about how the numbers were taken, from the results table and each run's meta.json."""
    res, ok = m.results, m.ok
    conv = ok["converged"].dropna() if len(ok) else pd.Series([], dtype="boolean")
    threads = sorted({int(t) for t in res["threads"].dropna()}) if len(res) else []
    runs = [_run_facts(run) for run in m.runs]
    return dict(
        warmup=_range(ok, "warmup_iters"), samples=_range(ok, "n"), repeats=_range(ok, "repeats"),
        repeat_cv=_range(ok, "latency_ms_repeat_cv"),
        converged=(f"{int(conv.sum())} of {len(conv)} ok cases reached the CI target" if len(conv) else
                   "not recorded"),
        threads=", ".join(map(str, threads)) if threads else "not recorded",
        runs=runs,
        multi_host=len({h for r in runs for h in r["hosts"]}) > 1,
    )
