"""Benchmark (not a test): the token mixers on the runtimes that ship, side by side in ONE run of the engine.

eager, torch.compile, onnxruntime, ExecuTorch (XNNPACK) and OpenVINO, in fp32 and int8, on 1 thread (the mobile
proxy) and 2 threads: per case the median latency, the share the delegate ran, int8's MAC share and rel_err
against eager fp32, then the fastest mixer per runtime and precision, and the best fraction of the measured
matmul peak that evit-b1:msla reaches at the largest resolution on any runtime. Every case is one row of one
`bench.run` (the engine's own design: the mixers of one setting interleaved in the same processes where
the backend allows, the health guard on), so the figures are measured side by side.

    python -m tools.bench_runtimes                                  # the issue's matrix (hours on 2 cores)
    python -m tools.bench_runtimes --models block:msla,block:softmax,block:relu-linear,block:large-kernel \\
        --res 512 --threads 1,2 --max-time 2
"""
from __future__ import annotations

import argparse
import math
import sys

import pandas as pd

import bench

MODELS = ("block:msla,block:softmax,block:relu-linear,block:large-kernel,"
          "evit-b1:msla,evit-b1:softmax,evit-b1:relu-linear,evit-b1:large-kernel")
BACKENDS = "eager,compile,onnxruntime,executorch,openvino"


def _fmt(v: object, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "-"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def case_table(df: pd.DataFrame) -> str:
    """One line per case: what ran, how fast, what ran where, how far from fp32."""
    head = (f"{'model':22s} {'res':>5s} {'thr':>3s} {'backend':12s} {'prec':5s} {'status':11s} {'median_ms':>10s} "
            f"{'deleg_macs':>10s} {'int8_macs':>9s} {'rel_err':>8s} {'ok':>3s} {'%peak':>6s}  first_bad_block / reason")
    lines = [head, "-" * len(head)]
    for _, r in df.sort_values(["level", "model", "height", "threads", "backend", "precision"]).iterrows():
        tail = r["first_bad_block"] if r["status"] == "ok" else r["reason"]
        lines.append(
            f"{r['model']:22s} {r['height']:>5d} {r['threads']:>3d} {r['backend']:12s} {r['precision']:5s} "
            f"{r['status']:11s} {_fmt(r['latency_ms_median'], '10.2f')} "
            f"{_fmt(r['delegated_macs_share'], '10.1%')} {_fmt(r['int8_macs_share'], '9.1%')} "
            f"{_fmt(r['rel_err'], '8.1e')} {_fmt(r['numerics_ok'], '>3')} {_fmt(r['frac_of_peak'], '6.1%')}  "
            f"{'' if pd.isna(tail) else str(tail)[:90]}")
    return "\n".join(lines)


def fastest_mixers(df: pd.DataFrame) -> pd.DataFrame:
    """Per (level, size, resolution, threads, runtime, precision): the fastest mixer and its margin over the
    runner-up (ratio of medians; cases in separate processes, so read margins under ~10% as ties)."""
    ok = df[df["status"] == "ok"].copy()
    ok["base"] = ok["model"].str.split(":").str[0]
    rows = []
    keys = ["level", "base", "height", "threads", "backend", "precision"]
    for key, g in ok.groupby(keys, sort=True):
        g = g.sort_values("latency_ms_median")
        second = g["latency_ms_median"].iloc[1] if len(g) > 1 else math.nan
        rows.append(dict(zip(keys, key), fastest=g["variant"].iloc[0], median_ms=g["latency_ms_median"].iloc[0],
                         runner_up=g["variant"].iloc[1] if len(g) > 1 else "",
                         margin=second / g["latency_ms_median"].iloc[0] - 1, mixers=len(g)))
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--res", default="512,1024,2048")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--backends", default=BACKENDS)
    ap.add_argument("--precision", default="fp32,int8")
    ap.add_argument("--max-time", type=float, default=3.0, help="timing budget per case and process (s)")
    ap.add_argument("--level", default="both", choices=("both", "model", "block"),
                    help="model: whole models only; block: their blocks only; both (default)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds per decision group (the mixers of one setting; default: the engine's)")
    ap.add_argument("--timeout", type=float, default=900.0, help="per case (s): builds at 2048 take minutes")
    ap.add_argument("--out", default="results/runtimes")
    a = ap.parse_args(argv)
    run = bench.run(a.models, res=a.res, threads=a.threads, backends=a.backends, precision=a.precision,
                    max_time=a.max_time, budget=a.budget, level=a.level, timeout=a.timeout, out=a.out, report=True)
    df = run.results
    print(f"run folder: {run.path}\n")
    print(case_table(df))
    fm = fastest_mixers(df)
    if not fm.empty:
        print("\nfastest mixer per runtime and precision (ratio of medians to the runner-up):")
        print(fm.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    msla = df[(df["model"] == "evit-b1:msla") & (df["status"] == "ok")]
    if not msla.empty:
        top = msla[msla["height"] == msla["height"].max()].sort_values("frac_of_peak", ascending=False).iloc[0]
        print(f"\nbest fraction of the measured peak, evit-b1:msla at {top['height']}x{top['width']}: "
              f"{top['frac_of_peak']:.1%} ({top['backend']} {top['precision']}, {top['threads']} threads, "
              f"{top['gmacs_per_s']:.1f} GMAC/s)")
    noisy = int(df["noisy"].fillna(False).sum())
    print(f"\ncases flagged noisy by the health guard: {noisy} of {len(df)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
