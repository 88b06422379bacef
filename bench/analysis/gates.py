"""Gates: relative invariants measured within ONE run, so they hold on any machine without a baseline.

    python run_bench.py check                      # run the small matrix the gates need, then evaluate them
    python run_bench.py check --run results/RUN    # evaluate the gates on an existing run (no measuring)

This module evaluates; it never measures (analysis does not reach back up the pipeline into the runner).
`matrix_for` says which cases the gates need, and the command layer, which owns the run lifecycle, measures them
and hands `cmd_check` its `measure` callable.

The gates live in `bench/analysis/gates.toml` (or `--gates FILE`), one `[[gate]]` table each:

    [[gate]]
    name = "msla-vs-softmax-1024"
    kind = "speedup"              # median(slower) / median(faster) >= min_ratio at one resolution
    faster = "block:msla"
    slower = "block:softmax"
    height = 1024
    width = 1024
    min_ratio = 10.0

    [[gate]]
    name = "msla-scaling"
    kind = "scaling_exponent"     # slope of log(median latency) vs log(pixels), least squares
    model = "block:msla"
    resolutions = [512, 1024, 2048]   # square sides the check matrix measures and the fit uses
    max_exponent = 1.6                # and/or min_exponent

Optional on every gate: `devices = ["cpu"]` (device types it applies to; default all), `backend`, `precision`,
`batch`, `threads` (restrict the rows), `description`. A gate is evaluated separately for every device setting
(`bench.cases.SETTING`: device_name, backend, precision, batch, threads, channels_last, folded); each group gives
one GateResult.

Outcomes. speedup: pass when the ratio >= min_ratio; when the slower model ran out of memory or time while the
faster one was ok, pass (the claim holds a fortiori); when the faster model is not ok, fail; when a row is absent
or skipped/unsupported, the gate is skipped. scaling_exponent: needs ok rows at >= 2 pixel counts, else skipped.
`cmd_check` exits 0 when no evaluated gate failed, 1 when one did, 2 on bad input or when no gate could be
evaluated at all (e.g. the run holds none of the gates' cases).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import pandas as pd

from bench.cases import SETTING, setting_label
from bench.results.store import Run, RunFormatError, load_run
from bench.text import markdown_table

DEFAULT_GATES = Path(__file__).with_name("gates.toml")
KINDS = ("speedup", "scaling_exponent")
GROUP = SETTING
FILTERS = ("backend", "precision", "batch", "threads")
NOT_FINISHED = ("oom", "timeout")


class GateConfigError(ValueError):
    """A gates file that cannot be read or has an invalid gate; one-line message."""


@dataclass
class GateResult:
    name: str
    kind: str
    passed: bool
    measured: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    skipped: bool = False
    group: str = ""

    @property
    def outcome(self) -> str:
        return "SKIP" if self.skipped else ("PASS" if self.passed else "FAIL")


# ---------------------------------------------------------------- config

_REQUIRED = {"speedup": ("faster", "slower", "height", "width", "min_ratio"), "scaling_exponent": ("model",)}


def validate_gates(gates: list[dict], source: str = "gates") -> list[dict]:
    names = set()
    for i, g in enumerate(gates):
        where = f"{source}: gate #{i + 1}"
        if not isinstance(g, dict):
            raise GateConfigError(f"{where}: not a table")
        name = g.get("name")
        if not isinstance(name, str) or not name:
            raise GateConfigError(f"{where}: missing name")
        where = f"{source}: gate {name!r}"
        if name in names:
            raise GateConfigError(f"{where}: duplicate name")
        names.add(name)
        kind = g.get("kind")
        if kind not in KINDS:
            raise GateConfigError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
        missing = [k for k in _REQUIRED[kind] if k not in g]
        if missing:
            raise GateConfigError(f"{where}: missing {', '.join(missing)}")
        if kind == "scaling_exponent" and "max_exponent" not in g and "min_exponent" not in g:
            raise GateConfigError(f"{where}: needs max_exponent and/or min_exponent")
        for k in ("min_ratio", "max_exponent", "min_exponent"):
            if k in g and not isinstance(g[k], (int, float)):
                raise GateConfigError(f"{where}: {k} must be a number")
        for k in ("height", "width"):
            if k in g and (not isinstance(g[k], int) or g[k] <= 0):
                raise GateConfigError(f"{where}: {k} must be a positive integer")
        res = g.get("resolutions")
        if res is not None and (not isinstance(res, list) or not res or
                                not all(isinstance(r, int) and r > 0 for r in res)):
            raise GateConfigError(f"{where}: resolutions must be a list of positive integers (square sides)")
        devs = g.get("devices")
        if devs is not None and (not isinstance(devs, list) or not all(d in ("cpu", "cuda") for d in devs)):
            raise GateConfigError(f"{where}: devices must be a list of 'cpu'/'cuda'")
    return gates


def load_gates(path: str | Path | None = None) -> list[dict]:
    """Parse and validate a gates file (tomllib). Raises GateConfigError."""
    p = Path(path) if path else DEFAULT_GATES
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise GateConfigError(f"{p}: no such gates file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GateConfigError(f"{p}: unreadable ({e})".splitlines()[0]) from None
    except tomllib.TOMLDecodeError as e:
        raise GateConfigError(f"{p}: invalid TOML ({e})".splitlines()[0]) from None
    gates = data.get("gate", [])
    if not isinstance(gates, list) or not gates:
        raise GateConfigError(f"{p}: no [[gate]] tables")
    return validate_gates(gates, str(p))


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
    cons = float(slow["latency_ms_ci_low"]) / float(fast["latency_ms_ci_high"]) \
        if not pd.isna(slow["latency_ms_ci_low"]) and not pd.isna(fast["latency_ms_ci_high"]) else math.nan
    res.measured.update(slower_ms=s_ms, ratio=ratio, ratio_conservative=cons)
    res.passed = bool(ratio >= k)
    res.message = (f"{g['slower']} / {g['faster']} at {h}x{w} = {s_ms:.4g} / {f_ms:.4g} ms = {ratio:.2f}x "
                   f"({'>=' if res.passed else '<'} required {k:g}x)")
    return res


def _scaling(g: dict, sub: pd.DataFrame, label: str) -> GateResult:
    res = GateResult(g["name"], "scaling_exponent", False, group=label)
    lo, hi = g.get("min_exponent"), g.get("max_exponent")
    rows = sub[(sub["model"] == g["model"]) & (sub["status"] == "ok")]
    if g.get("resolutions"):
        sides = set(g["resolutions"])
        rows = rows[rows["height"].isin(sides) & (rows["height"] == rows["width"])]
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


def evaluate_gates(run: Run, gates: list[dict] | None = None) -> list[GateResult]:
    """Evaluate every gate on every matching group of rows of one run (see the module doc)."""
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
        for label, sub in groups:
            out.append(_speedup(g, sub, label) if g["kind"] == "speedup" else _scaling(g, sub, label))
    return out


def format_results(results: list[GateResult]) -> str:
    lines = []
    for r in results:
        grp = f" [{r.group}]" if r.group else ""
        lines.append(f"{r.outcome}  {r.name}{grp}: {r.message}")
    n_fail = sum(1 for r in results if not r.passed and not r.skipped)
    n_pass = sum(1 for r in results if r.passed and not r.skipped)
    n_skip = sum(1 for r in results if r.skipped)
    lines.append(f"gates: {n_pass} passed, {n_fail} failed, {n_skip} skipped")
    return "\n".join(lines)


def to_markdown(results: list[GateResult]) -> str:
    rows = [[r.name, r.group, r.outcome, r.message] for r in results]
    return "### Latency gates\n\n" + markdown_table(["gate", "group", "outcome", "measured"], rows) + "\n"


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


# ---------------------------------------------------------------- CLI glue

def add_check_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--run", metavar="RUN_DIR", help="evaluate the gates on this existing run (no measuring)")
    parser.add_argument("--gates", metavar="FILE", default=None, help=f"gates file (default {DEFAULT_GATES.name})")
    parser.add_argument("--devices", default="cpu", help="devices to measure on, comma list (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the check matrix (default 1)")
    parser.add_argument("--precision", default="fp32", help="precision of the check matrix (default fp32)")
    parser.add_argument("--backend", default="eager", help="backend of the check matrix (default eager)")
    parser.add_argument("--min-time", type=float, default=0.5, help="min timed seconds per case (default 0.5)")
    parser.add_argument("--max-time", type=float, default=3.0, help="max timed seconds per case (default 3)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-case timeout in seconds (default 300)")
    parser.add_argument("--out", default="results", help="where the check run folder goes (default results)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the gate results as Markdown")
    parser.add_argument("--json", metavar="FILE", help="also write the gate results as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every case of the check matrix")
    return parser


class Measure(Protocol):
    """Measures the cases `matrix_for(gates, ...)` names into a new run folder under out_dir and returns that
    folder. The command layer provides it: it owns the run lifecycle and the runner, which analysis never imports."""

    def __call__(self, gates: list[dict], devices: list[str], out_dir: Path, *, threads: int, precision: str,
                 backend: str, min_time_s: float, max_time_s: float, timeout_s: float,
                 log: Callable[[str], None] | None) -> Path: ...


def _measured_run(args: argparse.Namespace, gates: list[dict], measure: Measure | None) -> Path:
    """The run to evaluate: --run, else a new run of the cases the gates need, measured by `measure`."""
    if args.run:
        return Path(args.run)
    if measure is None:
        raise GateConfigError("no run to evaluate: pass --run RUN_DIR (measuring is the check command's job)")
    devices = [d.strip() for d in str(args.devices).split(",") if d.strip()]
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if getattr(args, "verbose", False) else None
    run_dir = measure(gates, devices, Path(args.out), threads=args.threads, precision=args.precision,
                      backend=args.backend, min_time_s=args.min_time, max_time_s=args.max_time,
                      timeout_s=args.timeout, log=log)
    print(f"check run: {run_dir}")
    return run_dir


def _write_outputs(args: argparse.Namespace, results: list[GateResult]) -> None:
    if args.markdown:
        Path(args.markdown).write_text(to_markdown(results))
    if args.json:
        rows = [asdict(r) | {"outcome": r.outcome} for r in results]
        Path(args.json).write_text(json.dumps(_json_safe(rows), indent=2))


def cmd_check(args: argparse.Namespace, measure: Measure | None = None) -> int:
    """Exit 0: all evaluated gates passed; 1: a gate failed; 2: bad input or no gate evaluated.

    `measure` is injected by the command layer (it owns the run lifecycle and the runner); without it only
    `--run` works."""
    err = sys.stderr
    try:
        gates = load_gates(args.gates)
        results = evaluate_gates(load_run(_measured_run(args, gates, measure)), gates)
    except (GateConfigError, RunFormatError, ValueError, OSError) as e:
        print(f"check: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=err)
        return 2
    print(format_results(results))
    try:
        _write_outputs(args, results)
    except OSError as e:
        print(f"check: error: cannot write output: {str(e).splitlines()[0]}", file=err)
        return 2
    if all(r.skipped for r in results):
        print("check: error: no gate could be evaluated on this run (see SKIP lines)", file=err)
        return 2
    return 1 if any(not r.passed and not r.skipped for r in results) else 0
