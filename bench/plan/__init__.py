"""A run's plan: what the user asked (CLI flags or Python arguments) -> validated configuration + the case matrix.

Everything is checked here, before a run folder exists, so bad input costs nothing and is answered with one line
(`PlanError`, which the CLI prints with exit status 2). Options take Python values or the CLI's comma strings
alike: `res=[512, (1024, 2048)]` or `res="512,1024x2048"`; bench.plan.parse turns what the user typed into typed
values (one list parser, `parse_list`), this module checks their combination and makes the plan, and bench.cases
(what a case is) expands the matrix from those values.
"""
from __future__ import annotations

import inspect
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from bench.cases import Case, CaseError, expand
from bench.env import cuda_count, device_name, physical_cores, usable_cpus
from bench.errors import BenchInputError, bool_arg, refuse
from bench.groups.budget import DEFAULT_BUDGET_S, DESIGNS, PROCESS_TIME_S, QUICK_PROCESS_TIME_S
from bench.plan.parse import INT64_MAX, int_list, own_sizes, parse_list, parse_resolutions, select_models
from bench.launch.isolation import isolation_kind

QUICK_MODELS = ("evit-b1:msla", "evit-b1:softmax")
DEFAULT_RES = "512,1024,2048"
METRICS = ("time", "instructions")  # instructions: also count CPU instructions per forward (valgrind callgrind)


class PlanError(BenchInputError):
    """Bad run options; the message is one line naming what is accepted."""


class Config(dict):
    """A plan's configuration: a dict that refuses changes (JSON and pickle take it as a dict does)."""

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a plan's config is read-only; make another Plan (e.g. with {**plan.config, ...})")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only  # type: ignore

    def __reduce__(self) -> tuple:
        return Config, (dict(self),)


@dataclass(frozen=True)
class Plan:
    config: Mapping[str, Any]  # a Config, read-only: meta.json's "config" is written from it
    cases: list[Case]
    missing: set[str] = field(default_factory=set)  # devices asked for but absent (--allow-missing)
    warnings: list[str] = field(default_factory=list)  # one line each; the CLI prints them as warnings

    def __post_init__(self) -> None:
        if not isinstance(self.config, Config):
            object.__setattr__(self, "config", Config(self.config))


def devices_of(value: Any, allow_missing: bool) -> tuple[list[tuple[str, str]], set[str]]:
    """(device, device_name) pairs for --devices, and the absent ones recorded as skipped (--allow-missing)."""
    n_cuda = cuda_count()
    accepted = "cpu" + (", cuda, " + ", ".join(f"cuda:{i}" for i in range(n_cuda)) if n_cuda else "")
    out, missing = [], set()
    for d in parse_list(value, "--devices"):
        d = "cuda:0" if d.lower() == "cuda" else d.lower()
        if d == "cpu":
            out.append((d, device_name("cpu")))
            continue
        if not (d.startswith("cuda:") and d[5:].isdigit()):
            raise PlanError(f"--devices: unknown device {d!r}; accepted here: {accepted}")
        if int(d[5:]) >= n_cuda:
            if not allow_missing:
                why = "no CUDA device on this machine" if n_cuda == 0 else f"only {n_cuda} CUDA device(s)"
                raise PlanError(f"--devices: {d} is not present ({why}); accepted here: {accepted} "
                                "(or --allow-missing to record it as skipped)")
            missing.add(d)
            out.append((d, "absent"))
            continue
        out.append((d, device_name(d)))
    return list(dict.fromkeys(out)), missing


def _models(models: Any, level: str, res: list[tuple[int, int]], quick: bool) -> list[str]:
    from models.registry import check_resolution

    spec = parse_list(models, "--models") if models is not None else (list(QUICK_MODELS) if quick else None)
    names = select_models(spec, level)
    for name in names:
        for h, w in res:
            why = check_resolution(name, h, w)
            if why:
                raise PlanError(f"--res: {why}")
    return names


def choice_list(value: Any, what: str, accepted: Sequence[str]) -> list[str]:
    items = parse_list(value, what)
    for v in items:
        if v not in accepted:
            raise PlanError(f"{what}: unknown {what.lstrip('-').rstrip('s')} {v!r}; accepted: {', '.join(accepted)}")
    return items


def _real(v: Any) -> bool:
    """A number or a numeric string (not a bool: True is not one second)."""
    return isinstance(v, str) or (isinstance(v, numbers.Real) and not isinstance(v, bool))


def _seconds(name: str, v: float) -> float:
    if not _real(v):
        raise PlanError(f"{name}: {v!r} is not accepted; accepted: a positive number of seconds")
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise PlanError(f"{name}: {v!r} is not accepted; accepted: a positive number of seconds") from None
    if not (v > 0 and math.isfinite(v)):
        raise PlanError(f"{name}: {v} is not accepted; accepted: a positive number of seconds")
    return v


def timing_options(quick: bool, min_time: float | None, max_time: float | None, timeout: float | None,
            repeats: int | None) -> dict[str, Any]:
    t = {"min_time_s": _seconds("--min-time", min_time if min_time is not None else (0.05 if quick else 0.5)),
         "max_time_s": _seconds("--max-time", max_time if max_time is not None else (0.3 if quick else 5.0)),
         "timeout_s": _seconds("--timeout", timeout if timeout is not None else (120.0 if quick else 600.0))}
    if t["min_time_s"] > t["max_time_s"]:
        raise PlanError(f"--min-time {t['min_time_s']} is above --max-time {t['max_time_s']}; "
                        "accepted: min-time <= max-time")
    r = 1 if repeats is None else repeats
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= 100:
        raise PlanError(f"--repeats: {r!r} is not accepted; accepted: an integer from 1 to 100")
    t["repeats"] = r
    return t


def oversubscription_warnings(threads: Iterable[int], devices: Iterable[str]) -> list[str]:
    """One line per CPU thread count above the CPUs this process may use (sched_getaffinity): such cases time
    the threads' contention for the cores, not the model (their rows say so in cpu_oversubscription)."""
    if not any(d == "cpu" for d in devices):
        return []
    n = usable_cpus()
    return [f"--threads {t}: more threads than the {n} CPU(s) this process may use; those CPU cases are "
            f"oversubscribed {t / n:.3g}x and time the threads' contention, not the model (cpu_oversubscription "
            "in their rows)" for t in threads if t > n]


WAIT_QUIET_ENV = "DENSEBENCH_WAIT_QUIET"  # the default of --wait-quiet (e.g. 0 in a test suite that makes noise)
DEFAULT_WAIT_QUIET_S = 120.0


def default_wait_quiet() -> float | str:
    """--wait-quiet's default: DENSEBENCH_WAIT_QUIET when set, else 120 s (checked with the option)."""
    v = os.environ.get(WAIT_QUIET_ENV)
    return DEFAULT_WAIT_QUIET_S if v is None else v


def design_options(design: str, budget: float | None, tie: float, wait_quiet: float | str | None,
                   quick: bool) -> dict[str, Any]:
    """--design, --budget, --tie, --wait-quiet checked (PlanError) and as config keys."""
    what = "--wait-quiet"
    if wait_quiet is None:
        wait_quiet, what = default_wait_quiet(), ("--wait-quiet" if WAIT_QUIET_ENV not in os.environ
                                                  else WAIT_QUIET_ENV)

    if design not in DESIGNS:
        raise PlanError(f"--design: {design!r} is not accepted; accepted: {', '.join(DESIGNS)}")
    b = _seconds("--budget", budget if budget is not None else (20.0 if quick else DEFAULT_BUDGET_S))
    try:
        t = float(tie) if _real(tie) else math.nan
    except (TypeError, ValueError):
        t = math.nan
    if not (0 < t < 1):
        raise PlanError(f"--tie: {tie!r} is not accepted; accepted: a fraction between 0 and 1 (0.02: 2%)")
    try:
        w = float(wait_quiet) if _real(wait_quiet) else math.nan
    except (TypeError, ValueError):
        w = math.nan
    if not (0 <= w <= 86400):
        raise PlanError(f"{what}: {wait_quiet!r} is not accepted; accepted: seconds from 0 (never wait) to 86400")
    return {"design": design, "budget_s": b, "tie": t, "wait_quiet_s": w,
            "process_time_s": QUICK_PROCESS_TIME_S if quick else PROCESS_TIME_S}


def make_plan(models: Any = None, *, level: str = "both", res: Any = DEFAULT_RES, devices: Any = "cpu",
              batch: Any = 1, precision: Any = None, threads: Any = None, backends: Any = "eager",
              channels_last: bool = False, fold: bool = False, min_time: float | None = None,
              max_time: float | None = None, timeout: float | None = None, repeats: int | None = None,
              seed: int = 0, quick: bool = False, calibrate: bool = True, allow_missing: bool = False,
              models_from: Iterable[str] = (), metric: str = "time", profile: bool = False,
              design: str = "interleaved", budget: float | None = None, tie: float = 0.02,
              wait_quiet: float | None = None) -> Plan:
    """Validate the options and expand the matrix. Raises PlanError; writes nothing.

    Defaults are the main job's: the four EfficientViT-B1 variants and their mixers alone, at 512, 1024 and 2048,
    on the CPU with as many threads as physical cores, eager fp32 (fp16 on CUDA). `quick` is a seconds-long smoke
    matrix (evit-b1 msla and softmax, 128x128, 1 thread, short budgets); explicit options still apply.
    design "interleaved" (default) measures the cases of one decision in the same processes until it is decided
    or `budget` seconds are spent (bench.groups); "isolated" gives every case its own processes. `tie`: the
    equivalence margin of a paired decision; `wait_quiet`: the longest wait for a quiet machine (0: never wait;
    default DENSEBENCH_WAIT_QUIET or 120 s).
    """
    check_options(dict(locals()))  # the parameters as given: names and types, before anything is imported
    from bench import backends as backend_registry  # torch's version, for what each backend supports

    try:
        timing = timing_options(quick, min_time, max_time, timeout, repeats)
        sources = load_sources(models_from, timing["timeout_s"])  # users' code: in a child, with the case timeout
        resolutions = parse_resolutions("128" if quick and res == DEFAULT_RES else res)
        own = not resolutions
        names = _models(models, level, resolutions, quick)
        if own:  # every model's own input size, and only that size for each model
            resolutions = own_sizes(names)
        dev_pairs, missing = devices_of(devices, allow_missing)
        backs = choice_list(backends, "--backends", backend_registry.BACKENDS)
        precs = choice_list(precision, "--precision", backend_registry.PRECISIONS) if precision is not None else None
        precisions = {"cpu": precs, "cuda": precs} if precs else {"cpu": ["fp32"], "cuda": ["fp16"]}
        batches = int_list(batch, "--batch")
        thr = int_list(threads, "--threads") if threads is not None else [1 if quick else min(physical_cores(),
                                                                                           usable_cpus())]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= INT64_MAX:
            raise PlanError(f"--seed: {seed!r} is not accepted; accepted: an integer from 0 to {INT64_MAX}")
        timing.update(design_options(design, budget, tie, wait_quiet, quick))
        if timing["repeats"] > 1 and design != "isolated":
            raise PlanError(f"--repeats {timing['repeats']}: only with --design isolated (the interleaved design "
                            "measures each decision group in as many processes as its decision needs)")
        if metric not in METRICS:
            raise PlanError(f"--metric: {metric!r} is not accepted; accepted: {', '.join(METRICS)}")
        check_environment()
    except CaseError as e:
        raise PlanError(str(e)) from None
    cases = expand(names, resolutions, dev_pairs, backs, precisions, batches, thr, channels_last=channels_last,
                   fold=fold, seed=seed, min_time_s=timing["min_time_s"], max_time_s=timing["max_time_s"],
                   timeout_s=timing["timeout_s"], own_size=own)
    config = {"models": names, "level": level, "resolutions": [f"{h}x{w}" for h, w in resolutions],
              "own_size": own,
              "devices": [d for d, _ in dev_pairs], "device_names": dict(dev_pairs),
              "missing_devices": sorted(missing), "backends": backs, "precisions": precisions, "batches": batches,
              "threads": thr, "threads_default": None if threads is not None else
              ("1 (--quick)" if quick else "min(physical cores, usable cpus)"),
              "channels_last": channels_last, "fold": fold, "seed": seed, **timing, "quick": quick,
              "calibrate": calibrate, "models_from": sources, "metric": metric, "profile": bool(profile)}
    warnings = oversubscription_warnings(thr, [d for d, _ in dev_pairs])
    return Plan(config=config, cases=cases, missing=missing, warnings=warnings)


BOOL_OPTIONS = ("channels_last", "fold", "quick", "calibrate", "allow_missing", "profile")
STR_OPTIONS = ("level", "metric", "design")


def check_options(options: dict[str, Any]) -> None:
    """The options' names and types (PlanError, one line) before anything looks at their values: make_plan's
    first step, and what bench.api.run checks before it joins a cluster. A str stands for a list (a comma list,
    or one file for models_from); an int, a float or None where a list is expected, a bool where a number is, or
    anything but a bool where a flag is, is refused here rather than failing deep inside."""
    names = list(inspect.signature(make_plan).parameters)
    unknown = [k for k in options if k not in names]
    if unknown:
        raise PlanError(f"unknown option {unknown[0]!r}; accepted: {', '.join(names)}")
    for k in BOOL_OPTIONS:
        if k in options:
            bool_arg(k, options[k], PlanError)
    for k in STR_OPTIONS:
        if k in options and not isinstance(options[k], str):
            raise refuse(f"--{k}", options[k], "a string (see make_plan)", PlanError)
    try:
        if "res" in options:
            parse_resolutions(options["res"])
        for k in ("batch", "threads"):
            if options.get(k) is not None:
                int_list(options[k], f"--{k}")
        for k in ("models", "devices", "precision", "backends"):
            if options.get(k) is not None:
                parse_list(options[k], f"--{k}")
    except CaseError as e:
        raise PlanError(str(e)) from None
    resolve_sources(options.get("models_from"))


def check_environment() -> None:
    """The environment variables the engine reads, checked before anything is written (one line, PlanError)."""
    try:
        isolation_kind()
    except ValueError as e:
        raise PlanError(str(e)) from None
    if WAIT_QUIET_ENV in os.environ:
        design_options("interleaved", None, 0.02, None, False)  # checks DENSEBENCH_WAIT_QUIET on its own


def resolve_sources(models_from: Iterable[str]) -> list[str]:
    """--models-from values followed by DENSEBENCH_MODELS_FROM's (os.pathsep-separated), .py paths made absolute
    (children and --resume import them from another working directory), no repeats."""
    from models.user import MODELS_FROM_ENV

    env = [s for s in os.environ.get(MODELS_FROM_ENV, "").split(os.pathsep) if s.strip()]
    given = [models_from] if isinstance(models_from, (str, os.PathLike)) else \
        () if models_from is None else models_from
    accepted = "a path to a .py file or a package.module (str or os.PathLike), or a list of them"
    if not isinstance(given, (list, tuple, set, frozenset)):
        raise refuse("--models-from", models_from, accepted, PlanError)
    bad = [s for s in given if not isinstance(s, (str, os.PathLike))]
    if bad:
        raise refuse("--models-from", bad[0], accepted, PlanError)
    out = []
    for spec in [*given, *env]:
        spec = os.fspath(spec).strip()
        if not spec:
            raise PlanError("--models-from: empty value; accepted: a path to a .py file or a package.module")
        out.append(str(Path(spec).resolve()) if spec.endswith(".py") else spec)
    return list(dict.fromkeys(out))


def load_sources(models_from: Iterable[str], timeout_s: float | None = None) -> list[str]:
    """Register users' model files' models so that they can be named in the matrix; the resolved sources. The
    files are imported in a child process (bench.launch.usercode): this process never runs users' code, and an
    import that exits, crashes or hangs past `timeout_s` is a PlanError naming the source."""
    from bench.launch.usercode import DEFAULT_TIMEOUT_S, register_sources
    from models.user import ModelSourceError

    sources = resolve_sources(models_from)
    try:
        register_sources(sources, DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s)
    except ModelSourceError as e:
        raise PlanError(f"--models-from: {e}") from None
    return sources


__all__ = ["Plan", "PlanError", "check_options", "devices_of", "load_sources", "make_plan", "oversubscription_warnings",
           "resolve_sources"]
