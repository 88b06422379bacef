"""Command line of run_bench.py: `run` (the default), `models`, `report`, `compare`, `check`.

Every bad input ends in ONE line on stderr naming what is accepted and exit status 2, before anything is written.
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import sys
import time
from pathlib import Path

PROG = "run_bench.py"
COMMANDS = ("run", "models", "report", "compare", "check")

RUN_DESCRIPTION = """\
Measure token mixers for high-resolution segmentation (EfficientViT multi-scale linear attention vs softmax
attention, ReLU linear attention and large-kernel convolutions) across resolutions, devices and backends.

Cases are model x resolution x device x backend x precision x batch x threads. Each case runs in its own child
process with a timeout: a crash, an out-of-memory or a hang becomes a row with a status (ok, oom, timeout, error,
unsupported, skipped) and a reason, and the run goes on. Timing: first call apart, warm-up, then per-call samples
until the 95% CI of the median is within +-1% or --max-time is spent.

Results: OUT/<run-id>/results.parquet, results.csv (one row per case), samples.parquet (every raw sample) and
meta.json (environment, configuration, calibration), rewritten atomically after every case; an HTML report in
reports/<run-id>.html next to OUT. Interrupt at any time and finish with --resume RUN_ID.

Exit status: 0 done; 1 some case ended in 'error' (or --baseline found a regression); 2 bad input; 130 interrupted.
"""

RUN_EPILOG = """\
other commands:
  models    list the model zoo (params, MACs, published numbers): run_bench.py models [--res 1024x2048] [--format csv]
  report    HTML report of one or more runs:                       run_bench.py report results/<run-id> ...
  compare   compare two runs (ratio, CI, Mann-Whitney):            run_bench.py compare BASELINE CURRENT
  check     regression gates of bench/gates.toml:                  run_bench.py check ...
  (each has its own --help)

examples:
  run_bench.py --quick                                   seconds-long smoke run on the CPU
  run_bench.py --devices cpu --res 512,1024,2048         the default CPU matrix (about 4 minutes on 2 cores)
  run_bench.py --devices cuda --res 1024x2048 --backends eager,compile --precision fp16,fp32
  run_bench.py --models evit-b1:msla --level block --threads 1,2 --res 512
  run_bench.py --resume 20250101-120000-ab12

test-only: DENSEBENCH_FAULT=crash|hang|oom|error|sigkill[@MODEL_PATTERN] makes every child fail that way;
DENSEBENCH_ISOLATION=spawn runs a fresh interpreter per case instead of forking from a preloaded server.
"""


class UsageError(Exception):
    """Bad input: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage + message
        raise UsageError(f"{message} (see {self.prog} --help)")


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("matrix")
    m.add_argument("--models", metavar="LIST", help="comma list of model names, families (evit-variant, block, "
                   "efficientvit, segformer, segnext), patterns ('evit-b1:*') or 'all'; default: the four "
                   "EfficientViT-B1 variants evit-b1:msla,relu-linear,softmax,large-kernel")
    m.add_argument("--level", default="both", metavar="{model,block,both}",
                   help="model: whole networks; block: each mixer alone (block:<mixer>) fed the stride-16 map of the "
                        "image; both (default): each model followed by its mixer's block")
    m.add_argument("--res", default="512,1024,2048", metavar="LIST",
                   help="comma list of resolutions: N for NxN or HxW (e.g. 1024x2048); default 512,1024,2048")
    m.add_argument("--devices", default="cpu", metavar="LIST", help="comma list of cpu, cuda, cuda:N; default cpu")
    m.add_argument("--batch", default="1", metavar="LIST", help="comma list of batch sizes; default 1")
    m.add_argument("--precision", metavar="LIST",
                   help="comma list of fp32, tf32, fp16, bf16; default fp32 on cpu and fp16 on cuda. Combinations a "
                        "backend cannot run become 'unsupported' rows")
    m.add_argument("--threads", metavar="LIST",
                   help="comma list of torch intra-op thread counts for cpu cases (1 = the mobile-class CPU proxy); "
                        "default: the physical cores usable by this process")
    m.add_argument("--backends", default="eager", metavar="LIST",
                   help="comma list of eager, compile, cudagraphs, onnxruntime, tensorrt; default eager")
    m.add_argument("--channels-last", action="store_true", help="run models in channels_last memory format")
    m.add_argument("--fold", action="store_true", help="fold conv+BN (deployment form) before measuring")
    t = p.add_argument_group("timing")
    t.add_argument("--min-time", type=float, default=None, metavar="S",
                   help="minimum sampling time per case in seconds (default 0.5)")
    t.add_argument("--max-time", type=float, default=None, metavar="S",
                   help="sampling time cap per case in seconds (default 5); a case stops earlier once the CI of "
                        "its median is within +-1%%")
    t.add_argument("--repeats", type=int, default=None, metavar="R",
                   help="measure each case in R separate processes, interleaved (pass 1 of every case, then pass "
                        "2, ...), sharing its time budget; the row pools their samples and its CI includes how far "
                        "the processes disagree (default 1; see docs/METHODOLOGY.md for when it pays)")
    t.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="wall-clock limit per case, child start to result (default 600); then status 'timeout'")
    t.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default 0)")
    t.add_argument("--quick", action="store_true",
                   help="seconds-long smoke run: evit-b1 msla and softmax (+ blocks) at 128x128, 1 thread, short "
                        "budgets; explicit --models/--res/--devices still apply")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="results", metavar="DIR", help="folder of run folders (default results/)")
    o.add_argument("--run-id", metavar="NAME", help="name of the new run folder OUT/NAME (letters, digits, . _ -; "
                   "must not exist yet); default: date-time-random")
    o.add_argument("--resume", metavar="RUN_ID", help="finish the run OUT/RUN_ID (or a run folder path) without "
                                                        "redoing finished cases; the matrix is the run's own")
    o.add_argument("--allow-missing", action="store_true",
                   help="record cases on devices that are not present as 'skipped' instead of exiting with 2")
    o.add_argument("--baseline", metavar="RUN", help="after the run, compare it against this run (a run id in OUT, a "
                   "run folder or a results file) as `compare` does; exit 1 on a regression")
    o.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    o.add_argument("--no-calibrate", action="store_true", help="skip the matmul calibration (no frac_of_peak)")
    o.add_argument("--list", action="store_true", help="print the cases of the matrix and exit (nothing measured)")
    o.add_argument("-v", "--verbose", action="store_true", help="one line per case on stderr")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")


def run_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, usage=f"{PROG} [run] [options]", description=RUN_DESCRIPTION, epilog=RUN_EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_arguments(p)
    return p


# ---------------------------------------------------------------------------------------------------------------
# validation: everything is checked before the run folder exists

def _devices(text: str, allow_missing: bool) -> tuple[list[tuple[str, str]], set[str]]:
    from bench.cases import parse_list
    from bench.envinfo import cuda_count, device_name

    n_cuda = cuda_count()
    accepted = "cpu" + (", cuda, " + ", ".join(f"cuda:{i}" for i in range(n_cuda)) if n_cuda else "")
    out, missing = [], set()
    for d in parse_list(text, "--devices"):
        d = d.lower()
        if d == "cuda":
            d = "cuda:0"
        if d == "cpu":
            out.append((d, device_name("cpu")))
            continue
        if not (d.startswith("cuda:") and d[5:].isdigit()):
            raise UsageError(f"--devices: unknown device {d!r}; accepted here: {accepted}")
        idx = int(d[5:])
        if idx >= n_cuda:
            if not allow_missing:
                why = "no CUDA device on this machine" if n_cuda == 0 else f"only {n_cuda} CUDA device(s)"
                raise UsageError(f"--devices: {d} is not present ({why}); accepted here: {accepted} "
                                 "(or --allow-missing to record it as skipped)")
            missing.add(d)
            out.append((d, "absent"))
            continue
        out.append((d, device_name(d)))
    return list(dict.fromkeys(out)), missing


def _writable_dir(path: Path) -> None:
    p = path.resolve()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"--out: {probe} is not a folder; accepted: a writable folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out: {path} is not writable ({probe} denies writing); accepted: a writable folder")


def plan(a: argparse.Namespace) -> dict:
    """Validated configuration + cases from the run arguments. Raises UsageError; writes nothing."""
    from bench import backends
    from bench.cases import CaseError, expand, parse_ints, parse_list, parse_resolution, select_models
    from bench.envinfo import physical_cores, usable_cpus
    from models.registry import check_resolution

    try:
        models_spec = parse_list(a.models, "--models") if a.models else None
        if a.quick and not a.models:
            models_spec = ["evit-b1:msla", "evit-b1:softmax"]
        models = select_models(models_spec, a.level)
        res_text = "128" if (a.quick and a.res == "512,1024,2048") else a.res
        resolutions = list(dict.fromkeys(parse_resolution(r) for r in parse_list(res_text, "--res")))
        for name in models:
            for h, w in resolutions:
                why = check_resolution(name, h, w)
                if why:
                    raise UsageError(f"--res: {why}")
        devices, missing = _devices(a.devices, a.allow_missing)
        backs = parse_list(a.backends, "--backends")
        for b in backs:
            if b not in backends.BACKENDS:
                raise UsageError(f"--backends: unknown backend {b!r}; accepted: {', '.join(backends.BACKENDS)}")
        if a.precision:
            precs = parse_list(a.precision, "--precision")
            for pr in precs:
                if pr not in backends.PRECISIONS:
                    raise UsageError(f"--precision: unknown precision {pr!r}; accepted: "
                                     f"{', '.join(backends.PRECISIONS)}")
            precisions = {"cpu": precs, "cuda": precs}
        else:
            precisions = {"cpu": ["fp32"], "cuda": ["fp16"]}
        batches = parse_ints(a.batch, "--batch")
        default_threads = min(physical_cores(), usable_cpus())
        threads = parse_ints(a.threads, "--threads") if a.threads else [1 if a.quick else default_threads]
    except CaseError as e:
        raise UsageError(str(e)) from None
    min_t = a.min_time if a.min_time is not None else (0.05 if a.quick else 0.5)
    max_t = a.max_time if a.max_time is not None else (0.3 if a.quick else 5.0)
    timeout = a.timeout if a.timeout is not None else (120.0 if a.quick else 600.0)
    for name, v in (("--min-time", min_t), ("--max-time", max_t), ("--timeout", timeout)):
        if not (v == v and v > 0 and v != float("inf")):  # NaN-safe
            raise UsageError(f"{name}: {v} is not accepted; accepted: a positive number of seconds")
    if min_t > max_t:
        raise UsageError(f"--min-time {min_t} is above --max-time {max_t}; accepted: min-time <= max-time")
    repeats = 1 if a.repeats is None else a.repeats
    if not 1 <= repeats <= 100:
        raise UsageError(f"--repeats: {repeats} is not accepted; accepted: an integer from 1 to 100")
    cases = expand(models, resolutions, devices, backs, precisions, batches, threads, channels_last=a.channels_last,
                   fold=a.fold, seed=a.seed, min_time_s=min_t, max_time_s=max_t, timeout_s=timeout)
    config = {"models": models, "level": a.level, "resolutions": [f"{h}x{w}" for h, w in resolutions],
              "devices": [d for d, _ in devices], "device_names": dict(devices), "missing_devices": sorted(missing),
              "backends": backs, "precisions": precisions, "batches": batches, "threads": threads,
              "threads_default": (("1 (--quick)" if a.quick else "min(physical cores, usable cpus)")
                                  if not a.threads else None),
              "channels_last": a.channels_last, "fold": a.fold, "seed": a.seed, "min_time_s": min_t,
              "max_time_s": max_t, "timeout_s": timeout, "quick": a.quick, "repeats": repeats,
              "calibrate": not a.no_calibrate}
    return {"config": config, "cases": cases, "missing": missing}


def _new_run_id(out: Path) -> str:
    while True:
        rid = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        if not (out / rid).exists():
            return rid


# ---------------------------------------------------------------------------------------------------------------
# run

class _Progress:
    """tqdm bar on stderr: current case, cases done, ETA. The bar advances by each case's estimated seconds
    (Runner.estimate_s: MACs over the calibrated rate, within the time budgets), so one slow 2048x2048 softmax case
    weighs what it costs, not 1/N of the run."""

    def __init__(self, enabled: bool):
        self.bar = None
        self.enabled = enabled
        self.weights: list[float] | None = None

    def set_estimates(self, seconds: list[float]) -> None:
        self.weights = [max(0.01, float(x)) for x in seconds]

    def __call__(self, case, i: int, n: int) -> None:
        if not self.enabled:
            return
        w = self.weights if self.weights and len(self.weights) == n else [1.0] * n
        if self.bar is None:
            from tqdm import tqdm

            import shutil

            try:
                real = os.get_terminal_size(sys.stderr.fileno()).columns > 0
            except OSError:
                real = False
            self.bar = tqdm(total=round(sum(w), 2), file=sys.stderr, dynamic_ncols=real, leave=False,
                            ncols=None if real else shutil.get_terminal_size((110, 20)).columns,
                            bar_format="{l_bar}{bar}| {postfix} [{elapsed}<{remaining}]")
        if i:
            self.bar.update(w[i - 1])
        self.bar.set_description_str(f"{i}/{n}", refresh=False)
        self.bar.set_postfix_str(case.label(), refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(max(0.0, self.bar.total - self.bar.n))
            self.bar.close()


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def cmd_run(a: argparse.Namespace, argv: list[str]) -> int:
    from bench.cases import Case
    from bench.envinfo import environment, now_iso

    out = Path(a.out)
    if a.resume:
        run_dir = Path(a.resume) if (os.sep in a.resume or Path(a.resume).is_dir()) and \
            not (out / a.resume).is_dir() else out / a.resume
        if not (run_dir / "meta.json").is_file():
            raise UsageError(f"--resume: no run {a.resume!r} in {out}/ (expected {run_dir}/meta.json); accepted: a "
                             f"run id from {out}/ or a run folder path")
        from bench.results.lifecycle import open_run as load_state
        from bench.results.store import RunFormatError

        try:
            state = load_state(run_dir)
        except RunFormatError as e:
            raise UsageError(f"--resume: {e}") from None
        if not state.meta.get("cases"):
            raise UsageError(f"--resume: {run_dir}/meta.json has no case list (not a run of this engine)")
        _writable_dir(run_dir)
        given = [o for o, v, default in (("--models", a.models, None), ("--level", a.level, "both"),
                                          ("--res", a.res, "512,1024,2048"), ("--devices", a.devices, "cpu"),
                                          ("--batch", a.batch, "1"), ("--precision", a.precision, None),
                                          ("--threads", a.threads, None), ("--backends", a.backends, "eager"),
                                          ("--quick", a.quick, False), ("--repeats", a.repeats, None))
                 if v != default]
        if given:
            print(f"{PROG}: note: {', '.join(given)} ignored with --resume (the run's own matrix is finished)",
                  file=sys.stderr)
        cases = [Case.from_spec(c) for c in state.meta["cases"]]
        missing = set(state.meta.get("config", {}).get("missing_devices", []))
        state.meta.setdefault("resumed", []).append({"at": now_iso(), "command": argv})
        calibrate = state.meta.get("config", {}).get("calibrate", True)
        repeats = int(state.meta.get("config", {}).get("repeats") or 1)
    else:
        p = plan(a)
        if a.list:
            for c in p["cases"]:
                print(c.case_id)
            print(f"{len(p['cases'])} cases", file=sys.stderr)
            return 0
        _writable_dir(out)
        if a.run_id is not None:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", a.run_id):
                raise UsageError(f"--run-id: {a.run_id!r} is not accepted; accepted: letters, digits, '.', '_', '-' "
                                 "(starting with a letter or digit, at most 100)")
            if (out / a.run_id).exists():
                raise UsageError(f"--run-id: {out / a.run_id} already exists; accepted: a new name (or --resume "
                                 f"{a.run_id} to finish that run)")
        if a.baseline:
            if not Path(a.baseline).exists() and (out / a.baseline).is_dir():
                a.baseline = str(out / a.baseline)
            if not Path(a.baseline).exists():
                raise UsageError(f"--baseline: {a.baseline} does not exist; accepted: a run id in {out}/, a run "
                                 "folder or a results file")
        cases, missing = p["cases"], p["missing"]
        calibrate = p["config"]["calibrate"]
        repeats = p["config"]["repeats"]
        run_id = a.run_id or _new_run_id(out)
        run_dir = out / run_id
        env = environment([sys.executable, PROG, *argv])
        meta = {"run_id": run_id, "started_at": now_iso(), "host": env["host"], "env": env, "config": p["config"],
                "cases": [c.to_spec() for c in cases], "calibration": {}, "status": "created"}
        from bench.results.lifecycle import RunState

        try:
            run_dir.mkdir(parents=True)
        except OSError as e:
            raise UsageError(f"--out: cannot create {run_dir}: {e.strerror}; accepted: a writable folder") from None
        state = RunState(run_dir=run_dir, meta=meta)
        state.save()

    from bench.runner import Runner

    progress = _Progress(enabled=not a.quiet and sys.stderr.isatty())
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if a.verbose else None
    runner = Runner(state, cases, allow_missing=missing, progress=progress, log=log, calibrate=calibrate,
                    repeats=repeats)
    old = signal.signal(signal.SIGTERM, _sigterm)
    t0 = time.perf_counter()
    try:
        runner.run()
    except KeyboardInterrupt:
        progress.close()
        state.meta["status"] = "interrupted"
        state.meta["updated_at"] = now_iso()
        state.save()
        print(f"interrupted: {len(state.rows)} of {len(cases)} cases stored in {state.run_dir}; finish with "
              f"--resume {state.run_id}" + (f" --out {a.out}" if a.out != "results" else ""), file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    progress.close()
    state.meta["status"] = "complete"
    state.meta["ended_at"] = now_iso()
    state.meta["wall_s"] = round(state.meta.get("wall_s", 0) + time.perf_counter() - t0, 2)
    state.save()

    from bench.results import store

    res = store.results_frame(state.rows)
    if not a.quiet:
        from bench.analysis.summary import format_summary

        print(format_summary(res))
    print(f"results: {state.run_dir}")
    if not a.no_report:
        try:
            from bench.analysis.report import write_report

            html = write_report([state.run_dir], Path(a.out).parent / "reports" / f"{state.run_id}.html")
            print(f"report: {html}")
        except ImportError:
            print("report: skipped (bench.report not available)", file=sys.stderr)
        except Exception as e:  # the measurements are stored; a report failure must not lose them
            print(f"report: failed ({type(e).__name__}: {e})".splitlines()[0], file=sys.stderr)
    rc = 1 if (res["status"] == "error").any() else 0
    if a.baseline:
        from bench.analysis.compare import run_compare

        rc = max(rc, run_compare(a.baseline, state.run_dir))
    return rc


# ---------------------------------------------------------------------------------------------------------------
# other commands

def cmd_models(argv: list[str]) -> int:
    p = _Parser(prog=f"{PROG} models", description="List the model zoo: registry metadata, params, MACs at a "
                "resolution, published numbers.")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--res", metavar="N|HxW", help="resolution for the MACs column (default: each model's own)")
    p.add_argument("--family", help="only this family")
    a = p.parse_args(argv)
    h = w = None
    if a.res:
        from bench.cases import CaseError, parse_resolution

        try:
            h, w = parse_resolution(a.res)
        except CaseError as e:
            raise UsageError(str(e)) from None
    from models.registry import FAMILIES, list_models
    from models.zoo import format_zoo_table, zoo_frame

    if a.family and a.family not in FAMILIES:
        raise UsageError(f"--family: {a.family!r} is not accepted; accepted: {', '.join(FAMILIES)}")
    names = list_models(a.family or None)
    if h is not None:
        from models.registry import check_resolution

        bad = [r for r in (check_resolution(n, h, w) for n in names) if r]
        if bad:
            raise UsageError(f"--res: {bad[0]} (accepted: multiples of each model's size_multiple, e.g. 512, 1024x2048)")
    df = zoo_frame(height=h, width=w, names=names)
    if a.format == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif a.format == "json":
        sys.stdout.write(df.to_json(orient="records", indent=1) + "\n")
    else:
        print(format_zoo_table(df))
    return 0


def _delegate(cmd: str, argv: list[str]) -> int:
    mods = {"report": ("bench.analysis.report", "add_report_arguments", "cmd_report"),
            "compare": ("bench.analysis.compare", "add_compare_arguments", "cmd_compare"),
            "check": ("bench.analysis.gates", "add_check_arguments", "cmd_check")}
    mod_name, add_name, cmd_name = mods[cmd]
    try:
        import importlib

        mod = importlib.import_module(mod_name)
        add, run = getattr(mod, add_name), getattr(mod, cmd_name)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"the '{cmd}' command is not available in this checkout ({mod_name}: {e})") from None
    p = _Parser(prog=f"{PROG} {cmd}", description=(mod.__doc__ or "").split("\n\n")[0])
    add(p)
    return int(run(p.parse_args(argv)) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in COMMANDS:
            cmd, rest = argv[0], argv[1:]
        elif not argv or argv[0].startswith("-"):
            cmd, rest = "run", argv
        else:
            raise UsageError(f"unknown command {argv[0]!r}; accepted: {', '.join(COMMANDS)} (run is the default, "
                             "e.g. run_bench.py --devices cpu --res 512)")
        if cmd == "run":
            a = run_parser().parse_args(rest)
            return cmd_run(a, argv)
        if cmd == "models":
            return cmd_models(rest)
        return _delegate(cmd, rest)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `run_bench.py --list | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
