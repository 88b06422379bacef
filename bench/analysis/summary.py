"""The compact end-of-run summary: median ms with its CI per model x resolution for each device setting (the
confidence a CI reaches is printed beside it where that is not 95%: fewer than 6 samples; one sample has none), and
the speedup of multi-scale linear attention (msla) over softmax attention at each resolution; then one line with
the wall time, how many cases converged and what is not ok, and whether the machine was busy while it measured
(flagged by bench.health's guard, said by bench.results.noise), in words. A median without its interval invites
reading noise as a difference."""
from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

from bench.cases import group_key, setting_label
from bench.results.noise import noisy_sentence
from bench.stats import NOMINAL, median_ci_level


def _res(h: int, w: int) -> str:
    return f"{int(h)}" if int(h) == int(w) else f"{int(h)}x{int(w)}"


def _speedup_table(g: pd.DataFrame, order: list[str]) -> pd.DataFrame | None:
    """softmax / msla median latency per base model (and block) x resolution, where both were ok."""
    ok = g[g["status"] == "ok"].assign(base=lambda d: d["model"].str.split(":").str[0])
    sp = []
    for (base, level, res), gg in ok.groupby(["base", "level", "res"], sort=False):
        m = gg.set_index("variant")["latency_ms_median"]
        if "msla" in m and "softmax" in m:
            sp.append({"pair": f"{base}" if level == "model" else f"{base} (block)", "res": res,
                       "x": f"{m['softmax'] / m['msla']:.2f}x"})
    if not sp:
        return None
    st = pd.DataFrame(sp).pivot_table(index="pair", columns="res", values="x", aggfunc="first")
    st = st.reindex(columns=[c for c in order if c in st.columns])
    st.columns.name = "msla speedup over softmax"
    return st.fillna("")


def _number(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def ci_level(r: Mapping[str, Any]) -> float:
    """The confidence the row's CI of the median reaches: latency_ms_ci_level, else (a row of one process written
    before it was recorded) bench.stats.median_ci_level(n); nan when unknown."""
    level = _number(r.get("latency_ms_ci_level"))
    n, repeats = _number(r.get("n")), _number(r.get("repeats"))
    if math.isnan(level) and not math.isnan(n) and not repeats > 1:
        level = median_ci_level(int(n))
    return level


def _reaches(level: float) -> bool:
    return level >= NOMINAL - 5e-4


def _cell(r: Mapping[str, Any]) -> str:
    """'4.62 ms [4.58, 4.67]' (median, 95% CI), '4.6 ms [4.1, 5.0] 75%' (a CI below 95%, its level), '6000 ms
    n=1, no CI' (one sample), '*' after it when the CI did not converge; else the status."""
    if r["status"] != "ok":
        return str(r["status"])
    lo, hi, n, level = r.get("latency_ms_ci_low"), r.get("latency_ms_ci_high"), _number(r.get("n")), ci_level(r)
    if n <= 1:
        ci = " n=1, no CI"
    elif lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        ci = ""
    else:
        ci = f" [{_ms(lo)}, {_ms(hi)}]" + ("" if _reaches(level) else
                                           " level?" if math.isnan(level) else f" {100 * level:.3g}%")
    return f"{_ms(r['latency_ms_median'])} ms{ci}" + ("" if _converged(r) or _paired(r) else "*")


def _paired(r: Mapping[str, Any]) -> bool:
    """Measured in an interleaved group: its group's decision, not a per-case CI target, ended its measuring."""
    return str(r.get("design") or "") == "interleaved"


def _ms(x: float) -> str:
    """Milliseconds to about three significant digits: enough to read a 1% CI, no more."""
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.1f}" if x < 1000 else f"{x:.0f}"


def _converged(r: Mapping[str, Any]) -> bool:
    v = r.get("converged")
    return bool(v) if v is not None and not pd.isna(v) else False


def summary_tables(results: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """[(title, table)]: per setting, median ms [CI] (models x resolutions; the header says 95% only when every
    CI of the table reaches it) and msla speedup over softmax."""
    df = results.copy()
    if df.empty:
        return []
    df["setting"] = [setting_label(r) for r in df.to_dict("records")]
    df["res"] = [_res(h, w) for h, w in zip(df["height"], df["width"])]
    order = list(dict.fromkeys(df["res"]))
    out = []
    for setting, g in df.groupby("setting", sort=False):
        cell = [_cell(r) for r in g.to_dict("records")]
        t = g.assign(cell=cell).pivot_table(index="model", columns="res", values="cell", aggfunc="first")
        t = t.reindex(index=list(dict.fromkeys(g["model"])), columns=[c for c in order if c in t.columns])
        ok = [ci_level(r) for r in g.to_dict("records") if r["status"] == "ok"]
        t.columns.name = "median [95% CI]" if all(_reaches(x) for x in ok) else "median [CI, 95% unless shown]"
        out.append((setting, t.fillna("")))
        st = _speedup_table(g, order)
        if st is not None:
            out.append((setting, st))
    return out


def duration(seconds: float) -> str:
    """'42.0 s', '3 min 42 s', '1 h 05 min'."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s // 60 % 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{seconds:.1f} s"


def run_line(results: pd.DataFrame, wall_s: float | None = None) -> str:
    """'wall time 3 min 42 s; 24 cases, 22 of 23 ok converged (* in the tables: ...)': the run in one line."""
    parts = [] if wall_s is None or pd.isna(wall_s) else [f"wall time {duration(float(wall_s))}"]
    ok = results[results["status"] == "ok"] if not results.empty else results
    recs = ok.to_dict("records")
    alone = [r for r in recs if not _paired(r)]
    conv = sum(_converged(r) for r in alone)
    text = f"{len(results)} cases"
    if len(recs) > len(alone):
        text += f", {len(recs) - len(alone)} measured side by side in their decision groups"
    if alone:
        text += f", {conv} of {len(alone)} ok {'isolated ' if len(recs) > len(alone) else ''}converged"
    if conv < len(alone):
        text += " (* in the tables: the CI of the median was still wider than the target at --max-time)"
    return "; ".join([*parts, text])


def decisions_line(pairs: pd.DataFrame | None) -> str:
    """'decisions: 5 of 6 groups resolved; against the fastest: 9 faster, 3 tied, 2 not resolved' ("" without
    paired decisions)."""
    if pairs is None or not len(pairs):
        return ""
    vs = pairs[pairs["against_fastest"].fillna(False).astype(bool)]
    groups = pairs.drop_duplicates("group_id")
    resolved = int((groups["group_verdict"] == "resolved").sum())
    counts = ", ".join(f"{int((vs['verdict'] == v).sum())} {v}" for v in ("faster", "tied", "not resolved"))
    noisy = int(vs["noisy"].fillna(False).astype(bool).sum())
    return (f"decisions: {resolved} of {len(groups)} groups resolved; pairs against the fastest: {counts}"
            + (f" ({noisy} resting on a busy machine)" if noisy else ""))


def noisy_count(results: pd.DataFrame) -> int:
    """Rows flagged noisy (a blank or absent `noisy`, as in runs older than the health guard, is not)."""
    if results.empty or "noisy" not in results.columns:
        return 0
    return int(results["noisy"].fillna(False).astype(bool).sum())


def noisy_line(results: pd.DataFrame, health: Mapping[str, Any] | None = None) -> str:
    """The health sentence of a run ("" when no case is noisy): counts from the table, figures from the run's
    meta["health"] when given."""
    return noisy_sentence(noisy_count(results), len(results), (health or {}).get("summary"))


def format_summary(results: pd.DataFrame, health: Mapping[str, Any] | None = None,
                   wall_s: float | None = None, pairs: pd.DataFrame | None = None) -> str:
    """The tables as text, then one line with the wall time (`wall_s`: the run's meta["wall_s"]) and how many ok
    cases converged, one counting the cases that are not ok and one saying how many were measured on a busy
    machine (`health`: the run's meta["health"], for the figures)."""
    lines = []
    for title, t in summary_tables(results):
        lines.append(f"== {title}")
        lines.append(t.to_string())
        lines.append("")
    lines.append(run_line(results, wall_s))
    said = decisions_line(pairs)
    if said:
        lines.append(said)
    bad = results[results["status"] != "ok"] if not results.empty else results
    if len(bad):
        counts = ", ".join(f"{n} {s}" for s, n in bad["status"].value_counts().items())
        lines.append(f"{len(bad)} of {len(results)} cases not ok ({counts}); reasons in the 'reason' column")
    noisy = noisy_line(results, health)
    if noisy:
        lines.append(f"warning: {noisy}")
    return "\n".join(lines).rstrip() + "\n"


def noisy_decisions(res: pd.DataFrame) -> list[str]:
    """The decision groups (group_key of ok rows with two or more mixers) that rest on a noisy row."""
    ok = res[res["status"] == "ok"]
    if not len(ok):
        return []
    keys = [group_key(r) for r in ok.to_dict("records")]
    noisy = ok["noisy"].fillna(False).astype(bool).tolist()
    count: dict[str, int] = {}
    for k in keys:
        count[k] = count.get(k, 0) + 1
    return sorted({k for k, n in zip(keys, noisy) if n and count[k] >= 2})


def next_steps(groups: list[str], health: dict, prog: str = "run_bench.py") -> list[str]:
    """The last lines of a run whose decisions rest on noisy rows: which, why, and what to do next."""
    waits = health.get("waits") or []
    waited = sum(float(w.get("waited_s") or 0) for w in waits)
    return [f"{prog}: {len(groups)} decision(s) rest on rows measured on a busy machine (exit 3): "
            + ", ".join(groups[:4]) + (f" and {len(groups) - 4} more" if len(groups) > 4 else ""),
            f"  waited {waited:.0f} s for a quiet machine in {len(waits)} wait(s); it did not stay quiet",
            "  next: measure again when the machine is quiet (--wait-quiet S waits longer), or use fewer threads "
            "than free cores (--threads 1), or compare the pair with `run_bench.py ab --a X --b Y` (same "
            "processes, shared noise), or a quieter machine"]
