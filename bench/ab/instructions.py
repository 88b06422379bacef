"""`ab --metric instructions`: A and B counted, not timed, in the same valgrind process.

Instruction counts of the same code are deterministic to ~0.1% (bench.measure.instructions: forwards of one
process agree to 0.06-0.07%, two processes to 0.02%), so no statistics over processes are needed: B differs from A
when the counts differ by more than the counting noise. Rule: r = instructions B / instructions A; slower if
r > 1 + tol, faster if r < 1 / (1 + tol), else unchanged, with tol = max(INSTR_TOLERANCE, 3 x the larger
within-process spread of the two). A side that could not be counted makes the case `failed` with the reason.
What a count cannot see is in bench.measure.instructions' docstring (cache and memory-bandwidth effects, more
than one thread, GPU work): a change there shows in the wall-time verdict only.

Each side is built in the valgrind child exactly as the timed child builds it (bench.measure.ab.build_side): a
small generated builder file per side holds its Side record, so registry models, users' files and another git
revision's models are all counted the same way.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Mapping

from bench.ab.spec import Side
from bench.cases import Case
from bench.launch.workdir import temporary_workdir

INSTR_TOLERANCE = 0.005  # 0.5%: ~7x the spread of the forwards of one process measured on the development VM
COLUMNS = ("instructions_a", "instructions_b", "instructions_ratio", "instructions_verdict",
           "instructions_reason")


def judge(a: float, b: float, spread_pct: float) -> tuple[float, str]:
    """(ratio B/A, verdict) of two counts whose forwards spread by `spread_pct` percent at most."""
    r = b / a
    tol = max(INSTR_TOLERANCE, 3 * spread_pct / 100)
    if r > 1 + tol:
        return r, "slower"
    if r < 1 / (1 + tol):
        return r, "faster"
    return r, "unchanged"


def _builder_file(work: Path, tag: str, side: Side, seed: int) -> str:
    """A .py file whose `build()` builds `side` as the timed child does; returns 'path.py:build'."""
    path = work / f"side_{tag}.py"
    path.write_text("# written by bench.ab.instructions for one valgrind count\n"
                    "import json\n\nfrom bench.ab.spec import Side\nfrom bench.measure.ab import build_side\n\n"
                    f"SIDE = Side(**json.loads({json.dumps(json.dumps(asdict(side)))}))\n\n\n"
                    f"def build():\n    return build_side(SIDE, {int(seed)})\n")
    return f"{path}:build"


def count_case(case: Case, a: Side, b: Side, *, env: Mapping[str, str] | None = None,
               log: Callable[[str], None] | None = None) -> dict:
    """The instruction columns of one case (A and B alternating in one valgrind process)."""
    from bench.measure.instructions import count_pair_instructions

    if case.device_type != "cpu":
        return {"instructions_verdict": "failed", "instructions_reason": "instructions count CPU work only"}
    with temporary_workdir("ab-instr") as work:
        if log:
            log(f"instructions: {case.label()}: A and B in one valgrind process (torch start-up ~1 min)")
        ca, cb = count_pair_instructions(case, case, builder_a=_builder_file(work, "a", a, case.seed),
                                         builder_b=_builder_file(work, "b", b, case.seed), workdir=work, env=env)
    reason = "; ".join(f"{side}: {c.reason}" for side, c in (("A", ca), ("B", cb)) if c.reason)
    if reason or not (math.isfinite(ca.instructions) and ca.instructions > 0):
        return {"instructions_verdict": "failed", "instructions_reason": reason or "no count"}
    ratio, verdict = judge(ca.instructions, cb.instructions, max(ca.spread_pct, cb.spread_pct))
    return {"instructions_a": ca.instructions, "instructions_b": cb.instructions, "instructions_ratio": ratio,
            "instructions_verdict": verdict,
            "instructions_reason": f"forwards spread {max(ca.spread_pct, cb.spread_pct):.3f}% at most"}
