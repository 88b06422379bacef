"""densebench's engine: cases -> runner -> launch -> backends -> measure -> results -> analysis.

The Python API (bench.api) is re-exported here lazily: `import bench` imports nothing heavy (bench.api loads
pandas for its Run frames), since the per-case child imports only torch, the models and the measuring modules,
never pandas. The errors' base (bench.errors, a leaf) is imported at once.

    bench.run(models=..., res=..., devices=..., backends=..., ...) -> Run (.results, .samples, .meta, .path)
    bench.profile(models=..., res=...) -> Run (+ .profile: where the time goes per op kind and module)
    bench.resume(path) -> Run;  bench.load_run(path) -> Run
    bench.compare(a, b) -> DataFrame;  bench.report(runs, path) -> Path
    bench.BenchInputError: the base of every bad-input error (bench.PlanError, bench.ArgumentError, ...)
"""
from __future__ import annotations

from typing import Any

from bench.errors import ArgumentError, BenchInputError

# PlanError comes with the API (bench.plan, loaded by bench.api): every bad-input error (PlanError, ArgumentError,
# CaseError, RunFolderError, ...) is a BenchInputError
_API = ("run", "profile", "resume", "load_run", "compare", "report", "Run", "RunInterrupted", "PlanError")
_ERRORS = ("BenchInputError", "ArgumentError")


def __getattr__(name: str) -> Any:
    if name in _API:
        from bench import api

        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")


__all__ = [*_API, *_ERRORS]
