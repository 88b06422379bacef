"""Benchmark of instruction counting at a shipped size (`ab --metric instructions`): where the valgrind time goes,
the wall time per verdict, A/A agreement and the detection of +5% MACs (not a test).

    python -m tools.bench_instructions                         # evit-b0:msla 512x512, 1 and 3 forwards, both layouts
    python -m tools.bench_instructions --model block:msla --res 256 --forwards 1 --layouts parallel

Per layout (one: A and B alternating in one valgrind process; parallel: a process a side, both at once, what
`ab --metric instructions` does where 2 CPUs are free) and number of counted forwards F: an A/A pair (A and B both
the registry model) and a pair whose B is the model followed by an extra 1x1 convolution on a preallocated buffer
holding --extra (5%) of the model's MACs (bench.profiling.macs counts them). Reported: the pair's wall time and the
stages of each valgrind child (its own clock: torch imported, each side built and warmed up, instrumentation
switched on, the counted forwards), the ratio B/A and the verdict of bench.ab.decide.judge_counts, and the spread
of each side's forwards.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.ab.decide import judge_counts


def extra_size(model: str, height: int, width: int, fraction: float) -> int:
    """The width S of a (1, 64, 1, S) buffer whose 64->64 1x1 convolution has `fraction` of the model's MACs at
    height x width (bench.profiling.macs counts them; run in this process, not under valgrind)."""
    from bench.profiling.macs import count_costs, total_macs
    from models.registry import build_model, example_input

    macs = total_macs(count_costs(build_model(model).eval(), example_input(model, height, width, 1, seed=0)))
    return max(1, round(fraction * macs / (64 * 64)))


def with_extra_conv(model: str, size: int):
    """`model` followed by a 64->64 1x1 convolution over a preallocated (1, 64, 1, size) buffer."""
    import torch
    from torch import nn

    from models.registry import build_model

    inner = build_model(model).eval()

    class Extra(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.conv = inner, nn.Conv2d(64, 64, 1, bias=False)
            self.register_buffer("buf", torch.randn(1, 64, 1, size, generator=torch.Generator().manual_seed(0)))

        def forward(self, x):
            y = self.inner(x)
            self.conv(self.buf)
            return y

    return Extra().eval()


def _builder(work: Path, model: str, res: tuple[int, int], fraction: float) -> str:
    """A builder file the valgrind child imports: 'path.py:build', its buffer sized here (a MAC count under
    valgrind would add a forward's 40 s to B's build)."""
    size = extra_size(model, res[0], res[1], fraction)
    path = work / "extra_macs.py"
    path.write_text("from tools.bench_instructions import with_extra_conv\n\n\n"
                    f"def build():\n    return with_extra_conv({model!r}, {size})\n")
    return f"{path}:build"


def _pair(model: str, res: tuple[int, int], forwards: int, builder_b: str | None, work: Path, parallel: bool) -> dict:
    from bench.launch.callgrind import count_pair_instructions
    from tools.bench_checker import _cases

    case = _cases([model], [res], 1, 0.5, 2.0)[0]
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    a, b = count_pair_instructions(case, case, builder_b=builder_b, forwards=forwards, workdir=work,
                                   timeout_s=1800, parallel=parallel)
    wall = time.perf_counter() - t0
    stages = [json.loads(p.read_text()).get("stages", {}) for p in sorted(work.glob("valgrind-*/result.json"))]
    if a.reason or b.reason:
        return {"wall_s": wall, "stages": stages, "reason": a.reason or b.reason}
    ratio, verdict = judge_counts(a.instructions, b.instructions, max(a.spread_pct, b.spread_pct))
    return {"wall_s": wall, "stages": stages, "ratio": ratio, "verdict": verdict, "instructions_a": a.instructions,
            "spread_pct": max(a.spread_pct, b.spread_pct), "reason": ""}


def _line(layout: str, kind: str, forwards: int, r: dict) -> str:
    stages = "; ".join(", ".join(f"{k} {v:.0f} s" for k, v in one.items()) for one in r["stages"])
    head = f"| {layout} | {kind} | {forwards} | {r['wall_s']:.0f} s | {stages} |"
    if r["reason"]:
        return head + f" failed: {r['reason']} | | |"
    return head + f" {r['ratio']:.4f} | {r['verdict']} | {r['spread_pct']:.3f}% |"


def _choices(*allowed: str):
    """An argparse type: a comma list of `allowed` words (a typo is argparse's one-line error, exit 2)."""
    def parse(text: str) -> list[str]:
        words = [w.strip() for w in text.split(",") if w.strip()]
        bad = [w for w in words if w not in allowed]
        if bad or not words:
            raise argparse.ArgumentTypeError(f"{text!r}; accepted: a comma list of {', '.join(allowed)}")
        return words
    return parse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_instructions", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="evit-b0:msla")
    ap.add_argument("--res", default="512", help="N or HxW (default 512)")
    ap.add_argument("--forwards", default="1,3", help="comma list of counted forwards per side (default 1,3)")
    ap.add_argument("--pairs", type=_choices("aa", "extra"), default="aa,extra",
                    help="comma list of aa, extra (default both)")
    ap.add_argument("--layouts", type=_choices("one", "parallel"), default="one,parallel",
                    help="comma list of one, parallel (default both)")
    ap.add_argument("--extra", type=float, default=0.05, help="B's extra MACs as a fraction (default 0.05)")
    ap.add_argument("--keep", metavar="DIR", help="keep the valgrind folders here (default: a temporary folder)")
    a = ap.parse_args(argv)
    h, _, w = a.res.lower().partition("x")
    res = (int(h), int(w or h))
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    work.mkdir(parents=True, exist_ok=True)
    extra = _builder(work, a.model, res, a.extra)
    print(f"### Instruction counts of {a.model} at {res[0]}x{res[1]} (1 thread)\n")
    print("| layout | pair | forwards | pair's wall | stages of each valgrind child (end, seconds since it started) |"
          " B/A | verdict | forwards' spread |")
    print("|---|---|---:|---:|---|---:|---|---:|")
    for layout in a.layouts:
        for f in (int(v) for v in a.forwards.split(",")):
            for tag, kind, builder in (("aa", "A/A", None), ("extra", f"+{a.extra:.0%} MACs", extra)):
                if tag in a.pairs:
                    r = _pair(a.model, res, f, builder, work / f"{layout}-{tag}-{f}", layout == "parallel")
                    print(_line(layout, kind, f, r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
