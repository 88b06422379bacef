"""Benchmarks of the engine itself (not tests): the figures quoted in the docs.

    python -m tools.bench_engine            # full: the default CPU matrix twice (~20 min on a 2-core machine)
    python -m tools.bench_engine --quick    # smoke: a tiny matrix twice (about a minute)
    python -m tools.bench_engine --repeats 3  # the same with each case in 3 interleaved processes

Prints:
- A/A reproducibility: the same matrix run twice, back to back; per case the ratio of medians B/A; the fraction of
  cases within +-2% (target >= 90%) and the spread of the ratios.
- Timer overhead: the cost of timing an empty callable with bench.measure.timer (the floor of every CPU sample).
- Per-case overhead: the child's wall time not spent in the timer (fork + build + prepare + result write), per ok
  case (median, max), for the fork server (the default) and, for comparison, a fresh interpreter per case (spawn);
  and the fork server's one-off start (torch import).
- Wall time of the matrix run (full: `run_bench.py --devices cpu --res 512,1024,2048`, target < 10 min).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FULL = ["--devices", "cpu", "--res", "512,1024,2048"]
QUICK = ["--models", "block:msla,block:softmax", "--level", "block", "--res", "64,128", "--threads", "1",
         "--min-time", "0.2", "--max-time", "1"]


def _run(args: list[str], out: Path, env: dict | None = None) -> tuple[Path, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(REPO / "run_bench.py"), *args, "--out", str(out), "--no-report", "-q"],
                       cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode not in (0, 1):
        raise SystemExit(f"run failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("results: "))
    return Path(line.split(": ", 1)[1]), wall


def _aa(a_dir: Path, b_dir: Path) -> dict:
    import pandas as pd

    from bench.results.store import load_run

    a = load_run(a_dir).results
    b = load_run(b_dir).results
    a = a[a["status"] == "ok"].set_index("case_id")["latency_ms_median"]
    b = b[b["status"] == "ok"].set_index("case_id")["latency_ms_median"]
    common = a.index.intersection(b.index)
    ratio = (b[common] / a[common]).astype(float)
    within = float(((ratio - 1).abs() <= 0.02).mean()) if len(ratio) else float("nan")
    from bench.analysis.compare import compare_runs

    verdicts = compare_runs(load_run(a_dir), load_run(b_dir))["verdict"].value_counts().to_dict()
    cv = pd.concat([load_run(d).results["latency_ms_repeat_cv"] for d in (a_dir, b_dir)]).dropna()
    return {"cases": int(len(ratio)), "within_2pct": within, "ratio_min": float(ratio.min()),
            "ratio_median": float(ratio.median()), "ratio_max": float(ratio.max()),
            "compare_verdicts": {str(k): int(v) for k, v in verdicts.items()},
            "repeat_cv_median_pct": float(cv.median()) if len(cv) else None,
            "repeat_cv_max_pct": float(cv.max()) if len(cv) else None,
            "per_case": {k: round(float(v), 4) for k, v in ratio.items()}}


def _overhead(run_dir: Path) -> dict:
    meta = json.loads((run_dir / "meta.json").read_text())
    return {"per_case": meta.get("per_case_overhead_s"), "server_start_s": meta.get("worker_server_start_s"),
            "run_wall_s": meta.get("wall_s")}


def _spawn_overhead(quick: bool) -> dict:
    """Per-case overhead of the two isolation modes on one small case, measured directly."""
    from bench.cases import expand
    from bench.launch.isolation import ForkServer, Spawner
    from bench.launch.outcome import classify

    case = expand(["block:msla"], [(128, 128)], [("cpu", "cpu")], ["eager"], {"cpu": ["fp32"]}, [1], [1],
                  min_time_s=0.05, max_time_s=0.1, timeout_s=300)[0]
    case = replace(case, macs=1)  # as from the runner, which counts MACs in the parent: the child does not
    out: dict = {}
    with tempfile.TemporaryDirectory() as d:
        fs = ForkServer(Path(d))
        t0 = time.perf_counter()
        fs.start()
        out["fork_server_start_s"] = time.perf_counter() - t0
        vals = []
        for _ in range(3 if quick else 8):
            o = fs.run(case.to_spec(), 300)
            row, _ = classify(o, 300)
            if row["status"] == "ok":
                vals.append(o.wall_s - o.result.child.timing_s)
        fs.close()
        out["fork"] = {"median_s": sorted(vals)[len(vals) // 2], "max_s": max(vals), "n": len(vals)} if vals else None
        vals = []
        for _ in range(1 if quick else 3):
            o = Spawner(Path(d)).run(case.to_spec(), 300)
            if o.result and o.result.child.timing_s is not None:
                vals.append(o.wall_s - o.result.child.timing_s)
        out["spawn"] = {"median_s": sorted(vals)[len(vals) // 2], "n": len(vals)} if vals else None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_engine", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny matrix (smoke check of this script)")
    p.add_argument("--out", default=None, help="folder for the two runs (default: a temporary folder)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--repeats", type=int, default=1, help="run_bench.py --repeats for both runs (default 1)")
    a = p.parse_args(argv)
    args = (QUICK if a.quick else FULL) + (["--repeats", str(a.repeats)] if a.repeats > 1 else [])
    from bench.measure.timer import timer_overhead_ns

    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="densebench-engine-"))
    figures: dict = {"matrix": " ".join(args), "load_avg_before": list(os.getloadavg())}
    figures["timer_overhead_ns"] = timer_overhead_ns("cpu")
    a_dir, wall_a = _run(args, out)
    b_dir, wall_b = _run(args, out)
    figures["load_avg_after"] = list(os.getloadavg())
    figures["wall_s"] = {"A": wall_a, "B": wall_b}
    figures["aa"] = _aa(a_dir, b_dir)
    figures["overhead_in_runs"] = {"A": _overhead(a_dir), "B": _overhead(b_dir)}
    figures["overhead_direct"] = _spawn_overhead(a.quick)
    aa, od = figures["aa"], figures["overhead_direct"]
    print(f"engine benchmark ({'quick' if a.quick else 'full'}: run_bench.py {' '.join(args)})")
    print(f"  load average before/after: {figures['load_avg_before'][0]:.2f} / {figures['load_avg_after'][0]:.2f}")
    print(f"  wall time of the matrix: A {wall_a:.1f} s, B {wall_b:.1f} s (whole command, startup included)")
    print(f"  A/A: {aa['cases']} cases; within +-2%: {aa['within_2pct']:.0%}; ratio B/A min {aa['ratio_min']:.3f} "
          f"median {aa['ratio_median']:.3f} max {aa['ratio_max']:.3f}")
    print(f"  A/A through `compare` (threshold 5%, alpha 0.01): {aa['compare_verdicts']}")
    if aa["repeat_cv_median_pct"] is not None:
        print(f"  spread of process medians within a case (--repeats): CV median {aa['repeat_cv_median_pct']:.1f}%, "
              f"max {aa['repeat_cv_max_pct']:.1f}%")
    print(f"  timer overhead: {figures['timer_overhead_ns']:.0f} ns per sample (empty callable)")
    for k in ("A", "B"):
        o = figures["overhead_in_runs"][k]
        pc = o["per_case"] or {}
        print(f"  per-case overhead in run {k}: median {pc.get('median', float('nan')):.3f} s, max "
              f"{pc.get('max', float('nan')):.3f} s over {pc.get('n', 0)} cases; fork server start "
              f"{o['server_start_s']} s")
    if od.get("fork"):
        print(f"  per-case overhead, block:msla 128 direct: fork server median {od['fork']['median_s']:.3f} s "
              f"(max {od['fork']['max_s']:.3f}); server start {od['fork_server_start_s']:.2f} s once per run")
    if od.get("spawn"):
        print(f"  same case with a fresh interpreter (DENSEBENCH_ISOLATION=spawn): {od['spawn']['median_s']:.3f} s")
    print(f"  runs: {a_dir} {b_dir}")
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
