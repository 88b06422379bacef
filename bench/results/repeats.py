"""One case measured in several processes (`--repeats R`): the row that pools them.

Why: on a shared machine the medians of separate processes of the same case differ by far more than each
process's own CI says (docs/METHODOLOGY.md: 2-13% CV between processes on the 2-vCPU development VM), because a
process's samples share its memory layout, thread placement and the machine's state during those seconds. The
runner therefore measures each case in R child processes, interleaved round-robin over the cases (pass 1 of every
case, then pass 2, ...), so that slow drift of the machine is spread over all cases instead of hitting some; each
process gets 1/R of the case's time budget.

The pooled row: latency columns from all samples together (`latency_fields`), the CI of the median from the
two-level bootstrap over processes and samples (`bench.stats.hierarchical_ci`) with the confidence it is taken
to reach as `latency_ms_ci_level` (`bench.stats.hierarchical_ci_level`: the nominal 0.95 when two or more
processes have 6 samples or more, below it otherwise, so that no verdict rests on it), the spread of the
per-process medians as `latency_ms_repeat_cv`, `repeats` = processes measured, peak memory the largest of the
processes, first call and warm-up from the first process, converged only if every process
converged. A process that fails makes the whole case that failure (status and reason, "repeat k of R: ...");
the samples already taken stay in samples.parquet.
"""
from __future__ import annotations

import math

import numpy as np

from bench.stats import NOMINAL, SUMMARY_KEYS, hierarchical_ci, hierarchical_ci_level, repeat_cv, summarize

MAX_OF = ("peak_mem_mb", "peak_mem_reserved_mb", "activations_mem_mb", "rel_err")


def latency_fields(samples_ms, batch: int, macs: int | None, peak_gmacs_per_s: float | None) -> dict:
    """The latency, throughput and efficiency columns of a row from its raw samples (milliseconds); the CI of the
    median comes with `latency_ms_ci_level`, the confidence it reaches (below 0.95 with fewer than 6 samples)."""
    s = summarize(samples_ms)
    row = {"n": s["n"]}
    for k in SUMMARY_KEYS[1:]:  # all but n
        row[f"latency_ms_{k}"] = s[k]
    med_s = s["median"] / 1e3
    ok = med_s > 0 and math.isfinite(med_s)
    row["throughput_ips"] = batch / med_s if ok else float("nan")
    row["gmacs_per_s"] = macs / med_s / 1e9 if ok and macs else float("nan")
    row["device_peak_gmacs_per_s"] = peak_gmacs_per_s if peak_gmacs_per_s else float("nan")
    row["frac_of_peak"] = row["gmacs_per_s"] / peak_gmacs_per_s if peak_gmacs_per_s else float("nan")
    return row


def pool_rows(rows: list[dict], groups: list[list[float]]) -> dict:
    """Merge the rows of the processes of one case (all status ok, in process order) and their samples, one list
    per process. `rows` may start with an already pooled row (a resumed run); `repeats` counts the sample groups."""
    if not rows:
        raise ValueError("pool_rows: no rows")
    out = dict(rows[0])
    out["repeats"] = max(1, len(groups))
    if len(groups) <= 1:
        out["latency_ms_repeat_cv"] = float("nan")
        return out
    pooled = np.concatenate([np.asarray(g, dtype=np.float64) for g in groups])
    out.update(latency_fields(pooled, int(out.get("batch") or 1), out.get("macs"),
                              _f(out.get("device_peak_gmacs_per_s"))))
    lo, hi = hierarchical_ci(groups, np.median, conf=NOMINAL, n_boot=1000, seed=0)
    if math.isfinite(lo) and math.isfinite(hi):
        out["latency_ms_ci_low"], out["latency_ms_ci_high"] = lo, hi
        out["latency_ms_ci_level"] = hierarchical_ci_level(groups, NOMINAL)
    out["latency_ms_repeat_cv"] = repeat_cv(groups)
    out["converged"] = all(bool(r.get("converged")) for r in rows)
    for k in MAX_OF:
        vals = [_f(r.get(k)) for r in rows]
        vals = [v for v in vals if math.isfinite(v)]
        if vals:
            out[k] = max(vals)
    if "numerics_ok" in out:
        out["numerics_ok"] = all(bool(r.get("numerics_ok")) for r in rows if r.get("numerics_ok") is not None)
    return out


def failed(row: dict, repeat: int, repeats_asked: int) -> dict:
    """The row of a case whose process number `repeat` (0-based) did not end ok."""
    out = dict(row)
    if repeats_asked > 1:
        out["reason"] = f"repeat {repeat + 1} of {repeats_asked}: {row.get('reason') or row.get('status')}"
        out["repeats"] = repeat + 1
    else:
        out["repeats"] = 1
    return out


def _f(x) -> float:
    try:
        return float(x) if x is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def add_process(state, case_id: str, rep: int, full: dict, samples: list[float], rows_at: dict, procs: dict,
                by_rep: dict[int, list[float]], repeats: int) -> None:
    """One process's row and samples join a run (a RunState): the samples are appended, the row is pooled with the
    case's earlier processes (`procs`: this session's rows per case; `by_rep`: the case's samples per process,
    indexed before these join) or makes the case that failure; `rows_at` maps case_id -> its row's index."""
    prev = state.rows[rows_at[case_id]] if case_id in rows_at else None
    state.samples.extend({"run_id": state.run_id, "case_id": case_id, "repeat": rep, "iter": j, "latency_ms": v}
                         for j, v in enumerate(samples))
    if samples:
        by_rep.setdefault(rep, []).extend(float(v) for v in samples)
    if full.get("status") != "ok":
        full = failed(full, rep, repeats)
    else:
        mine = procs.setdefault(case_id, [prev] if prev is not None and prev.get("status") == "ok" else [])
        mine.append(full)
        groups = [g for _, g in sorted(by_rep.items())]
        full = pool_rows(mine, groups) if len(mine) > 1 else {**full, "repeats": 1,
                                                               "latency_ms_repeat_cv": float("nan")}
        if prev is not None:
            full["started_at"] = prev.get("started_at") or full["started_at"]
            full["wall_s"] = float(prev.get("wall_s") or 0.0) + float(full.get("wall_s") or 0.0)
    if prev is not None:
        state.rows[rows_at[case_id]] = full
    else:
        rows_at[case_id] = len(state.rows)
        state.rows.append(full)
