"""GPU self-check: run the CUDA paths once, in a few minutes, and print a compact table.

    python -m tools.gpu_selfcheck [--quick] [--res 512,1024,2048] [--budget-s 300] [--out results.csv]

What it runs, in this one process through the engine's own case function (bench.measure.child.run_case: build,
reference, prepare, CUDA-event timing, CUDA memory, numerics against eager fp32, NVML energy):
- the four variants (evit-b1:msla, :softmax, :relu-linear, :large-kernel) at each resolution, eager fp16;
- at the middle resolution, msla and softmax with eager fp32 / tf32 / bf16, compile fp16, cudagraphs fp16;
- onnxruntime and tensorrt fp16 once each (an `unsupported` row with its reason where not installed: e.g.
  torch-tensorrt cannot be carried to the lent GPU machine).
Then prints GPU metadata (bench.env), NVML energy availability, and one line per case: status, median ms,
peak CUDA memory, rel_err / numerics_ok, build_s, J/image, reason; msla and softmax eager fp16 at the middle
resolution also get the profiled pass (bench.profiling on CUDA: kernel time per op kind), one line each. Cases stop being started after --budget-s.
Without CUDA it prints why and exits 0 without running anything.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import tempfile
import time
from dataclasses import replace

VARIANTS = ("evit-b1:msla", "evit-b1:softmax", "evit-b1:relu-linear", "evit-b1:large-kernel")


def plan(resolutions: list[int], quick: bool) -> list[tuple[str, int, str, str]]:
    """(model, resolution, backend, precision) in run order."""
    mid = resolutions[len(resolutions) // 2]
    cases = [(m, r, "eager", "fp16") for r in resolutions for m in VARIANTS]
    pair = ("evit-b1:msla",) if quick else ("evit-b1:msla", "evit-b1:softmax")
    for m in pair:
        for backend, prec in (("eager", "fp32"), ("eager", "tf32"), ("eager", "bf16"), ("cudagraphs", "fp16"),
                              ("compile", "fp16")):
            cases.append((m, mid, backend, prec))
    cases.append(("evit-b1:msla", mid, "onnxruntime", "fp16"))
    cases.append(("evit-b1:msla", mid, "tensorrt", "fp16"))
    cases.append(("evit-b1:msla", mid, "tensorrt", "int8"))  # the Jetson deployment precision
    return cases


def _fmt(v, spec: str) -> str:
    try:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


HEAD = ("model", "res", "backend", "prec", "status", "median_ms", "peak_MB", "rel_err", "ok", "build_s", "J/img",
        "W", "reason")


def _cells(row: dict) -> list[str]:
    ok_s = {True: "yes", False: "NO"}.get(row.get("numerics_ok"), "-")
    return [row["model"], str(row["height"]), row["backend"], row["precision"], row["status"],
            _fmt(row.get("latency_ms_median"), ".2f"), _fmt(row.get("peak_mem_mb"), ".0f"),
            _fmt(row.get("rel_err"), ".1e"), ok_s, _fmt(row.get("build_s"), ".1f"),
            _fmt(row.get("energy_j_per_image"), ".3f"), _fmt(row.get("mean_power_w"), ".0f"),
            (row.get("reason") or "")[:110]]


def _print_device(dev: str) -> dict:
    from bench import backends, env
    from bench.measure import energy

    g = env.gpu_info(dev)
    print("GPU:", json.dumps({k: g.get(k) for k in (
        "name", "capability", "sm_count", "total_memory_mb", "driver_version", "cuda_driver_version", "cuda_runtime",
        "cudnn", "torch", "sm_clock_mhz", "sm_clock_max_mhz", "mem_clock_max_mhz", "power_limit_w", "pstate",
        "persistence_mode", "mig_mode", "nvml_match", "nvml_error") if k in g}))
    ok, reason = energy.available(dev)
    print("NVML energy:", "available" if ok else reason)
    print("torch-tensorrt:", backends.tensorrt_version() or "not installed",
          "| onnxruntime CUDA:", backends.unsupported_reason("onnxruntime", "cuda", "fp16") or "available")
    sys.stdout.flush()
    return g


def _cases(dev: str, dev_name: str, resolutions: list[int], quick: bool, min_time: float, max_time: float):
    """The plan as engine cases (bench.cases.expand: the one place a case is made)."""
    from bench.cases import expand

    out = []
    for model, res, backend, prec in plan(resolutions, quick):
        case = expand([model], [(res, res)], [(dev, dev_name)], [backend], {"cuda": [prec]}, [1], [0],
                      min_time_s=min_time, max_time_s=max_time)[0]
        extra = {"workdir": tempfile.gettempdir(), "min_samples": 10}
        if backend == "eager" and prec == "fp16" and res == resolutions[len(resolutions) // 2] and \
                model in ("evit-b1:msla", "evit-b1:softmax"):  # the CUDA profiled pass (kernels -> aten ops)
            extra.update(profile=True, trace_path=f"{tempfile.gettempdir()}/selfcheck-{model.replace(':', '-')}"
                                                  f"-{res}.json.gz")
        out.append(replace(case, extra=extra))
    return out


def _profile_line(result: dict) -> str | None:
    """One line per profiled case: source, profiled vs timed ms, the three op kinds with most device time."""
    kinds = [r for r in result.get("profile") or [] if r.get("breakdown") == "op_kind"]
    row = result["row"]
    if not kinds:
        return f"  profile: none ({row.get('profile_reason')})" if row.get("profile_reason") else None
    top = sorted(kinds, key=lambda r: -(r.get("time_ms") or 0))[:3]
    return (f"  profile ({row.get('profile_source')}): {row.get('profiled_ms', float('nan')):.2f} ms profiled vs "
            f"{row.get('latency_ms_median', float('nan')):.2f} ms timed; "
            + ", ".join(f"{r['op_kind']} {r['time_share']:.0%} of time / {r['mac_share']:.0%} of MACs" for r in top))


def _run_all(cases, budget_s: float) -> list[dict]:
    """Each case through the engine's child sequence, one line printed as it finishes; stops after the budget."""
    import torch

    from bench.measure.child import run_case
    from bench.text import text_table

    rows: list[dict] = []
    t_start = time.perf_counter()
    print(text_table(HEAD, [], right={1, 5, 6, 7, 9, 10, 11}), flush=True)
    for case in cases:
        if time.perf_counter() - t_start > budget_s:
            print(f"(budget of {budget_s:.0f} s spent: {len(cases) - len(rows)} cases not started)")
            break
        t0 = time.perf_counter()
        result = run_case(case)
        row = {**case.as_row(), **result["row"], "wall_s": time.perf_counter() - t0}
        rows.append(row)
        print("  ".join(_cells(row)), flush=True)
        if case.extra.get("profile") and (line := _profile_line(result)):
            print(line, flush=True)
        gc.collect()
        torch.cuda.empty_cache()
    print()
    print(text_table(HEAD, [_cells(r) for r in rows], right={1, 5, 6, 7, 9, 10, 11}))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.gpu_selfcheck", description=__doc__.splitlines()[0])
    ap.add_argument("--res", default="512,1024,2048", help="square resolutions (default 512,1024,2048)")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--quick", action="store_true", help="fewer cases (msla only at the middle resolution)")
    ap.add_argument("--budget-s", type=float, default=300.0, help="start no case after this many seconds")
    ap.add_argument("--min-time", type=float, default=0.3, help="timing window per case, seconds (min)")
    ap.add_argument("--max-time", type=float, default=1.0, help="timing window per case, seconds (cap)")
    ap.add_argument("--out", default="", help="also write the rows as CSV here")
    args = ap.parse_args(argv)

    import torch

    from bench import env

    if not torch.cuda.is_available():
        print(f"gpu_selfcheck: {env.gpu_info('cuda')['reason']}; nothing to check on this machine.")
        return 0
    try:
        resolutions = [int(r) for r in args.res.split(",") if r.strip()]
    except ValueError:
        print(f"gpu_selfcheck: --res takes comma-separated integers, got {args.res!r}", file=sys.stderr)
        return 2
    g = _print_device(args.device)
    print(f"\n{g.get('name')}  ({args.device})")
    t0 = time.perf_counter()
    cases = _cases(args.device, str(g.get("name")), resolutions, args.quick, args.min_time, args.max_time)
    rows = _run_all(cases, args.budget_s)
    n_ok = sum(r["status"] == "ok" for r in rows)
    bad = [r for r in rows if r["status"] == "ok" and r.get("numerics_ok") is False]
    print(f"\n{n_ok}/{len(rows)} ok, {len(bad)} numerics mismatches, {time.perf_counter() - t0:.0f} s")
    if args.out:
        import pandas as pd
        pd.DataFrame(rows).to_csv(args.out, index=False)
        print("rows written to", args.out)
    errors = [r for r in rows if r["status"] == "error"]
    return 1 if errors or bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
