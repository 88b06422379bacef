"""What Ray costs a benchmark, measured on this machine (the figures of docs/FLEET.md).

1. Overhead per case, side by side: the same tiny matrix through the local runner (bench.api.measure) and
   through a one-machine Ray (bench.fleet, `--cluster local`), alternated local, ray, ray, local. Per case:
   the child's overhead (its wall time minus its timing, bench.runner's per_case_overhead_s), the row's wall
   time, and under Ray the driver's wait beyond the node task's own time (fleet.ray_s).
2. The CPU an idle one-machine Ray uses (its processes' CPU seconds over 20 s, dashboard off).
3. A/A latency with and without Ray present: the same-process A/B (bench.ab, A = B = one block) run with no Ray,
   with an idle one-machine Ray (dashboard off, as `run_bench.py node` starts it) and, optionally, with Ray's
   dashboard on; conditions alternated none, ray, ray, none. The A/A ratio says whether the A/B check stays clean
   with Ray beside it; A's median across conditions says what Ray's presence does to the latency itself.

    .venv/bin/python tools/fleet_overhead.py [--json out.json] [--dashboard]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MATRIX = dict(models="block:msla,block:relu-linear", level="block", res="64,128", min_time=0.3, max_time=1.0,
              threads=1, calibrate=False)
AA_CASE = dict(a="block:msla", b="block:msla", res=256, threads=1, max_time=40.0, checkpoints="8,16",
               process_time=1.0)


def _ray_local(dashboard: bool = False) -> None:
    import ray

    from bench.fleet.cluster import connect

    if dashboard:  # Ray's default for a head node: the dashboard and its agent running
        from bench.fleet.cluster import host_label, local_resources
        from bench.fleet.records import HOST_LABEL

        ray.init(num_cpus=2, num_gpus=0, resources=local_resources(), labels={HOST_LABEL: host_label()},
                 include_dashboard=True, log_to_driver=False)
    else:
        connect("local")


def _stop_ray() -> None:
    from bench.fleet.cluster import disconnect

    disconnect()
    time.sleep(2.0)  # let the raylet and agents exit before the next condition


def _one_run(out: Path, on_ray: bool) -> dict[str, Any]:
    """The matrix once, locally or on the one-machine Ray; per-case figures from the stored run."""
    from bench import api
    from bench.plan import make_plan

    if on_ray:
        from bench.fleet.inventory import list_nodes
        from bench.fleet.dispatch import measure_on_cluster
        from bench.fleet.placement import cluster_plan

        _ray_local()
        plan = cluster_plan(list_nodes(), "local", **MATRIX)
    else:
        plan = make_plan(**MATRIX)
    state = api.start(plan, out)
    t0 = time.perf_counter()
    try:
        (measure_on_cluster(state, plan, "local") if on_ray else api.measure(state, plan))
    finally:
        state.close()
        if on_ray:
            _stop_ray()
    wall = time.perf_counter() - t0
    run = api.load_run(state.run_dir)
    fleet = run.meta.get("fleet") or {}
    return {"mode": "ray" if on_ray else "local", "cases": len(run.results), "wall_s": round(wall, 2),
            "wall_per_case_s": round(wall / len(run.results), 3),
            "row_wall_s_median": round(float(run.results["wall_s"].median()), 3),
            "child_overhead_s_median": (run.meta.get("per_case_overhead_s") or {}).get("median"),
            "ray_s_median": fleet.get("ray_s_median"),
            "latency_ms": dict(zip(run.results["model"] + "@" + run.results["height"].astype(str),
                                   run.results["latency_ms_median"].round(3)))}


def _aa(out: Path, condition: str) -> dict[str, Any]:
    from bench.ab import run_ab

    if condition != "none":
        _ray_local(dashboard=condition == "ray+dashboard")
        time.sleep(3.0)  # Ray's start-up work is over: what is measured is its idle presence
    try:
        frame, _ = run_ab(out=out, **AA_CASE)
    finally:
        if condition != "none":
            _stop_ray()
    r = frame.iloc[0]
    return {"condition": condition, "verdict": r["verdict"], "ratio": round(float(r["ratio"]), 4),
            "ci": [round(float(r["ci_low"]), 4), round(float(r["ci_high"]), 4)], "processes": int(r["processes"]),
            "a_median_ms": round(float(r["a_median_ms"]), 3)}


def _idle_cpu(seconds: float = 20.0) -> dict[str, Any]:
    """Cores that an idle one-machine Ray (dashboard off) uses: CPU seconds of every process of this session's
    Ray (its descendants: gcs_server, raylet, agents, idle workers) over `seconds`, after a settling pause."""
    import psutil

    _ray_local()
    try:
        time.sleep(5.0)
        me = psutil.Process()

        def cpu() -> float:
            total = 0.0
            for p in me.children(recursive=True):
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
            return total
        c0, t0 = cpu(), time.perf_counter()
        time.sleep(seconds)
        cores = (cpu() - c0) / (time.perf_counter() - t0)
        return {"idle_ray_cores": round(cores, 4), "processes": len(me.children(recursive=True)),
                "seconds": seconds}
    finally:
        _stop_ray()


def _print_run(r: dict[str, Any]) -> None:
    print(f"{r['mode']:5s} {r['cases']} cases: {r['wall_per_case_s']:.3f} s/case, row wall median "
          f"{r['row_wall_s_median']:.3f} s, child overhead {r['child_overhead_s_median']}, "
          f"ray_s {r['ray_s_median']}, latency {r['latency_ms']}", flush=True)


def _print_aa(x: dict[str, Any]) -> None:
    print(f"A/A {x['condition']:14s} {x['verdict']:10s} ratio {x['ratio']} CI {x['ci']} "
          f"({x['processes']} processes), A median {x['a_median_ms']} ms", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--dashboard", action="store_true", help="also the A/A with Ray's dashboard on (needs "
                   "ray[default])")
    p.add_argument("--idle-only", action="store_true", help="only the idle Ray's CPU use")
    a = p.parse_args(argv)
    idle = _idle_cpu()
    print(f"idle Ray: {idle['idle_ray_cores']} cores over {idle['seconds']} s ({idle['processes']} processes)")
    if a.idle_only:
        return 0
    out = Path(tempfile.mkdtemp(prefix="fleet-overhead-"))
    runs = []
    for m in (False, True, True, False):
        runs.append(_one_run(out, on_ray=m))
        _print_run(runs[-1])
    aa = []
    for c in ["none", "ray", "ray", "none"] + (["ray+dashboard", "none"] if a.dashboard else []):
        aa.append(_aa(out, c))
        _print_aa(aa[-1])
    by = {m: [r for r in runs if r["mode"] == m] for m in ("local", "ray")}
    summary = {m: {k: statistics.median(r[k] for r in rs if r[k] is not None) for k in
                   ("wall_per_case_s", "row_wall_s_median", "child_overhead_s_median")} for m, rs in by.items()}
    summary["ray"]["ray_s_median"] = statistics.median(r["ray_s_median"] for r in by["ray"])
    doc = {"idle": idle, "matrix": MATRIX, "aa_case": AA_CASE, "runs": runs, "overhead_summary": summary, "aa": aa}
    print(json.dumps(summary))
    if a.json:
        Path(a.json).write_text(json.dumps(doc, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
