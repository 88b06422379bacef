"""Reference models: the registry's published numbers (params, MACs, latency, mIoU) beside ours of the same model,
kept apart so that a paper's figure is never read as one of ours.

Our params and MACs are counted for every reference model (models.zoo.zoo_frame, the table `run_bench.py models`
prints, with the same deviation rule), whether or not the runs measured it; our latencies are the runs' rows of
the model at its published input size, the work the paper timed."""
from __future__ import annotations

from typing import Any

import pandas as pd

from bench.analysis.report.data import Merged, ci_level
from models.registry import get_model_info, list_models
from models.zoo import zoo_frame


def published_latencies(latency_ms: dict[str, float]) -> list[dict[str, Any]]:
    """The registry's "hardware, setting" -> ms as records: the hardware (before the first comma) and what the
    paper says of how it was measured (backend, precision, input; the rest of the key)."""
    out = []
    for key, ms in latency_ms.items():
        hardware, _, setting = str(key).partition(",")
        out.append(dict(ms=float(ms), hardware=hardware.strip(), setting=setting.strip()))
    return out


def _measured(results: pd.DataFrame, name: str, h: int, w: int) -> dict[str, Any]:
    """The runs' rows of `name` at its published input size h x w."""
    mine = results[results["model"] == name] if len(results) else results
    at_size = mine[(mine["height"] == h) & (mine["width"] == w)] if len(mine) else mine
    lat = [dict(config=r["config"], status=r["status"], reason=str(r["reason"]),
                latency_ms=r["latency_ms_median"] if r["status"] == "ok" else None,
                ci_low=r.get("latency_ms_ci_low"), ci_high=r.get("latency_ms_ci_high"), ci_level=ci_level(r),
                n=r.get("n"), batch=r["batch"])
           for r in (at_size.to_dict("records") if len(at_size) else [])]
    return dict(measured=lat, in_results=bool(len(mine)))


def _ours(names: list[str]) -> dict[str, dict[str, Any]]:
    """Our params (M) and MACs (G, at the model's input size) with their deviation from the published figure."""
    df = zoo_frame(names=names)
    cols = ["params_m", "macs_g", "params_dev_pct", "macs_dev_pct", "counted_as"]
    return {r["model"]: {c: (None if pd.isna(r[c]) else r[c]) if c != "counted_as" else r[c] for c in cols}
            for r in df.to_dict("records")}


def reference_models(m: Merged) -> tuple[list[dict], list[str]]:
    """One entry per registry model that has published numbers: published values and ours."""
    names = [n for n in list_models() if get_model_info(n).published is not None]
    if not names:
        return [], ["the model registry has no published numbers"]
    ours = _ours(names)
    out: list[dict] = []
    for name in names:
        info = get_model_info(name)
        pub = info.published
        h, w = info.input_size
        out.append(dict(name=name, family=info.family, dataset=info.dataset or "", input_size=f"{h}x{w}",
                        pub_params_m=pub.params_m, pub_macs_g=pub.macs_g,
                        pub_latency=published_latencies(pub.latency_ms or {}), pub_miou=pub.miou,
                        pub_source=pub.source, pub_note=pub.note, **ours[name], **_measured(m.results, name, h, w)))
    return out, []
