"""Reference models: the registry's published numbers (params, MACs, latency, mIoU) beside what these runs
measured of the same model, kept apart so that a paper's figure is never read as one of ours."""
from __future__ import annotations

from typing import Any

import pandas as pd

from bench.analysis.report.data import Merged
from models.registry import get_model_info, list_models


def _first_num(df: pd.DataFrame, col: str) -> float | None:
    if not len(df) or col not in df.columns:
        return None
    v = pd.to_numeric(df[col], errors="coerce").dropna()
    return float(v.iloc[0]) if len(v) else None


def _measured(results: pd.DataFrame, name: str, h: int, w: int) -> dict[str, Any]:
    """Our params, MACs (batch 1) and latencies of `name` at its published input size h x w."""
    mine = results[results["model"] == name] if len(results) else results
    at_size = mine[(mine["height"] == h) & (mine["width"] == w)] if len(mine) else mine
    params = _first_num(mine, "params")
    macs = _first_num(at_size[at_size["batch"] == 1] if len(at_size) else at_size, "macs")
    lat = [dict(config=r["config"], status=r["status"], reason=str(r["reason"]),
                latency_ms=r["latency_ms_median"] if r["status"] == "ok" else None, batch=r["batch"])
           for r in (at_size.to_dict("records") if len(at_size) else [])]
    return dict(params_m=params / 1e6 if params is not None else None,
                macs_g=macs / 1e9 if macs is not None else None, measured=lat, in_results=bool(len(mine)))


def reference_models(m: Merged) -> tuple[list[dict], list[str]]:
    """One entry per registry model that has published numbers: published values and our measured ones."""
    out: list[dict] = []
    for name in list_models():
        info = get_model_info(name)
        pub = info.published
        if pub is None:
            continue
        h, w = info.input_size
        out.append(dict(name=name, family=info.family, dataset=info.dataset or "", input_size=f"{h}x{w}",
                        pub_params_m=pub.params_m, pub_macs_g=pub.macs_g, pub_latency=dict(pub.latency_ms or {}),
                        pub_miou=pub.miou, pub_source=pub.source, **_measured(m.results, name, h, w)))
    if not out:
        return [], ["the model registry has no published numbers"]
    return out, []
