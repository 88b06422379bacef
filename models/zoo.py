"""The zoo as a table: every registered model with our params/MACs beside the published ones."""
from __future__ import annotations

import pandas as pd

from models.complexity import count_macs, params_of
from models.registry import get_model_info, list_models


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
        macs = count_macs(name, h, w)
        params = params_of(name)
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
        row["counted_as"] = ref if ref != name else ""
        if pub:
            row["published_latency_ms"] = "; ".join(f"{k}: {v:g}" for k, v in pub.latency_ms.items())
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.astype({"params_m": "float64", "macs_g": "float64", "published_params_m": "float64",
                      "published_macs_g": "float64", "params_dev_pct": "float64", "macs_dev_pct": "float64"})


def format_zoo_table(df: pd.DataFrame) -> str:
    """The zoo frame as a compact terminal table: ours beside published, deviations in percent."""

    def num(v, fmt: str) -> str:
        return "" if v is None or pd.isna(v) else format(v, fmt)

    def pct(v, star: bool) -> str:
        return "" if v is None or pd.isna(v) else f"{v:+.1f}%" + ("*" if star else "")

    rows = [("model", "family", "mixer", "input", "tokens", "params M", "pub. M", "dev", "MACs G", "pub. G", "dev")]
    for r in df.itertuples(index=False):
        rows.append((r.model, r.family, r.mixer, f"{r.height}x{r.width}", str(r.tokens), num(r.params_m, ".2f"),
                     num(r.published_params_m, "g"), pct(r.params_dev_pct, bool(r.counted_as)),
                     num(r.macs_g, ".2f"), num(r.published_macs_g, "g"), pct(r.macs_dev_pct, bool(r.counted_as))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    left = {0, 1, 2}
    lines = ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    notes = sorted({n for n in df.get("published_note", []) if isinstance(n, str) and n})
    footer = ["", "pub. = published (papers); dev = ours vs published, on the configuration the paper counted."]
    footer += [f"* {n}: the deviation is measured on that configuration" for n in notes]
    return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:] + footer)
