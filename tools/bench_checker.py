"""Benchmark of the regression checker itself (not a test): its error rates on this machine.

    python -m tools.bench_checker            # full: 20 trials (~15-25 min on a quiet 2-core machine)
    python -m tools.bench_checker --quick    # smoke: 1 trial of a tiny case (about 2 minutes on a busy machine)
    python -m tools.bench_checker --keep DIR --repeats 3   # keep the runs ...
    python -m tools.bench_checker --analyze DIR --threshold 0.1 --alpha 0.05   # ... and re-judge them

What it measures, with `bench.compare.compare_runs` and its defaults (threshold 5%, alpha 0.01):
- False alarms: per trial, two independent runs of the same unmodified cases (A/A), compared. Target: no false
  alarm in 20 A/A compares.
- Detection: per trial and per injected slowdown X in {5, 10, 20}%, a run whose model forward does an EXTRA
  fp32 matmul (n x n, preallocated output) after the real forward: a real slower code path, sized by measurement
  so that it costs X% of the case's median latency. Compared against that trial's baseline run. Target: >= 95% of
  10% slowdowns detected (a 5% slowdown sits on a 5% threshold: expect about half).
- The achieved slowdown (median over trials of the ratio of medians), since the injected cost is calibrated, not
  exact; and the spread of the A/A ratios (the noise the threshold must sit above).

How runs are made: every run is made of fresh interpreters (`--child` mode of this script, with the runner's
child environment) that measure each case through the engine's own child code path, `bench.measure.child.run_case`
(backends.prepare, bench.measure.timer.measure). A slowed case measures a model registered for it with
`register_model` (the original followed by the matmul), and its row is stored under the original case's identity.
The runs are stored through the engine's run lifecycle (bench.results.lifecycle), processes pooled by
bench.results.repeats as the runner pools them.
With `--repeats R` each run is R processes sharing the time budget, and the processes of one trial are
interleaved (process 1 of baseline, A/A, 5%, 10%, 20%, then process 2, ...) so that slow machine drift hits the
runs alike; `compare` then judges them on the process level (basis "repeats").

Output: a Markdown table on stdout and, with --json FILE, every figure as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SLOWDOWNS = (0.05, 0.10, 0.20)


# ---------------------------------------------------------------- child side

class _Slowed:
    """Wraps a model: forward(x) = model(x), then an n x n matmul into a preallocated buffer."""

    @staticmethod
    def wrap(model, n: int):
        import torch
        from torch import nn

        class Slowed(nn.Module):
            def __init__(self, inner: nn.Module, n: int):
                super().__init__()
                self.inner = inner
                g = torch.Generator().manual_seed(0)
                self.register_buffer("a", torch.randn(n, n, generator=g))
                self.register_buffer("out", torch.empty(n, n))

            def forward(self, x):
                y = self.inner(x)
                torch.mm(self.a, self.a, out=self.out)
                return y

        return Slowed(model, n).eval()


def _register_slowed(model: str, n: int) -> str:
    """`model` followed by an n x n matmul, registered as a model of its own (as a user's model would be), so the
    engine measures it through its ordinary path; returns its name."""
    from models.registry import build_model, get_model_info, list_models, register_model

    name = f"{model}+mm{n}"
    if name not in list_models():
        info = get_model_info(model)
        register_model(name, family=info.family, mixer=info.mixer, input_size=info.input_size,
                       num_classes=info.declared_classes, out_stride=info.declared_stride,
                       in_channels=info.in_channels, input_stride=info.input_stride,
                       size_multiple=info.size_multiple, token_stride=info.token_stride,
                       description=f"{model} + {n}x{n} matmul (bench_checker's injected slowdown)")(
            lambda: _Slowed.wrap(build_model(model), n))
    return name


def _child(spec_path: str, out_path: str) -> int:
    from bench.cases import Case
    from bench.files import atomic_write_json
    from bench.measure.child import run_case

    spec = json.loads(Path(spec_path).read_text())
    inject = spec.get("inject") or [0] * len(spec["cases"])  # matmul size per case (0: unmodified)
    out = {"rows": [], "samples": []}
    if spec.get("calibrate"):
        out["calibration"] = _calibrate_in_child(spec)
    for case_spec, n in zip(spec["cases"], inject):
        case = Case.from_spec(case_spec)
        measured = replace(case, model=_register_slowed(case.model, int(n))) if int(n) > 0 else case
        res = run_case(measured)
        out["rows"].append({**res["row"], **case.as_row()})  # stored under the unmodified case's identity
        out["samples"].append(res["samples"])
    atomic_write_json(out_path, out)
    return 0


def _calibrate_in_child(spec: dict) -> dict:
    """Median forward latency of each case and, per case, the matmul size n that costs each target fraction of it."""
    import numpy as np
    import torch

    from bench.measure.timer import measure
    from models.registry import build_model, example_input

    torch.set_num_threads(int(spec["threads"]))
    t = dict(min_time_s=float(spec["min_time_s"]), max_time_s=float(spec["max_time_s"]))
    fwd = []
    with torch.inference_mode():
        for c in spec["cases"]:
            m = build_model(c["model"])
            x = example_input(c["model"], c["height"], c["width"], c["batch"])
            fwd.append(float(np.median(measure(lambda: m(x), **t).samples_ms)))

        def mm_ms(n: int) -> float:
            a, o = torch.randn(n, n), torch.empty(n, n)
            return float(np.median(measure(lambda: torch.mm(a, a, out=o), **t).samples_ms))

        sizes: dict = {}
        for frac in spec["fractions"]:
            per_case = []
            for f_ms in fwd:
                target = frac * f_ms
                n = 256
                for _ in range(4):  # cost ~ n^3: rescale, re-measure
                    n_new = max(8, int(round(n * (target / mm_ms(n)) ** (1 / 3))))
                    done = abs(n_new - n) <= max(2, n // 50)
                    n = n_new
                    if done:
                        break
                per_case.append({"n": n, "cost_ms": mm_ms(n), "target_ms": target})
            sizes[str(frac)] = per_case
    return {"forward_ms": fwd, "sizes": sizes}


# ---------------------------------------------------------------- parent side

def _cases(models: list[str], res: list, threads: int, min_time_s: float, max_time_s: float):
    """Cases of `models` at `res` (N for NxN, or (H, W)), CPU eager fp32, batch 1."""
    from bench.cases import expand
    from bench.env import device_name

    return expand(models, [(r, r) if isinstance(r, int) else tuple(r) for r in res], [("cpu", device_name("cpu"))], ["eager"], {"cpu": ["fp32"]}, [1],
                  [threads], min_time_s=min_time_s, max_time_s=max_time_s)


def _spawn(spec: dict, workdir: Path, tag: str, timeout_s: float) -> dict:
    sp, op = workdir / f"{tag}.spec.json", workdir / f"{tag}.out.json"
    sp.write_text(json.dumps(spec, default=str))
    from bench.launch.childenv import child_env

    env = child_env()  # the runner's child environment: PYTHONPATH and the malloc settings
    p = subprocess.run([sys.executable, "-m", "tools.bench_checker", "--child", str(sp), str(op)], env=env,
                       cwd=str(REPO), capture_output=True, text=True, timeout=timeout_s)
    if p.returncode != 0 or not op.exists():
        tail = (p.stderr or "").strip().splitlines()[-3:]
        raise RuntimeError(f"child {tag} failed (exit {p.returncode}): {' | '.join(tail)}")
    return json.loads(op.read_text())


def _store_run(root: Path, run_id: str, cases, outs: list[dict], config: dict) -> Path:
    """A run folder from the outputs of the run's processes (one per repeat), pooled as the runner pools them,
    through the engine's run lifecycle."""
    from bench.results.lifecycle import create_run
    from bench.results.repeats import failed, pool_rows

    state = create_run(root, cases, config, run_id=run_id, kind="checker")
    for i, case in enumerate(cases):
        per = [o["rows"][i] for o in outs]
        groups = [o["samples"][i] for o in outs]
        bad = next((k for k, r in enumerate(per) if r.get("status") != "ok"), None)
        row = failed(per[bad], bad, len(outs)) if bad is not None else pool_rows(per, groups)
        state.rows.append({**row, **case.as_row(), "run_id": run_id})
        state.samples += [{"run_id": run_id, "case_id": case.case_id, "repeat": r, "iter": j, "latency_ms": v}
                          for r, g in enumerate(groups) for j, v in enumerate(g)]
    state.mark("complete")
    state.save()
    state.close()
    return state.run_dir


def judge_trial(root: Path, t: int, threshold: float, alpha: float) -> tuple[dict, dict]:
    """Compare trial t's stored runs (tNN-base against tNN-aa and each tNN-slowX): the A/A entry and, per slowdown,
    the detection entry."""
    from bench.analysis.compare import compare_runs
    from bench.results.store import load_run

    base = load_run(root / f"t{t:02d}-base")
    df = compare_runs(base, load_run(root / f"t{t:02d}-aa"), threshold=threshold, alpha=alpha)
    aa = {"alarm": bool(df["regression"].any()), "ratios": df["ratio"].tolist(), "verdicts": df["verdict"].tolist()}
    det = {}
    for f in SLOWDOWNS:
        d = compare_runs(base, load_run(root / f"t{t:02d}-slow{f}"), threshold=threshold, alpha=alpha)
        det[f] = {"detected_cases": int((d["verdict"] == "slower").sum()), "cases": len(d),
                  "ratios": d["ratio"].tolist(), "verdicts": d["verdict"].tolist()}
    return aa, det


def stored_trials(root: Path) -> list[int]:
    """Trial numbers whose five run folders are all in root (a --keep folder of an earlier run)."""
    tags = ["base", "aa", *(f"slow{f}" for f in SLOWDOWNS)]
    found = sorted({int(p.name[1:3]) for p in root.glob("t[0-9][0-9]-base")})
    return [t for t in found if all((root / f"t{t:02d}-{tag}" / "results.parquet").exists() for tag in tags)]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_checker", description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 trial of one small case, short timing")
    ap.add_argument("--trials", type=int, default=None, help="A/A compares and compares per slowdown (default 20)")
    ap.add_argument("--models", default="block:msla,evit-b0:msla", help="cases' models (default %(default)s)")
    ap.add_argument("--res", default="512", help="square resolutions, comma list (default 512)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    ap.add_argument("--min-time", type=float, default=None, help="min timed seconds per case (default 1.0)")
    ap.add_argument("--max-time", type=float, default=None, help="max timed seconds per case (default 4.0)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="processes per run, interleaved across the trial's runs, sharing the time budget "
                         "(run_bench.py --repeats; default 1)")
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--keep", metavar="DIR", help="keep the run folders here (default: a temporary folder)")
    ap.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    ap.add_argument("--analyze", metavar="DIR",
                    help="measure nothing: re-judge the trials stored in DIR (a --keep folder) with --threshold and "
                         "--alpha, e.g. to see the trade-off between false alarms and detection on the same runs")
    return ap


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _calibrate(cases, work: Path, threads: int, min_t: float, max_t: float, timeout: float) -> dict:
    """The forward latency of each case and the matmul size that costs each slowdown of it (in a child)."""
    _log(f"calibrating the injected matmul on {len(cases)} case(s) ...")
    cal = _spawn({"cases": [c.to_spec() for c in cases], "calibrate": True, "fractions": list(SLOWDOWNS),
                  "threads": threads, "min_time_s": min_t, "max_time_s": max_t}, work, "calibrate",
                 timeout)["calibration"]
    for f, per_case in cal["sizes"].items():
        for c, v, fwd in zip(cases, per_case, cal["forward_ms"]):
            _log(f"  +{float(f):.0%} {c.label()}: matmul n={v['n']} costs {v['cost_ms']:.3f} ms of a {fwd:.3f} ms "
                 "forward")
    return cal


def _run_trial(root: Path, work: Path, t: int, cases, sizes: dict, R: int, timeout: float) -> None:
    """Trial t's five runs (baseline, A/A, one per slowdown) as run folders tNN-<tag> under root, their processes
    interleaved: process r of every run, then process r + 1, so that drift hits all runs alike."""
    specs = [replace(c, min_time_s=c.min_time_s / R, max_time_s=c.max_time_s / R).to_spec() for c in cases]
    none = [0] * len(cases)
    runs = {"base": none, "aa": none, **{f"slow{f}": [v["n"] for v in sizes[f]] for f in SLOWDOWNS}}
    outs: dict[str, list[dict]] = {tag: [] for tag in runs}
    for rep in range(R):
        for tag, ns in runs.items():
            outs[tag].append(_spawn({"cases": specs, "inject": ns}, work, f"t{t}-{tag}-r{rep}", timeout))
    for tag, ns in runs.items():
        _store_run(root, f"t{t:02d}-{tag}", cases, outs[tag], {"inject_matmul_n": ns, "repeats": R,
                                                              "calibrate": False})


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    a = ap.parse_args(argv)
    if a.child:
        return _child(*a.child)
    if a.analyze:
        return _analyze(Path(a.analyze), a.threshold, a.alpha, a.json)

    trials = a.trials or (1 if a.quick else 20)
    models = ["block:msla"] if a.quick and a.models == ap.get_default("models") else a.models.split(",")
    res = [int(r) for r in (("256" if a.quick and a.res == "512" else a.res).split(","))]
    min_t = a.min_time if a.min_time is not None else (0.3 if a.quick else 1.0)
    max_t = a.max_time if a.max_time is not None else (1.0 if a.quick else 4.0)
    cases = _cases(models, res, a.threads, min_t, max_t)
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench-checker-"))
    work = root / "_specs"
    work.mkdir(parents=True, exist_ok=True)
    R = max(1, a.repeats)
    cases = [replace(c, extra={"workdir": str(work)}) for c in cases]
    timeout = 120 + 10 * len(cases) * (max_t + 5)
    t0 = time.perf_counter()
    cal = _calibrate(cases, work, a.threads, min_t, max_t, timeout)
    sizes = {float(k): v for k, v in cal["sizes"].items()}
    aa, det = [], {f: [] for f in SLOWDOWNS}
    for t in range(trials):
        _run_trial(root, work, t, cases, sizes, R, timeout)
        aa_t, det_t = judge_trial(root, t, a.threshold, a.alpha)
        aa.append(aa_t)
        for f in SLOWDOWNS:
            det[f].append(det_t[f])
        _log(f"trial {t + 1}/{trials}: A/A {'ALARM' if aa[-1]['alarm'] else 'clean'}; "
             + ", ".join(f"{f:.0%} {det[f][-1]['detected_cases']}/{det[f][-1]['cases']}" for f in SLOWDOWNS)
             + f" ({time.perf_counter() - t0:.0f} s)")

    summary = _summary(aa, det, trials)
    summary.update({"cases": [c.label() for c in cases], "threshold": a.threshold, "alpha": a.alpha, "repeats": R,
                    "calibration": cal, "wall_s": round(time.perf_counter() - t0, 1)})
    _print(summary, f"{trials} trials, {len(cases)} case(s): {', '.join(summary['cases'])}; {R} process(es) per "
                    f"run; threshold {a.threshold:.0%}, alpha {a.alpha}")
    print(f"\nA/A noise: max |ratio - 1| = {math.expm1(summary['aa']['max_abs_log_ratio']):.1%}; wall "
          f"{summary['wall_s']:.0f} s; runs in {root}")
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2, default=str))
    return 0


def _summary(aa: list[dict], det: dict, trials: int) -> dict:
    import numpy as np

    aa_ratios = np.array([r for x in aa for r in x["ratios"]], dtype=float)
    out = {"trials": trials,
           "aa": {"false_alarm_runs": sum(x["alarm"] for x in aa), "compares": trials,
                  "false_alarm_cases": int(sum(v == "slower" for x in aa for v in x["verdicts"])),
                  "case_compares": int(aa_ratios.size),
                  "ratio_median": float(np.median(aa_ratios)) if aa_ratios.size else math.nan,
                  "max_abs_log_ratio": float(np.max(np.abs(np.log(aa_ratios)))) if aa_ratios.size else math.nan},
           "detection": {}}
    for f in SLOWDOWNS:
        rs = np.array([r for x in det[f] for r in x["ratios"]], dtype=float)
        n_det = sum(x["detected_cases"] for x in det[f])
        n_all = sum(x["cases"] for x in det[f])
        out["detection"][f"{f:.2f}"] = {"detected": n_det, "case_compares": n_all,
                                        "rate": n_det / n_all if n_all else math.nan,
                                        "achieved_ratio_median": float(np.median(rs)) if rs.size else math.nan}
    return out


def _print(s: dict, title: str) -> None:
    trials = s["trials"]
    print(f"### Checker error rates ({title})\n")
    print("| experiment | achieved slowdown (median ratio) | flagged | rate |")
    print("|---|---:|---:|---:|")
    print(f"| A/A (no change) | {s['aa']['ratio_median']:.3f} | {s['aa']['false_alarm_runs']}/{trials} runs, "
          f"{s['aa']['false_alarm_cases']}/{s['aa']['case_compares']} cases | "
          f"{s['aa']['false_alarm_runs'] / max(trials, 1):.0%} false alarms |")
    for f in SLOWDOWNS:
        d = s["detection"][f"{f:.2f}"]
        print(f"| +{f:.0%} injected matmul | {d['achieved_ratio_median']:.3f} | {d['detected']}/{d['case_compares']}"
              f" cases | {d['rate']:.0%} detected |")


def _analyze(root: Path, threshold: float, alpha: float, json_path: str | None) -> int:
    trials = stored_trials(root)
    if not trials:
        print(f"bench_checker: --analyze: no complete trial (tNN-base, tNN-aa, tNN-slow...) in {root}", file=sys.stderr)
        return 2
    aa, det = [], {f: [] for f in SLOWDOWNS}
    for t in trials:
        aa_t, det_t = judge_trial(root, t, threshold, alpha)
        aa.append(aa_t)
        for f in SLOWDOWNS:
            det[f].append(det_t[f])
    summary = _summary(aa, det, len(trials))
    summary.update({"threshold": threshold, "alpha": alpha, "analyzed": str(root)})
    _print(summary, f"{len(trials)} stored trials re-judged from {root}; threshold {threshold:.0%}, alpha {alpha}")
    if json_path:
        Path(json_path).write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
