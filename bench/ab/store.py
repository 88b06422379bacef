"""An A/B compare's folder OUT/ab-<date>-<time>-<rand>/: ab.parquet (one row per case), ab_samples.parquet
(case_id, process, side, iter, latency_ms) and meta.json (environment, sides, configuration, status), each
rewritten atomically (bench.files) after every round, so an interrupted compare leaves what it had measured.

Columns of ab.parquet: A's IDENTITY and case_id; model_a / model_b (the sides as named), rev_a / rev_b (--a-rev:
the revision and "working tree"), backend_b, design (same-process | pairs); processes (children run), n (per-process
log ratios: one per process, or per pair of processes); ratio = exp(mean log ratio), ci_low / ci_high (its CI as
ratios) at `confidence`; sd_log (SD of the per-process log ratios); a_median_ms / b_median_ms (median over
processes of each process's median, ms per call); block (calls per ABBA block), cycles (median ABBA cycles per
process); verdict (bench.ab.decide.VERDICTS), reason, wall_s (the case's processes). Samples are ms per call of
one ABBA block (same-process) or of one call (pairs), `iter` counting per side within a process."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from bench.ab.decide import Decision
from bench.ab.spec import Side
from bench.cases import IDENTITY, Case
from bench.files import atomic_write

RESULTS = "ab.parquet"
SAMPLES = "ab_samples.parquet"
COLUMNS = (*IDENTITY, "case_id", "model_a", "model_b", "rev_a", "rev_b", "backend_b", "design", "processes", "n",
           "ratio", "ci_low", "ci_high", "confidence", "sd_log", "a_median_ms", "b_median_ms", "block", "cycles",
           "verdict", "reason", "wall_s")
SAMPLE_COLUMNS = ("case_id", "process", "side", "iter", "latency_ms")


@dataclass
class CaseRun:
    """One case while it is measured: its per-process log ratios, per-process medians, samples and its fate."""

    case: Case
    a: Side
    b: Side
    ratios: list[float] = field(default_factory=list)
    a_ms: list[float] = field(default_factory=list)  # per-process medians
    b_ms: list[float] = field(default_factory=list)
    cycles: list[int] = field(default_factory=list)  # ABBA cycles per process (same-process design)
    block: int | None = None  # calls per ABBA block (the last process's)
    samples: list[tuple] = field(default_factory=list)  # SAMPLE_COLUMNS
    processes: int = 0
    wall_s: float = 0.0
    look: Decision | None = None  # the latest look with numbers
    failure: str = ""

    @property
    def open(self) -> bool:
        return not self.failure and (self.look is None or self.look.verdict == "continue")

    def add_samples(self, process: int, pairs: Iterable[tuple[str, float]]) -> None:
        count = {"a": 0, "b": 0}
        for side, ms in pairs:
            self.samples.append((self.case.case_id, process, side, count[side], float(ms)))
            count[side] += 1


def _exp(v: float | None) -> float:
    return math.exp(v) if v is not None and math.isfinite(v) else float("nan")


def result_row(run: CaseRun, design: str, revs: tuple[str, str]) -> dict[str, Any]:
    """The case's row: A's identity, the sides, the statistic as ratios, the medians and the verdict."""
    d = run.look
    verdict = "failed" if run.failure else (d.verdict if d is not None else "undecided")
    if verdict == "continue":
        verdict = "undecided"
    reason = run.failure or (d.reason if d is not None else "not measured")
    return {**run.case.identity(), "case_id": run.case.case_id, "model_a": run.a.label, "model_b": run.b.label,
            "rev_a": revs[0], "rev_b": revs[1], "backend_b": run.b.backend, "design": design,
            "processes": run.processes, "n": len(run.ratios),
            "ratio": _exp(float(np.mean(run.ratios))) if run.ratios else float("nan"),
            "ci_low": _exp(d.ci_low) if d else float("nan"), "ci_high": _exp(d.ci_high) if d else float("nan"),
            "confidence": d.confidence if d else float("nan"),
            "sd_log": float(np.std(run.ratios, ddof=1)) if len(run.ratios) > 1 else float("nan"),
            "a_median_ms": float(np.median(run.a_ms)) if run.a_ms else float("nan"),
            "b_median_ms": float(np.median(run.b_ms)) if run.b_ms else float("nan"),
            "block": run.block, "cycles": float(np.median(run.cycles)) if run.cycles else float("nan"),
            "verdict": verdict, "reason": reason, "wall_s": run.wall_s}


def results_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=list(COLUMNS))


def samples_frame(runs: Iterable[CaseRun]) -> pd.DataFrame:
    df = pd.DataFrame([s for r in runs for s in r.samples], columns=list(SAMPLE_COLUMNS))
    return df.astype({"case_id": "string", "process": "int64", "side": "string", "iter": "int64",
                      "latency_ms": "float64"})


def save(folder: Path, results: pd.DataFrame, samples: pd.DataFrame, meta: dict[str, Any]) -> None:
    from bench.results.store import write_meta

    atomic_write(folder / RESULTS, lambda p: results.to_parquet(p, index=False))
    atomic_write(folder / SAMPLES, lambda p: samples.to_parquet(p, index=False))
    write_meta(folder, meta)
