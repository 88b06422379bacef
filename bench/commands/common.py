"""The options several commands declare alike, declared once (asv's common_args is the model): `run`'s matrix,
timing and output options (shared with `profile`), the fleet's --cluster / --hosts, and --models-from (`run`,
`models`). Each command module's `add_parser` calls these; the help texts are the commands' own.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

from bench.fleet.cluster import FleetError, check_address


def add_models_from(p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str) -> None:
    """--models-from SOURCE (repeatable): users' model files or modules, as bench.plan.load_sources takes them."""
    p.add_argument("--models-from", action="append", default=[], metavar="SOURCE", help=help)


def flag_type(check: Callable[..., Any], **keywords: Any) -> Callable[[str], Any]:
    """An argparse `type` from a check that raises FleetError: argparse names the flag, the check says the rest
    (one line through bench.cli's parser, exit 2, before Ray sees the value)."""
    def parse(text: str) -> Any:
        try:
            return check(text, flag="", **keywords)
        except FleetError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = check.__name__
    return parse


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """--cluster and --hosts, for `run` (and `profile`)."""
    g = p.add_argument_group("fleet (Ray; pip install -e '.[fleet]')")
    g.add_argument("--cluster", metavar="ADDRESS", type=flag_type(check_address), help="measure on the Ray cluster at "
                   "HOST:PORT ('auto': the one this machine joined; 'local': start a one-machine Ray, ended with the "
                   "run): the matrix runs on every node with the --devices asked for, one case per device at a time, "
                   "into one run (docs/FLEET.md)")
    g.add_argument("--hosts", metavar="LIST", help="with --cluster: only these hosts (their densebench-host labels)")


def _matrix_arguments(p: argparse.ArgumentParser) -> None:
    from models.registry import FAMILIES

    m = p.add_argument_group("matrix")
    m.add_argument("--models", metavar="LIST", help=f"comma list of model names, families ({', '.join(FAMILIES)}; "
                   "see `models --help`), patterns ('evit-b1:*') or 'all'; default: the four EfficientViT-B1 "
                   "variants evit-b1:msla,relu-linear,softmax,large-kernel")
    m.add_argument("--level", default="both", metavar="{model,block,both}",
                   help="model: whole networks; block: each mixer alone (block:<mixer>) fed the stride-16 map of the "
                        "image; both (default): each model followed by its mixer's block")
    m.add_argument("--res", default="512,1024,2048", metavar="LIST",
                   help="comma list of resolutions: N for NxN or HxW (e.g. 1024x2048), or 'own': each model at its "
                        "own input size (with --models published: the sizes the papers timed); default "
                        "512,1024,2048")
    m.add_argument("--devices", default="cpu", metavar="LIST", help="comma list of cpu, cuda, cuda:N; default cpu")
    m.add_argument("--batch", default="1", metavar="LIST", help="comma list of batch sizes; default 1")
    m.add_argument("--precision", metavar="LIST",
                   help="comma list of fp32, tf32, fp16, bf16; default fp32 on cpu and fp16 on cuda. Combinations a "
                        "backend cannot run become 'unsupported' rows")
    m.add_argument("--threads", metavar="LIST",
                   help="comma list of torch intra-op thread counts for cpu cases (1 = the mobile-class CPU proxy); "
                        "default: the physical cores usable by this process")
    m.add_argument("--backends", default="eager", metavar="LIST",
                   help="comma list of eager, compile, cudagraphs, onnxruntime, tensorrt, openvino; default eager")
    m.add_argument("--channels-last", action="store_true", help="run models in channels_last memory format")
    m.add_argument("--fold", action="store_true", help="fold conv+BN (deployment form) before measuring")
    add_models_from(m, "import users' models from a .py file or a package.module (repeatable; also the "
                    "DENSEBENCH_MODELS_FROM variable, os.pathsep-separated): their @register_model names can then "
                    "be used in --models like built-in ones")


def _timing_arguments(p: argparse.ArgumentParser) -> None:
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
    t.add_argument("--design", choices=("interleaved", "isolated"), default="interleaved",
                   help="interleaved (default): the cases of one decision (the mixers of one model size, resolution "
                        "and setting) measured in the same processes in rotating balanced order, until every pair "
                        "against the fastest is decided or --budget is spent; isolated: every case in its own "
                        "processes, timed until its CI is within +-1%% or --max-time")
    t.add_argument("--budget", type=float, default=None, metavar="S",
                   help="seconds of measuring the interleaved groups may spend in all, split by the cost of a "
                        "process and spent first on the open decisions (default 480; --list shows the split)")
    t.add_argument("--tie", type=float, default=0.02, metavar="F",
                   help="equivalence margin of a paired decision: a ratio whose interval lies within 1 +- F is "
                        "'tied', one clear above 1 + F is 'faster' (default 0.02)")
    t.add_argument("--wait-quiet", type=float, default=None, metavar="S",
                   help="when other processes used the CPU during a process, wait up to S seconds for a quiet "
                        "machine and measure that process again (default 120, or DENSEBENCH_WAIT_QUIET; 0: never "
                        "wait, flag it noisy)")
    t.add_argument("--metric", choices=("time", "instructions"), default="time",
                   help="time (default): latency only; instructions: also count CPU instructions per forward pass "
                        "under valgrind (callgrind, 1 thread), deterministic where time is not (CPU cases only; "
                        "about a minute per case or more)")
    t.add_argument("--profile", action="store_true",
                   help="after each case's timed pass, a profiled pass apart from it (torch.profiler for eager, "
                        "ONNX Runtime's profiler, TensorRT's layer profile): time, MACs, bytes and GMAC/s per op "
                        "kind and module against a measured roofline, in OUT/<run-id>/profile.parquet, a trace per "
                        "case in traces/ (Perfetto, chrome://tracing) and the report's 'Where the time goes'")
    t.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="wall-clock limit per case, child start to result (default 600); then status 'timeout'")
    t.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default 0)")
    t.add_argument("--quick", action="store_true",
                   help="seconds-long smoke run: evit-b1 msla and softmax (+ blocks) at 128x128, 1 thread, short "
                        "budgets; explicit --models/--res/--devices still apply")


def _output_arguments(p: argparse.ArgumentParser) -> None:
    o = p.add_argument_group("output")
    o.add_argument("--out", default="results", metavar="DIR", help="folder of run folders (default results/)")
    o.add_argument("--run-id", metavar="NAME", help="name of the new run folder OUT/NAME (letters, digits, . _ -; "
                   "must not exist yet); default: date-time-random")
    o.add_argument("--resume", metavar="RUN_ID", help="finish the run OUT/RUN_ID (or a run folder path) without "
                                                        "redoing finished cases; the matrix is the run's own")
    o.add_argument("--retry-failed", nargs="?", const="error,timeout,oom", default=None, metavar="STATUSES",
                   help="with --resume: measure again the cases that ended with these statuses (comma list of "
                        "oom, timeout, error, unsupported, skipped; default error,timeout,oom)")
    o.add_argument("--allow-missing", action="store_true",
                   help="record cases on devices that are not present as 'skipped' instead of exiting with 2")
    o.add_argument("--baseline", metavar="RUN", help="after the run, compare it against this run (a run id in OUT, a "
                   "run folder or a results file) as `compare` does; exit 1 on a regression")
    o.add_argument("--allow-noisy", action="store_true",
                   help="with --baseline: judge cases measured on a busy machine instead of refusing (exit 3)")
    o.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    o.add_argument("--report-dir", metavar="DIR",
                   help="folder of the HTML report <run-id>.html (+ .md, figures); default: reports/ beside OUT, "
                        "in the parent OUT names (the working folder for a one-part OUT such as the default "
                        "results), or OUT/reports when OUT names no parent to sit in ('.', '..', a folder at the "
                        "file-system root): never a shared folder above the one you named")
    o.add_argument("--no-calibrate", action="store_true", help="skip the matmul calibration (no frac_of_peak)")
    o.add_argument("--list", action="store_true",
                   help="print the cases of the matrix, each with a rough estimate of its seconds (MACs at an "
                        "assumed 10 GMAC/s, no calibration, within the time budgets), and the total; then exit "
                        "(nothing measured)")
    o.add_argument("-v", "--verbose", action="store_true", help="one line per case on stderr")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The matrix, timing and output options (`run`'s, shared with `profile`)."""
    _matrix_arguments(p)
    _timing_arguments(p)
    _output_arguments(p)
    add_cluster_arguments(p)
