"""`run_bench.py profile [matrix options]`: `run --profile` under its own name. Each case is timed as `run` times
it, then profiled in a pass apart from the timing (bench.profiling), so the profiler's overhead never touches a
latency figure; profile.parquet, traces/ and the report's "Where the time goes" say where the time goes."""
from __future__ import annotations

import argparse

from bench.commands import run
from bench.commands.common import add_run_arguments
from bench.errors import PROG

NAME = "profile"

DESCRIPTION = """\
Where the time goes: every case of the matrix timed as `run` times it, then profiled apart from the timing
(torch.profiler for eager PyTorch, ONNX Runtime's profiler for onnxruntime, TensorRT's layer profile), attributed
to op kinds (1x1 conv, depthwise conv by kernel, strip convs, matmul, fused attention, softmax, normalisation,
elementwise, resize, layout, ...) and to modules (stem, stages, each block's mixer vs FFN, head), with MACs, bytes,
arithmetic intensity and achieved GMAC/s against the device setting's roofline (calibrated matmul peak and triad
bandwidth). Outputs: OUT/<run-id>/profile.parquet (bench.schema.PROFILE_COLUMNS), a trace per case in
OUT/<run-id>/traces/ (Perfetto / chrome://tracing), and the report.
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, prog=f"{PROG} {NAME}", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="time and profile the matrix: where the time goes per op kind and module")
    add_run_arguments(p)
    p.set_defaults(func=main)
    return p


def main(a: argparse.Namespace) -> int:
    a.profile = True
    return run.main(a)
