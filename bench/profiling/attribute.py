"""The attribution tables: time (from a profile) beside MACs and bytes (from the counted forward) per op kind, per
module group and per op, as tidy pandas DataFrames.

Columns (every table): time_ms (per iteration; the device's time: host self time on a CPU, kernel time on CUDA),
time_share (of the total; sums to 1), host_ms (host self time per iteration), macs (per forward), mac_share (sums
to 1 where the model has MACs), bytes (per forward, the lower bound of bench.profiling.macs), intensity_macs_per_byte
(macs / bytes), gmacs_per_s (achieved: macs / time), gbytes_per_s (achieved: bytes / time, against the triad
bandwidth), calls (op units per iteration). The kind table leads with op_kind; the module table with module,
stage and part (bench.profiling.modules); the top-ops table with op, op_kind, module, shapes.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from bench.profiling.macs import OpCost
from bench.profiling.modules import ROOT, Group
from bench.profiling.opkinds import kind_order
from bench.profiling.torch_events import OpTime

METRICS = ("time_ms", "time_share", "host_ms", "macs", "mac_share", "bytes", "intensity_macs_per_byte",
           "gmacs_per_s", "gbytes_per_s", "calls")
KIND_COLUMNS = ("op_kind",) + METRICS
MODULE_COLUMNS = ("module", "stage", "part") + METRICS
TOP_COLUMNS = ("op", "op_kind", "module", "shapes") + METRICS


def _times(ops: Iterable[OpTime], iters: int) -> pd.DataFrame:
    rows = [{"op": o.op, "op_kind": o.kind, "module": o.module, "shapes": o.shapes, "time_ms": o.time_us / 1e3 / iters,
             "host_ms": o.host_us / 1e3 / iters, "calls": o.calls / iters} for o in ops]
    return pd.DataFrame(rows, columns=["op", "op_kind", "module", "shapes", "time_ms", "host_ms", "calls"])


def _costs(costs: Iterable[OpCost]) -> pd.DataFrame:
    rows = [{"op": c.op, "op_kind": c.kind, "module": c.module, "shapes": c.shapes, "macs": c.macs, "bytes": c.bytes}
            for c in costs]
    return pd.DataFrame(rows, columns=["op", "op_kind", "module", "shapes", "macs", "bytes"])


def _finish(df: pd.DataFrame) -> pd.DataFrame:
    """Shares and rates from the summed columns."""
    df = df.copy()
    for col in ("time_ms", "host_ms", "calls"):
        df[col] = df[col].astype(float).fillna(0.0)
    for col in ("macs", "bytes"):
        df[col] = df[col].fillna(0).astype("int64")
    total_t, total_m = df["time_ms"].sum(), df["macs"].sum()
    df["time_share"] = df["time_ms"] / total_t if total_t > 0 else 0.0
    df["mac_share"] = df["macs"] / total_m if total_m > 0 else 0.0
    m, b = df["macs"].to_numpy(float), df["bytes"].to_numpy(float)
    t_s = df["time_ms"].to_numpy(float) / 1e3
    nan = np.full(len(df), np.nan)
    df["intensity_macs_per_byte"] = np.divide(m, b, out=nan.copy(), where=b > 0)
    df["gmacs_per_s"] = np.divide(m / 1e9, t_s, out=nan.copy(), where=t_s > 0)
    df["gbytes_per_s"] = np.divide(b / 1e9, t_s, out=nan.copy(), where=t_s > 0)
    return df


def _joined(ops: Iterable[OpTime], costs: Iterable[OpCost], iters: int, keys: list[str]) -> pd.DataFrame:
    t = _times(ops, iters).groupby(keys, dropna=False)[["time_ms", "host_ms", "calls"]].sum()
    c = _costs(costs).groupby(keys, dropna=False)[["macs", "bytes"]].sum()
    return _finish(t.join(c, how="outer").reset_index())


def kind_table(ops: Iterable[OpTime], costs: Iterable[OpCost], iters: int) -> pd.DataFrame:
    """One row per op kind, in the table's order (bench.profiling.opkinds.OP_KINDS)."""
    df = _joined(ops, costs, iters, ["op_kind"])
    df = df.iloc[sorted(range(len(df)), key=lambda i: kind_order(df["op_kind"].iloc[i]))]
    return df.reset_index(drop=True)[list(KIND_COLUMNS)]


def module_table(ops: Iterable[OpTime], costs: Iterable[OpCost], iters: int,
                 groups: dict[str, Group]) -> pd.DataFrame:
    """One row per module group (model order, ROOT last) with its stage and part."""
    df = _joined(ops, costs, iters, ["module"])
    order = {g: i for i, g in enumerate(groups)}
    df["stage"] = [groups[m].stage if m in groups else ROOT for m in df["module"]]
    df["part"] = [groups[m].part if m in groups else "other" for m in df["module"]]
    df = df.iloc[sorted(range(len(df)), key=lambda i: order.get(df["module"].iloc[i], len(order)))]
    return df.reset_index(drop=True)[list(MODULE_COLUMNS)]


def top_ops(ops: Iterable[OpTime], costs: Iterable[OpCost], iters: int, n: int = 15) -> pd.DataFrame:
    """The `n` op units with the most time (an op at its input shapes in its module; framework time left out),
    MACs and bytes joined on (op, kind, module, tensor shapes): torch sources only, since ONNX Runtime and
    TensorRT name their ops otherwise (their MACs are in the kind and module tables). Shares are of the whole
    profile, not of the n rows."""
    df = _joined(ops, costs, iters, ["op", "op_kind", "module", "shapes"])
    df = df[(df["op_kind"] != "framework") & (df["time_ms"] > 0)]
    return df.sort_values("time_ms", ascending=False).head(n).reset_index(drop=True)[list(TOP_COLUMNS)]


def stage_table(modules: pd.DataFrame) -> pd.DataFrame:
    """The module table summed per stage and part (mixer, ffn, other): the coarse view of a model."""
    sums = modules.groupby(["stage", "part"], sort=False)[["time_ms", "host_ms", "macs", "bytes", "calls"]].sum()
    return _finish(sums.reset_index())[["stage", "part"] + list(METRICS)]
