"""Gates: relative invariants measured within ONE run, so they hold on any machine without a baseline.

    python run_bench.py check                      # run the small matrix the gates need, then evaluate them
    python run_bench.py check --run results/RUN    # evaluate the gates on an existing run (no measuring)

This module evaluates; it never measures (analysis does not reach back up the pipeline into the runner).
`matrix_for` says which cases the gates need, and the check command (bench/commands/check.py), which owns the run
lifecycle and the command line, measures them and evaluates the run it made with `evaluate_gates`.

The gates live in `bench/analysis/gates.toml` (or `--gates FILE`; its tables are the examples), one `[[gate]]`
table each, with `name`, `kind` and:
- kind "speedup": median(slower) / median(faster) >= min_ratio at one resolution (`faster`, `slower`, `height`,
  `width`, `min_ratio`);
- kind "scaling_exponent": the least-squares slope of log(median latency) vs log(pixels) of `model` over the
  square sides `resolutions` (default 512, 1024, 2048), within `max_exponent` and/or `min_exponent`.
Optional: `devices = ["cpu"]` (device types it applies to; default all), `backend`, `precision`, `batch`, `threads`
(restrict the rows), `description`, and `measured_for`, the settings its thresholds were measured for, e.g.
`measured_for = { threads = [1], backend = ["eager"], precision = ["fp32"], batch = [1] }` (the keys of
`gates_file.MEASURED_FOR`; bench/analysis/gates_file.py reads and validates the file).

A gate is evaluated separately for every device setting (`bench.cases.SETTING`); each group gives one GateResult.
A group outside `measured_for` is skipped with the reason ("measured for threads 1; this run has threads 2"): a
ratio measured on one thread says nothing about two. Without `measured_for` a gate applies to every setting.

Outcomes. speedup: pass when the ratio of medians >= min_ratio; when the slower model ran out of memory or time
while the faster one was ok, pass (the claim holds a fortiori); when the faster model is not ok, fail; when a row
is absent or skipped/unsupported, skipped. scaling_exponent: needs ok rows at >= 2 pixel counts, else skipped.
Both rest on medians, not on CIs; the speedup's conservative ratio (slower CI low / faster CI high) is reported
only when both CIs reach their nominal 95% (`latency_ms_ci_level`; with fewer than 6 samples they do not).
A gate whose rows were flagged noisy by the runner's machine-health guard is not judged (SKIP-NOISY, the rows and
reasons in the message) unless --allow-noisy, which judges it and says so.
The check command exits 0 when no evaluated gate failed, 1 when one did, 2 on bad input or when no gate could be
evaluated at all (e.g. the run holds none of the gates' cases), 3 when none failed but a gate was not judged
because its rows were measured on a busy machine.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np
import pandas as pd

from bench.analysis.gates_file import load_gates, validate_gates
from bench.analysis.meta import noisy_reason
from bench.analysis.verdict import ci_level
from bench.cases import SETTING, setting_label
from bench.results.store import Run
from bench.stats import NOMINAL
from bench.text import markdown_table

GROUP = SETTING
FILTERS = ("backend", "precision", "batch", "threads")
NOT_FINISHED = ("oom", "timeout")


@dataclass
class GateResult:
    name: str
    kind: str
    passed: bool
    measured: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    skipped: bool = False
    group: str = ""
    noisy: bool = False  # its rows were flagged noisy: not judged (skipped) unless --allow-noisy

    @property
    def outcome(self) -> str:
        if self.skipped:
            return "SKIP-NOISY" if self.noisy else "SKIP"
        return "PASS" if self.passed else "FAIL"


# ---------------------------------------------------------------- evaluation

def _device_type(v: Any) -> str:
    return "" if v is None or pd.isna(v) else str(v).split(":")[0]


def _rows_for(df: pd.DataFrame, gate: dict) -> pd.DataFrame:
    if gate.get("devices"):
        df = df[df["device"].map(_device_type).isin(gate["devices"])]
    for k in FILTERS:
        if k in gate:
            df = df[df[k].astype("string") == str(gate[k])]
    return df


def _groups(df: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """(label, rows) of every device setting in df, in a stable order."""
    if df.empty:
        return
    keys = [" ".join(str(v) for v in t) for t in df[list(GROUP)].astype("string").fillna("").itertuples(index=False)]
    for _, sub in df.groupby(pd.Series(keys, index=df.index), sort=True):
        yield setting_label(sub.iloc[0]), sub


def _one(sub: pd.DataFrame, model: str, h: int, w: int) -> pd.Series | None:
    r = sub[(sub["model"] == model) & (sub["height"] == h) & (sub["width"] == w)]
    return None if r.empty else r.iloc[-1]


def _speedup(g: dict, sub: pd.DataFrame, label: str) -> GateResult:
    h, w, k = int(g["height"]), int(g["width"]), float(g["min_ratio"])
    fast, slow = _one(sub, g["faster"], h, w), _one(sub, g["slower"], h, w)
    res = GateResult(g["name"], "speedup", False, {"min_ratio": k, "height": h, "width": w}, group=label)
    what = f"{g['faster']} vs {g['slower']} at {h}x{w}"
    for role, row in (("faster", fast), ("slower", slow)):
        if row is None:
            res.skipped, res.message = True, f"{what}: no {role} row ({g[role]}) in the run"
            return res
    fs, ss = str(fast["status"]), str(slow["status"])
    if fs != "ok":
        if fs in ("skipped", "unsupported"):
            res.skipped, res.message = True, f"{what}: {g['faster']} {fs} ({fast['reason']})"
        else:
            res.message = f"{what}: {g['faster']} did not run ok ({fs}: {fast['reason']})"
        return res
    f_ms = float(fast["latency_ms_median"])
    res.measured.update(faster_ms=f_ms)
    if ss in NOT_FINISHED:
        res.passed = True
        res.measured.update(slower_status=ss, ratio=math.inf)
        res.message = f"{what}: {g['slower']} did not finish ({ss}) while {g['faster']} took {f_ms:.3g} ms"
        return res
    if ss != "ok":
        res.skipped, res.message = True, f"{what}: {g['slower']} {ss} ({slow['reason']})"
        return res
    s_ms = float(slow["latency_ms_median"])
    ratio = s_ms / f_ms if f_ms > 0 else math.nan
    res.measured.update(slower_ms=s_ms, ratio=ratio, ratio_conservative=_conservative(fast, slow),
                        ci_level={"faster": ci_level(fast), "slower": ci_level(slow)})
    res.passed = bool(ratio >= k)
    res.message = (f"{g['slower']} / {g['faster']} at {h}x{w} = {s_ms:.4g} / {f_ms:.4g} ms = {ratio:.2f}x "
                   f"({'>=' if res.passed else '<'} required {k:g}x)")
    return res


def _conservative(fast: pd.Series, slow: pd.Series) -> float:
    """slower CI low / faster CI high, only where both CIs reach the nominal level: (min, max) of fewer than 6
    samples is no 95% interval, so a bound built on it would claim more than the data hold."""
    lo, hi = float(slow["latency_ms_ci_low"]), float(fast["latency_ms_ci_high"])
    if not all(ci_level(r) >= NOMINAL - 1e-9 for r in (fast, slow)) or not (lo > 0 and hi > 0):
        return math.nan
    return lo / hi


def _scaling(g: dict, sub: pd.DataFrame, label: str) -> GateResult:
    res = GateResult(g["name"], "scaling_exponent", False, group=label)
    lo, hi = g.get("min_exponent"), g.get("max_exponent")
    rows = _used_rows(g, sub)
    rows = rows[pd.to_numeric(rows["latency_ms_median"], errors="coerce") > 0]
    px = (rows["height"].astype("float64") * rows["width"].astype("float64")).to_numpy()
    ms = rows["latency_ms_median"].astype("float64").to_numpy()
    points = {f"{int(h)}x{int(w)}": float(m) for h, w, m in zip(rows["height"], rows["width"], ms)}
    res.measured.update(points_ms=points, min_exponent=lo, max_exponent=hi)
    if len(set(px)) < 2:
        res.skipped = True
        res.message = f"{g['model']}: ok rows at {len(set(px))} pixel count(s) in the run, need >= 2"
        return res
    slope = float(np.polyfit(np.log(px), np.log(ms), 1)[0])
    res.measured["exponent"] = slope
    ok = (hi is None or slope <= hi) and (lo is None or slope >= lo)
    res.passed = bool(ok)
    bound = " and ".join(s for s in ((f">= {lo:g}" if lo is not None else ""),
                                     (f"<= {hi:g}" if hi is not None else "")) if s)
    pts = ", ".join(f"{k} {v:.4g} ms" for k, v in points.items())
    res.message = f"{g['model']}: latency ~ pixels^{slope:.2f} (required {bound}) from {pts}"
    return res


def _setting(row: pd.Series, key: str) -> str:
    return _device_type(row["device"]) if key == "devices" else str(row[key])


def _outside_measured(g: dict, row: pd.Series) -> str:
    """Why the group of `row` is outside the settings the gate's thresholds were measured for ("" when inside)."""
    m = g.get("measured_for") or {}
    off = [k for k, allowed in m.items() if _setting(row, k) not in {str(x) for x in allowed}]
    if not off:
        return ""
    name = {"devices": "device"}
    want = ", ".join(f"{name.get(k, k)} {'/'.join(map(str, m[k]))}" for k in off)
    return f"measured for {want}; this run has " + ", ".join(f"{name.get(k, k)} {_setting(row, k)}" for k in off)


def _used_rows(g: dict, sub: pd.DataFrame) -> pd.DataFrame:
    """The rows a gate's outcome rests on: both models' rows (any status) of a speedup, the fitted ok rows of a
    scaling exponent."""
    if g["kind"] == "speedup":
        return sub[sub["model"].isin([g["faster"], g["slower"]]) & (sub["height"] == g["height"])
                   & (sub["width"] == g["width"])]
    rows = sub[(sub["model"] == g["model"]) & (sub["status"] == "ok")]
    if g.get("resolutions"):
        rows = rows[rows["height"].isin(set(g["resolutions"])) & (rows["height"] == rows["width"])]
    return rows


def _evaluate(g: dict, sub: pd.DataFrame, label: str, allow_noisy: bool) -> GateResult:
    """One gate on one device setting: skipped outside its measured settings, not judged on noisy rows."""
    outside = _outside_measured(g, sub.iloc[0])
    if outside:
        return GateResult(g["name"], g["kind"], False, {}, outside, skipped=True, group=label)
    res = _speedup(g, sub, label) if g["kind"] == "speedup" else _scaling(g, sub, label)
    used = _used_rows(g, sub)
    noise = "; ".join(f"{r['model']} {r['height']}x{r['width']} ({why})" for _, r in used.iterrows()
                      if (why := noisy_reason(r)) is not None)
    if not noise or res.skipped:
        return res
    res.noisy = True
    if allow_noisy:
        res.message += f" [judged on noisy rows (--allow-noisy): {noise}]"
    else:
        res.passed, res.skipped = False, True
        res.message = f"not judged, measured on a busy machine: {noise} (--allow-noisy judges it)"
    return res


def evaluate_gates(run: Run, gates: list[dict] | None = None, allow_noisy: bool = False) -> list[GateResult]:
    """Evaluate every gate on every matching group of rows of one run (see the module doc); `allow_noisy` judges
    gates whose rows were flagged noisy instead of skipping them."""
    gates = load_gates() if gates is None else validate_gates(gates)
    df = run.results
    out: list[GateResult] = []
    for g in gates:
        groups = list(_groups(_rows_for(df, g)))
        if not groups:
            devs = f" on {'/'.join(g['devices'])}" if g.get("devices") else ""
            out.append(GateResult(g["name"], g["kind"], False, {}, f"no rows of this run match the gate{devs}",
                                  skipped=True))
            continue
        out += [_evaluate(g, sub, label, allow_noisy) for label, sub in groups]
    return out


def format_results(results: list[GateResult]) -> str:
    lines = []
    for r in results:
        grp = f" [{r.group}]" if r.group else ""
        lines.append(f"{r.outcome}  {r.name}{grp}: {r.message}")
    n = {o: sum(r.outcome == o for r in results) for o in ("PASS", "FAIL", "SKIP", "SKIP-NOISY")}
    line = f"gates: {n['PASS']} passed, {n['FAIL']} failed, {n['SKIP']} skipped"
    if n["SKIP-NOISY"]:
        line += f", {n['SKIP-NOISY']} not judged: measured on a busy machine (rerun quietly or pass --allow-noisy)"
    if any(r.noisy and not r.skipped for r in results):
        line += f", {sum(r.noisy and not r.skipped for r in results)} judged on noisy rows (--allow-noisy)"
    lines.append(line)
    return "\n".join(lines)


def to_markdown(results: list[GateResult]) -> str:
    rows = [[r.name, r.group, r.outcome, r.message] for r in results]
    return "### Latency gates\n\n" + markdown_table(["gate", "group", "outcome", "measured"], rows) + "\n"


def to_json(results: list[GateResult]) -> str:
    """The results as a JSON list, one object per gate and group with its outcome."""
    return json.dumps(_json_safe([asdict(r) | {"outcome": r.outcome} for r in results]), indent=2)


def _json_safe(o: Any) -> Any:
    """NaN -> null and inf -> "inf": JSON has neither, and a speedup is inf when the slower model never finished."""
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    return o


# ---------------------------------------------------------------- the check matrix

def matrix_for(gates: list[dict], device_types: list[str]) -> list[tuple[str, int, int]]:
    """(model, height, width) triples the gates need, for the given device types, in a stable order."""
    out: list[tuple[str, int, int]] = []
    for g in gates:
        if g.get("devices") and not set(g["devices"]) & set(device_types):
            continue
        if g["kind"] == "speedup":
            out += [(g["faster"], g["height"], g["width"]), (g["slower"], g["height"], g["width"])]
        else:
            out += [(g["model"], r, r) for r in g.get("resolutions", [512, 1024, 2048])]
    return list(dict.fromkeys(out))
