"""A/B compares: A and B measured alternately in the same processes, so the machine's drift cancels.

    frame, folder = bench.ab.run_ab(a="evit-b1:msla", b="evit-b1:relu-linear", res=512)
    frame, folder = bench.ab.run_ab(a_rev="HEAD~1")        # the default models at HEAD~1 vs the working tree
    ab = bench.ab.load_ab(folder)                           # .results, .samples, .meta, each file checked

The parent side of `run_bench.py ab`: matrix (options -> A's cases and both sides), sides (--a/--b/--a-rev,
the temporary worktree), engine (interleaved short processes, sequential looks), decide (the rule: a t interval
on the mean per-process log ratio against the midpoint log(1 + T/2), Bonferroni over the checkpoints), store
(the OUT/ab-* folder, and `load_ab` to read it back), output (tables, Markdown, JSON). The child half is
bench.ab.child (in the measuring child's layer); spec is the JSON record between them. Re-exported lazily: the
child imports bench.ab.spec and bench.ab.child without pandas.
"""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "run_ab":
        from bench.ab.engine import run_ab

        return run_ab
    if name == "load_ab":
        from bench.ab.store import load_ab

        return load_ab
    raise AttributeError(f"module 'bench.ab' has no attribute {name!r}")


__all__ = ["load_ab", "run_ab"]
