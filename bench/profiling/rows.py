"""A case's profile as rows of profile.parquet (bench.schema.PROFILE_COLUMNS): the op-kind, module and top-op
tables of one `Profile`, stacked long with a `breakdown` column, the case's identity on every row, and the
roofline of its device setting (calibrated peak and triad bandwidth) where the run measured one.
"""
from __future__ import annotations

import math
from typing import Any

from bench.schema import PROFILE_COLUMN_NAMES, PROFILE_IDENTITY

TOP_OPS = 15  # op rows kept per case: enough for "the top ops per case", small enough for a large matrix


def profile_rows(identity: dict[str, Any], profile: Any, peak_gmacs_per_s: float | None = None,
                 bandwidth_gb_per_s: float | None = None, top: int = TOP_OPS) -> list[dict[str, Any]]:
    """The rows of one case: op_kind rows (with roofline columns), module rows, the `top` ops by time."""
    from bench.profiling.bandwidth import Roofline, add_roofline

    roof = None
    if _positive(peak_gmacs_per_s) and _positive(bandwidth_gb_per_s):
        roof = Roofline(float(peak_gmacs_per_s), float(bandwidth_gb_per_s))
    kinds = profile.by_kind()
    if roof is not None:
        kinds = add_roofline(kinds, roof)
    tables = (("op_kind", kinds), ("module", profile.by_module()), ("op", profile.top_ops(top)))
    base = {k: identity.get(k) for k in PROFILE_IDENTITY}
    base.update(source=profile.source, peak_gmacs_per_s=peak_gmacs_per_s, bandwidth_gb_per_s=bandwidth_gb_per_s)
    rows = []
    for breakdown, df in tables:
        df = df.sort_values("time_ms", ascending=False, kind="stable").reset_index(drop=True)
        for rank, rec in enumerate(df.to_dict("records")):
            row = {**base, "breakdown": breakdown, "rank": rank}
            row.update({k: _plain(v) for k, v in rec.items() if k in PROFILE_COLUMN_NAMES})
            rows.append(row)
    return rows


def _positive(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x)) and float(x) > 0
    except (TypeError, ValueError):
        return False


def _plain(v: Any) -> Any:
    """numpy scalars -> Python values (the rows cross a process boundary as JSON)."""
    item = getattr(v, "item", None)
    return item() if callable(item) else v
