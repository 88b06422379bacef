"""How the numbers were taken: timing facts from the results table and each run's meta.json, for the report's
methodology section (a reader judges a latency by how it was measured)."""
from __future__ import annotations

import json
import math
import shlex
from typing import Any

import pandas as pd

from bench import bounded_read
from bench.analysis.meta import flatten_meta
from bench.analysis.report.data import Merged
from bench.analysis.report.formatting import text
from bench.analysis.report.readings import RULES
from bench.results.store import Run

CLOCK_WORDS = ("clock", "power", "governor", "freq", "turbo", "boost", "persistence", "pstate", "thermal")
# meta.json entries worth a line of their own (the rest is in the collapsed full listing)
FACT_WORDS = ("command", "git.", "env.torch", "env.python", "cpu_model", "gpus", "gpu.", "cuda", "driver",
              "calibration", "load_avg", "isolation", "min_time", "max_time", "timeout", "status", "wall_s",
              "ram_total", "health.summary.noisy", "health.summary.others_cores_max", "health.summary.drift")
MAX_META = 400
MAX_VALUE = 400


# the unit of a meta.json number, from the last "_" word of its key: (words, scale, unit); the first match wins.
# Memory is shown in GiB (record.py and gpu.py write GiB as _gb and MiB as _mb), clocks in MHz.
UNITS = ((("bytes",), 1 / 2**30, "GiB"), (("gb",), 1.0, "GiB"), (("mb",), 1 / 1024, "GiB"),
         (("kb",), 1 / 2**20, "GiB"), (("ghz",), 1000.0, "MHz"), (("mhz",), 1.0, "MHz"), (("khz",), 1e-3, "MHz"),
         (("w",), 1.0, "W"), (("c", "celsius"), 1.0, "°C"), (("ms",), 1.0, "ms"), (("s", "seconds", "sec"), 1.0, "s"),
         (("pct", "percent"), 1.0, "%"), (("cores",), 1.0, "cores"))
# keys read as fractions (shown as %) or as cores, whatever their last word (bench.health)
FRACTION_WORDS = ("drift", "steal_frac", "frac_of_peak")
RATE_UNITS = (("gmacs_per_s", "GMAC/s"), ("gb_per_s", "GB/s"), ("tflops", "TFLOP/s"))


def _number(x: float) -> str:
    """4 significant digits, no exponent for everyday sizes, no padding zeros."""
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}" if abs(x) >= 1e5 else str(int(x))
    return f"{x:,.4g}" if 1e-4 <= abs(x) < 1e15 else f"{x:.3e}"


STAT_WORDS = ("median", "mean", "min", "max", "std", "p50", "p90", "p95", "p99")


def _unit(key: str) -> tuple[float, str]:
    """(scale, unit) of a number under `key` ('' when it is a count or a version); a statistic of a quantity
    (per_case_overhead_s.median) takes the quantity's unit."""
    parts = key.lower().split(".")
    if len(parts) > 1 and parts[-1] in STAT_WORDS:
        return _unit(".".join(parts[:-1]))
    last = parts[-1]
    for word, unit in RATE_UNITS:
        if last.endswith(word):
            return 1.0, unit
    if any(last.startswith(w) or last.endswith(w) for w in FRACTION_WORDS):
        return 100.0, "%"
    if "others_cores" in last:
        return 1.0, "cores"
    tail = last.rsplit("_", 1)[-1] if "_" in last else ""
    for words, scale, unit in UNITS:
        if tail in words or (unit == "cores" and last == "cores"):
            return scale, unit
    return 1.0, ""


def format_value(key: str, v: Any) -> str:
    """A meta.json value as a reader wants it: booleans yes/no, numbers with their unit (memory in GiB, clocks in
    MHz, fractions in %), lists joined (a command as a shell line), a mapping as "key: value" pairs, a blank as
    "not recorded"; never a raw dict or JSON dump."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "not recorded"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        scale, unit = _unit(key)
        return (_number(v * scale) + (" " + unit if unit and unit != "%" else unit)) if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return "; ".join(f"{k}: {format_value(f'{key}.{k}', x)}" for k, x in v.items()) or "none"
    if isinstance(v, (list, tuple)):
        return _format_list(key, list(v))
    return _format_text(key, str(v))


def _format_list(key: str, v: list) -> str:
    if not v:
        return "none"
    last = key.lower().rsplit(".", 1)[-1]
    if last in ("command", "argv", "cmdline", "args") and all(isinstance(x, str) for x in v):
        return shlex.join(v)
    if last == "load_avg" and len(v) == 3:
        return ", ".join(f"{x:.2f}" if isinstance(x, (int, float)) else str(x) for x in v) + " (1, 5, 15 min)"
    sep = "; " if any(isinstance(x, str) and ("," in x or x != x.strip()) for x in v) else ", "
    return sep.join(" ".join(x.split()) if isinstance(x, str) else format_value(key, x) for x in v)


def _format_text(key: str, t: str) -> str:
    """A string that is itself a JSON object or list (written by another tool) is formatted, not dumped."""
    if t[:1] in "{[" and t[-1:] in "}]":
        try:
            parsed = bounded_read.parse_nested(json.loads, t, key, "meta text", ValueError)
        except ValueError:  # not JSON, or nested past MAX_DEPTH (formatting recurses): shown as the text it is
            return t
        if isinstance(parsed, (dict, list)):
            return format_value(key, parsed)
    return t


def _entries(meta: dict) -> list[tuple[str, str]]:
    """meta.json as sorted (key, formatted text) lines; the cases and their per-process health figures are left
    out (the case table has them, with noisy_reason)."""
    health = {k: v for k, v in (meta.get("health") or {}).items() if k != "cases"}
    flat = flatten_meta({k: v for k, v in meta.items() if k != "cases"} | ({"health": health} if health else {}))
    out = []
    for k in sorted(flat):
        text = format_value(k, flat[k])
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


def _range(ok: pd.DataFrame, col: str, unit: str = "") -> str:
    """'10 iterations', '2 to 4 processes (median 3)', '0.5 to 2.1% (median 1.1%)': with its unit."""
    if not len(ok) or col not in ok.columns:
        return "not recorded"
    v = pd.to_numeric(ok[col], errors="coerce").dropna()
    if not len(v):
        return "not recorded"
    lo, hi = v.min(), v.max()
    u = unit if unit in ("", "%") else " " + unit
    return f"{lo:g}{u}" if lo == hi else f"{lo:g} to {hi:g}{u} (median {v.median():g}{u})"


def methodology(m: Merged) -> dict[str, Any]:
    """Facts about how the numbers were taken, from the results table and each run's meta.json."""
    res, ok = m.results, m.ok
    conv = ok["converged"].dropna() if len(ok) else pd.Series([], dtype="boolean")
    threads = sorted({int(t) for t in res["threads"].dropna()}) if len(res) else []
    runs = [_run_facts(run) for run in m.runs]
    return dict(
        warmup=_range(ok, "warmup_iters", "iterations"), samples=_range(ok, "n", "samples"),
        repeats=_range(ok, "repeats", "processes"), repeat_cv=_range(ok, "latency_ms_repeat_cv", "%"),
        converged=(f"{int(conv.sum())} of {len(conv)} ok cases reached the CI target" if len(conv) else
                   "not recorded"),
        threads=(", ".join(map(str, threads)) + (" thread" if threads == [1] else " threads")) if threads else
        "not recorded",
        runs=runs,
        multi_host=len({h for r in runs for h in r["hosts"]}) > 1,
        readings=RULES,  # how the figures' captions read their data (bench.analysis.report.readings)
    )
