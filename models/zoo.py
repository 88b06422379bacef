"""The zoo as a table: every registered model with our params/MACs beside the published ones."""
from __future__ import annotations

import math

import pandas as pd

from models.complexity import count_macs, params_of
from models.registry import ModelCheckError, get_model_info, list_models


def zoo_frame(height: int | None = None, width: int | None = None, names: list[str] | None = None) -> pd.DataFrame:
    """One row per model. MACs at height x width, or at each model's own input size when not given.

    Published params/MACs are shown only where they were published for the resolution the MACs are counted at
    (the model's own input size), so a published figure is never set beside a count at another resolution.
    """
    rows = []
    for name in names or list_models():
        info = get_model_info(name)
        h, w = (height or info.input_size[0]), (width or info.input_size[1])
        pub = info.published
        same_res = (h, w) == tuple(info.input_size)
        try:
            macs, params, reason = count_macs(name, h, w), params_of(name), ""
        except ModelCheckError as e:  # a user's model that does not build or run: its row says why
            macs, params, reason = math.nan, math.nan, str(e)
        # the deviation from a published figure is measured on the configuration the paper counted
        ref = pub.counted_as if pub and pub.counted_as else name
        ref_macs, ref_params = (macs, params) if ref == name else (count_macs(ref, h, w), params_of(ref))
        row = {
            "model": name, "family": info.family, "mixer": info.mixer, "dataset": info.dataset or "",
            "height": h, "width": w, "tokens": info.tokens(h, w),
            "params_m": params / 1e6, "macs_g": macs / 1e9,
            "published_params_m": pub.params_m if pub else None,
            "published_macs_g": pub.macs_g if pub and same_res else None,
        }
        row["params_dev_pct"] = 100 * (ref_params / 1e6 / pub.params_m - 1) if pub and pub.params_m else None
        row["macs_dev_pct"] = (100 * (ref_macs / 1e9 / row["published_macs_g"] - 1)
                               if row["published_macs_g"] else None)
        row["published_note"] = pub.note if pub else ""
        row["reason"] = reason
        row["counted_as"] = ref if ref != name else ""
        if pub:
            row["published_latency_ms"] = "; ".join(f"{k}: {v:g}" for k, v in pub.latency_ms.items())
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.astype({"params_m": "float64", "macs_g": "float64", "published_params_m": "float64",
                      "published_macs_g": "float64", "params_dev_pct": "float64", "macs_dev_pct": "float64"})
