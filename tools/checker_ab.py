"""Benchmark of the same-process A/B check (`run_bench.py ab`) on this machine: its error rates (not a test).

    python -m tools.checker_ab                       # block:msla and evit-b0:msla at 256x256, the full counts
    python -m tools.checker_ab --quick               # smoke: one model, 2 compares of each kind
    python -m tools.checker_ab --counts aa=20,0.05=20,0.02=10,0.10=10 --models block:msla --res 256
    python -m tools.checker_ab --models evit-b1:msla --res 1024x2048 --threads 2 --counts aa=20,0.05=20

For every model, the kinds taking turns: A/A compares (B = a second, separately built instance of A) and compares
against B = A followed by an extra fp32 matmul into a preallocated buffer, a real slower code path sized by
measurement (the matmul calibration of tools.bench_checker) to cost 2%, 5% or 10% of the forward. Each compare is
one call of `bench.ab.run_ab` with its defaults (threshold 5%, alpha 0.01, checkpoints 8/16/32/64) at --threads
(default 1) and --max-time (default 120 s).
Reported per model and kind: verdicts, false alarms (A/A called slower or faster), detections (slower), the
achieved slowdown (median ratio B/A of the compares, measured side by side), the SD of the per-process log
ratios (the noise left inside a process), and the wall time per compare (median, max). Targets (issue 11): 0 false
alarms in 20 A/A, >= 95% of 5% slowdowns detected, each compare decided within 2 minutes.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_COUNTS = "aa=20,0.05=20,0.02=10,0.10=10"
QUICK_COUNTS = "aa=2,0.05=2,0.10=2"


def slowed_builder(model: str, n: int):
    """A zero-argument builder of `model` followed by an n x n matmul (tools.bench_checker's _Slowed)."""
    from models.registry import build_model
    from tools.bench_checker import _Slowed

    return lambda: _Slowed.wrap(build_model(model), n)


def _counts(text: str) -> dict[str, int]:
    out = {}
    for item in text.split(","):
        kind, _, n = item.partition("=")
        if kind != "aa":
            float(kind)  # a fraction: 0.05
        out[kind] = int(n)
    return out


def _builder_file(work: Path, sizes: dict[tuple[str, float], int]) -> Path:
    """A user model file whose builders are the slowed models (what `--b path.py:fn` imports in the children)."""
    lines = ["# written by tools.checker_ab: each builder is a model followed by a matmul sized by measurement",
             "from tools.checker_ab import slowed_builder", ""]
    for (model, frac), n in sizes.items():
        lines.append(f"{_fn(model, frac)} = slowed_builder({model!r}, {n})")
    path = work / "slowed_models.py"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fn(model: str, frac: float) -> str:
    return "build_" + "".join(c if c.isalnum() else "_" for c in model) + f"_{round(frac * 1000)}"


def _seconds(text: str) -> float:
    """--max-time, by run_ab's own check (bench.ab.matrix), before the calibration: one line and exit 2."""
    from bench.ab.matrix import _number
    from bench.plan import PlanError

    try:
        return _number("--max-time", text, 0, 86400)
    except PlanError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--max-time: ")) from None  # argparse names the flag


def _res(text: str) -> tuple[int, int]:
    """"256" -> (256, 256); "1024x2048" -> (1024, 2048)."""
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def _sizes(models: list[str], res: tuple[int, int], threads: int, fracs: list[float],
           work: Path) -> dict[tuple[str, float], int]:
    """The matmul size n that costs each fraction of each model's forward (measured in a child)."""
    from tools.bench_checker import _cases, _spawn

    cases = _cases(models, [res], threads, 0.5, 2.0)
    cal = _spawn({"cases": [c.to_spec() for c in cases], "calibrate": True, "fractions": fracs, "threads": threads,
                  "min_time_s": 0.5, "max_time_s": 2.0}, work, "calibrate", 1800)["calibration"]
    out = {}
    for f in fracs:
        for c, v, fwd in zip(cases, cal["sizes"][str(f)], cal["forward_ms"]):
            out[(c.model, f)] = int(v["n"])
            print(f"  +{f:.0%} {c.model} {res[0]}x{res[1]}: matmul n={v['n']} costs {v['cost_ms']:.3f} of {fwd:.3f} ms",
                  file=sys.stderr, flush=True)
    return out


def _compare(model: str, kind: str, res: tuple[int, int], threads: int, work: Path, src: Path | None,
             max_time: float) -> dict:
    from bench.ab import run_ab

    b = model if kind == "aa" else f"{src}:{_fn(model, float(kind))}"
    t0 = time.perf_counter()
    df, _ = run_ab(a=model, b=b, res=f"{res[0]}x{res[1]}", threads=str(threads), out=work / "runs",
                   max_time=max_time, argv=["tools.checker_ab"])
    r = df.iloc[0]
    return {"verdict": str(r["verdict"]), "ratio": float(r["ratio"]), "sd_log": float(r["sd_log"]),
            "processes": int(r["processes"]), "wall_s": time.perf_counter() - t0, "reason": str(r["reason"] or ""),
            "a_ms": float(r["a_median_ms"])}


def _summarise(model: str, kind: str, outs: list[dict]) -> dict:
    import numpy as np

    verdicts = [o["verdict"] for o in outs]
    walls = [o["wall_s"] for o in outs]
    good = "slower" if kind != "aa" else None
    return {"model": model, "kind": kind, "compares": len(outs),
            "verdicts": {v: verdicts.count(v) for v in sorted(set(verdicts))},
            "false_alarms": sum(v in ("slower", "faster") for v in verdicts) if kind == "aa" else None,
            "detected": sum(v == good for v in verdicts) if good else None,
            "ratio_median": float(np.median([o["ratio"] for o in outs])),
            "sd_log_median": float(np.median([o["sd_log"] for o in outs])),
            "processes_median": float(np.median([o["processes"] for o in outs])),
            "wall_median_s": float(np.median(walls)), "wall_max_s": float(max(walls))}


def _markdown(rows: list[dict], title: str) -> str:
    from bench.text import markdown_table

    head = ["model", "experiment", "compares", "verdicts", "flagged", "achieved ratio B/A", "SD log ratio / process",
            "processes", "wall per compare (median, max)"]
    cells = []
    for s in rows:
        kind = "A/A" if s["kind"] == "aa" else f"+{float(s['kind']):.0%} matmul"
        flagged = (f"{s['false_alarms']}/{s['compares']} false alarms" if s["kind"] == "aa"
                   else f"{s['detected']}/{s['compares']} detected")
        cells.append([s["model"], kind, s["compares"], ", ".join(f"{k} {v}" for k, v in s["verdicts"].items()),
                      flagged, f"{s['ratio_median']:.3f}", f"{math.expm1(s['sd_log_median']):.1%}",
                      f"{s['processes_median']:.0f}", f"{s['wall_median_s']:.0f} s, {s['wall_max_s']:.0f} s"])
    return f"### {title}\n\n" + markdown_table(head, cells, align="lllrlrrrr") + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.checker_ab", description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="block:msla,evit-b0:msla")
    ap.add_argument("--res", type=_res, default=(256, 256), help="N or HxW (default 256)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-time", type=_seconds, default=120.0, help="each compare's --max-time (default 120)")
    ap.add_argument("--counts", default=None, help=f"compares per kind (default {DEFAULT_COUNTS})")
    ap.add_argument("--quick", action="store_true", help=f"one model, {QUICK_COUNTS}")
    ap.add_argument("--keep", metavar="DIR", help="keep the ab folders here (default: a temporary folder)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    a = ap.parse_args(argv)
    models = a.models.split(",")[:1] if a.quick else a.models.split(",")
    counts = _counts(a.counts or (QUICK_COUNTS if a.quick else DEFAULT_COUNTS))
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="checker-ab-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fracs = [float(k) for k in counts if k != "aa"]
    src = _builder_file(work, _sizes(models, a.res, a.threads, fracs, work)) if fracs else None
    results, raw = [], {}
    for model in models:
        outs: dict[str, list[dict]] = {kind: [] for kind in counts}
        for i in range(max(counts.values())):  # the kinds take turns: a slow hour of the machine hits them alike
            for kind, n in counts.items():
                if i < n:
                    o = _compare(model, kind, a.res, a.threads, work, src, a.max_time)
                    outs[kind].append(o)
                    print(f"{model} {kind} {i + 1}/{n}: {o['verdict']} {o['ratio']:.3f} ({o['processes']} processes, "
                          f"{o['wall_s']:.0f} s, A {o['a_ms']:.0f} ms a call)", file=sys.stderr, flush=True)
        for kind in counts:
            raw[f"{model}|{kind}"] = outs[kind]
            results.append(_summarise(model, kind, outs[kind]))
    wall = time.perf_counter() - t0
    print(_markdown(results, f"Same-process A/B (`run_bench.py ab`) on this machine, {a.res[0]}x{a.res[1]}, "
                             f"{a.threads} thread(s), --max-time {a.max_time:g} s; "
                             f"{wall / 60:.0f} min in all"))
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": results, "compares": raw, "wall_s": wall}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
