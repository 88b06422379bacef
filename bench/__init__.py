"""densebench's engine: cases -> runner -> launch -> backends -> measure -> results -> analysis.

The Python API (bench.api) is re-exported here lazily: `import bench` imports nothing heavy, since the per-case
child imports only torch, the models and the measuring modules, never pandas.

    bench.run(models=..., res=..., devices=..., backends=..., ...) -> Run (.results, .samples, .meta, .path)
    bench.profile(models=..., res=...) -> Run (+ .profile: where the time goes per op kind and module)
    bench.resume(path) -> Run;  bench.load_run(path) -> Run
    bench.compare(a, b) -> DataFrame;  bench.report(runs, path) -> Path
    bench.BenchInputError: the base of every bad-input error (bench.PlanError, bench.ArgumentError, ...)
"""
from __future__ import annotations

from typing import Any

_API = ("run", "profile", "resume", "load_run", "compare", "report", "Run", "RunInterrupted")
# every bad-input error (PlanError, ArgumentError, CaseError, RunFolderError, ...) is a BenchInputError
_ERRORS = ("BenchInputError", "ArgumentError")


def __getattr__(name: str) -> Any:
    if name in _API:
        from bench import api

        return getattr(api, name)
    if name in _ERRORS or name == "PlanError":
        from bench import errors, plan

        return getattr(plan if name == "PlanError" else errors, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")


__all__ = [*_API, *_ERRORS, "PlanError"]
