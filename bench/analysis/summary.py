"""The compact end-of-run summary: median ms per model x resolution for each device setting, and the speedup of
multi-scale linear attention (msla) over softmax attention at each resolution; then what is not ok, and whether the
machine was busy while it measured (bench.health), in words."""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from bench.cases import setting_label
from bench.health import noisy_sentence


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


def summary_tables(results: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """[(title, table)]: per setting, median ms (models x resolutions) and msla speedup over softmax."""
    df = results.copy()
    if df.empty:
        return []
    df["setting"] = [setting_label(r) for r in df.to_dict("records")]
    df["res"] = [_res(h, w) for h, w in zip(df["height"], df["width"])]
    order = list(dict.fromkeys(df["res"]))
    out = []
    for setting, g in df.groupby("setting", sort=False):
        cell = g.apply(lambda r: f"{r['latency_ms_median']:.2f}" if r["status"] == "ok" else str(r["status"]), axis=1)
        t = g.assign(cell=cell).pivot_table(index="model", columns="res", values="cell", aggfunc="first")
        t = t.reindex(index=list(dict.fromkeys(g["model"])), columns=[c for c in order if c in t.columns])
        t.columns.name = "median ms"
        out.append((setting, t.fillna("")))
        st = _speedup_table(g, order)
        if st is not None:
            out.append((setting, st))
    return out


def noisy_count(results: pd.DataFrame) -> int:
    """Rows flagged noisy (a blank or absent `noisy`, as in runs older than the health guard, is not)."""
    if results.empty or "noisy" not in results.columns:
        return 0
    return int(results["noisy"].fillna(False).astype(bool).sum())


def noisy_line(results: pd.DataFrame, health: Mapping[str, Any] | None = None) -> str:
    """The health sentence of a run ("" when no case is noisy): counts from the table, figures from the run's
    meta["health"] when given."""
    return noisy_sentence(noisy_count(results), len(results), (health or {}).get("summary"))


def format_summary(results: pd.DataFrame, health: Mapping[str, Any] | None = None) -> str:
    """The tables as text, then one line counting the cases that are not ok and one saying how many were measured
    on a busy machine (`health`: the run's meta["health"], for the figures)."""
    lines = []
    for title, t in summary_tables(results):
        lines.append(f"== {title}")
        lines.append(t.to_string())
        lines.append("")
    bad = results[results["status"] != "ok"] if not results.empty else results
    if len(bad):
        counts = ", ".join(f"{n} {s}" for s, n in bad["status"].value_counts().items())
        lines.append(f"{len(bad)} of {len(results)} cases not ok ({counts}); reasons in the 'reason' column")
    noisy = noisy_line(results, health)
    if noisy:
        lines.append(f"warning: {noisy}")
    return "\n".join(lines).rstrip() + "\n"
