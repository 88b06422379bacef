"""Synthetic run folders for the compare and gates tests (real files written through bench.store)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.cases import case_key
from bench.stats import summarize
from bench.results.store import Run, results_frame, samples_frame, write_meta, write_results, write_samples

CPU = "Test CPU @ 2.0GHz"
ENV = {"cpu_model": CPU, "torch_version": "2.14.1", "threads": 1, "python": "3.11.7"}


def case(model: str, h: int = 512, w: int = 512, samples=None, status: str = "ok", rate: float | None = 100.0,
         groups=None, **extra) -> dict:
    """A result row (and its samples). `groups`: one sample array per process instead of `samples` (--repeats)."""
    if groups is not None:
        samples = np.concatenate(groups)
        extra.setdefault("repeats", len(groups))
    row = dict(model=model, level="block" if model.startswith("block:") else "model", height=h, width=w,
               device="cpu", device_name=CPU, backend="eager", precision="fp32", batch=1, threads=1,
               channels_last=False, folded=False, status=status, reason="" if status == "ok" else "boom",
               device_peak_gmacs_per_s=rate, converged=True)
    row.update(extra)
    row["case_id"] = case_key(row)
    if status == "ok" and samples is not None:
        s = summarize(samples)
        row.update(n=s["n"], **{f"latency_ms_{k}": s[k] for k in s if k != "n"})
    row["_samples"] = samples if groups is None else [np.asarray(g) for g in groups]
    return row


def build_run(name: str, cases: list[dict], env: dict | None = None) -> Run:
    """The same run in memory (no files), for loops where disk I/O would dominate."""
    rows, srows = _rows(name, cases, True)
    return Run(path=Path(name), results=results_frame(rows), samples=samples_frame(srows),
               meta={"run_id": name, "env": dict(ENV if env is None else env)})


def _rows(name, cases, with_samples):
    rows, srows = [], []
    for c in cases:
        c = dict(c)
        s = c.pop("_samples")
        c["run_id"] = name
        rows.append(c)
        if with_samples and s is not None and c["status"] == "ok":
            groups = s if isinstance(s, list) else [s]
            srows += [dict(run_id=name, case_id=c["case_id"], repeat=r, iter=i, latency_ms=float(v))
                      for r, g in enumerate(groups) for i, v in enumerate(g)]
    return rows, srows


def make_run(root: Path, name: str, cases: list[dict], env: dict | None = None, with_samples: bool = True) -> Path:
    d = Path(root) / name
    rows, srows = _rows(name, cases, with_samples)
    write_results(d, results_frame(rows))
    if with_samples:
        write_samples(d, samples_frame(srows))
    write_meta(d, {"run_id": name, "started_at": name, "env": dict(ENV if env is None else env)})
    return d


def noise(seed: int, n: int = 300, median: float = 10.0, cv: float = 0.02) -> np.ndarray:
    """Latency-like samples: lognormal body with a few slow outliers."""
    rng = np.random.default_rng(seed)
    x = median * rng.lognormal(0.0, cv, n)
    k = max(1, n // 50)
    x[rng.choice(n, k, replace=False)] *= rng.uniform(1.2, 3.0, k)
    return x
