"""An A/B compare's plan: options -> A's cases (the shared matrix, bench.plan.make_plan) and both sides per case.

Everything is checked here, before a folder, a worktree or a process exists (PlanError: one line, exit 2).
Which model a case is named after, and whose input both sides get:
- `--a NAME --b NAME`: A's model over --res/--threads/...; B's case is the same with B's model (same input shape).
- one side `PATH.py:FN`: the other side's registered model; both sides `PATH.py:FN`: each model of --models.
- `--a-rev REV`: each model of --models (default bench.plan.parse.DEFAULT_MODELS), A built at REV, B the working tree
  (or, with `--b-rev REV2`, at REV2: two commits compared, as history's confirmations and bisect do).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from bench.ab.sides import SideArg, check_builder, parse_side, resolve_rev
from bench.ab.spec import Side
from bench.cases import Case, CaseError
from bench.launch.childenv import REPO
from bench.plan import PlanError, load_sources, make_plan
from bench.plan.parse import DEFAULT_MODELS, parse_ints

DESIGNS = ("same-process", "pairs")
DEFAULT_CHECKPOINTS = (8, 16, 32, 64)


@dataclass(frozen=True)
class Rev:
    """--a-rev: the repository's top folder, the revision as given and the commit it names."""

    top: Path
    rev: str
    commit: str

    @property
    def label(self) -> str:
        return f"{self.rev} ({self.commit[:10]})"


@dataclass(frozen=True)
class ABPlan:
    cases: list[Case]  # A's cases
    a: SideArg | None
    b: SideArg | None
    rev: Rev | None
    backend_b: str | None
    design: str
    checkpoints: tuple[int, ...]
    config: dict[str, Any] = field(default_factory=dict)
    rev_b: Rev | None = None  # --b-rev: B at another revision too (history's confirmations and bisect)

    def sides(self, case: Case, tree: Path | None, tree_b: Path | None = None) -> tuple[Side, Side]:
        """(A, B) of one case; `tree`: the worktree of --a-rev, `tree_b` the one of --b-rev (None without)."""
        b_backend = self.backend_b or case.backend
        if self.rev is not None:
            a = Side("tree", case.model, case.backend, model=case.model, path=str(tree))
            if tree_b is not None:
                return a, Side("tree", case.model, b_backend, model=case.model, path=str(tree_b))
            if self.rev.top.resolve() == REPO.resolve():
                return a, Side("model", case.model, b_backend, model=case.model)
            return a, Side("tree", case.model, b_backend, model=case.model, path=str(self.rev.top))
        assert self.a is not None and self.b is not None
        return _side(self.a, case.backend), _side(self.b, b_backend)


def _side(arg: SideArg, backend: str) -> Side:
    if arg.is_file:
        return Side("file", arg.text, backend, path=arg.path, fn=arg.fn)
    return Side("model", arg.name, backend, model=arg.name)


def make_ab_plan(*, a: str | None = None, b: str | None = None, a_rev: str | None = None,
                 b_rev: str | None = None, repo: str | Path | None = None, models: Any = None, models_from: Iterable[str] = (),
                 res: Any = "512", threads: Any = None, backends: Any = "eager", backend_b: str | None = None,
                 precision: Any = None, devices: Any = "cpu", design: str | None = None, threshold: float = 0.05,
                 alpha: float = 0.01, max_time: float = 120.0, checkpoints: Any = DEFAULT_CHECKPOINTS,
                 process_time: float = 1.0) -> ABPlan:
    """Validate every option and expand A's cases; raises PlanError, writes nothing."""
    design = _design(design, backend_b)
    cps = _checkpoints(checkpoints)
    stats = {"threshold": _number("--threshold", threshold, 0, 10), "alpha": _number("--alpha", alpha, 0, 1),
             "max_time_s": _number("--max-time", max_time, 0, 86400),
             "process_time_s": _number("--process-time", process_time, 0, 600)}
    sources = load_sources(models_from)
    matrix = dict(res=res, devices=devices, threads=threads, backends=backends, precision=precision,
                  models_from=sources)
    sa, sb, rev = _sides(a, b, a_rev, repo, models)
    rev_b = _rev_b(b_rev, rev)
    if rev is not None:
        names = _names(models if models is not None else list(DEFAULT_MODELS), "--models")
    elif sa.is_file and sb.is_file:
        names = _names(models, "--models")
    else:
        names = [_one_model(sa if not sa.is_file else sb, "--a" if not sa.is_file else "--b")]
    cases = _cases(names, matrix)
    if sa is not None and not sa.is_file and not sb.is_file:
        _check_b(sb.name, cases)
    if backend_b is not None:
        from bench import backends as registry

        if backend_b not in registry.BACKENDS:
            raise PlanError(f"--backend-b: unknown backend {backend_b!r}; accepted: {', '.join(registry.BACKENDS)}")
    config = {**stats, "design": design, "checkpoints": list(cps), "backend_b": backend_b,
              "a": sa.text if sa else None, "b": sb.text if sb else None, "models": names,
              "a_rev": rev.label if rev else None, "b_rev": rev_b.label if rev_b else None,
              "repo": str(rev.top) if rev else None, **matrix}
    return ABPlan(cases, sa, sb, rev, backend_b, design, cps, config, rev_b)


def _rev_b(b_rev: str | None, rev: Rev | None) -> Rev | None:
    """--b-rev: B at a revision of --a-rev's repository instead of its working tree."""
    if b_rev is None:
        return None
    if rev is None:
        raise PlanError("--b-rev: only with --a-rev; accepted: --a-rev REV --b-rev REV (both sides at revisions)")
    top, commit = resolve_rev(rev.top, str(b_rev).strip(), flag="--b-rev")
    return Rev(top, str(b_rev).strip(), commit)


def _sides(a: str | None, b: str | None, a_rev: str | None, repo: str | Path | None,
           models: Any) -> tuple[SideArg | None, SideArg | None, Rev | None]:
    if a_rev is not None:
        if a is not None or b is not None:
            raise PlanError("--a-rev: not with --a/--b; accepted: --a-rev REV alone (A: the models at REV, B: the "
                            "working tree)")
        top, commit = resolve_rev(Path(repo) if repo is not None else REPO, str(a_rev).strip())
        return None, None, Rev(top, str(a_rev).strip(), commit)
    if repo is not None:
        raise PlanError("--repo: only with --a-rev; accepted: --a-rev REV [--repo DIR]")
    if a is None or b is None:
        raise PlanError(f"{'--b' if a is not None else '--a'}: missing; accepted: --a SIDE --b SIDE (a registered "
                        "model or PATH.py:FUNCTION each), or --a-rev REV")
    sa, sb = parse_side(a, "--a"), parse_side(b, "--b")
    for side, flag in ((sa, "--a"), (sb, "--b")):
        if side.is_file:
            check_builder(side, flag)
    if models is not None and not (sa.is_file and sb.is_file):
        raise PlanError("--models: only with --a-rev or with two builder files; accepted: the cases of --a NAME "
                        "are that model's")
    if models is None and sa.is_file and sb.is_file:
        raise PlanError("--models: missing; accepted: with --a and --b both PATH.py:FUNCTION, --models NAME (the "
                        "registered model whose input they take)")
    return sa, sb, None


def _names(models: Any, flag: str) -> list[str]:
    from models.registry import UnknownModelError, resolve_models

    items = [s.strip() for s in models.split(",")] if isinstance(models, str) else [str(s) for s in models]
    try:
        return resolve_models([s for s in items if s])
    except UnknownModelError as e:
        raise PlanError(f"{flag}: {e}") from None


def _one_model(side: SideArg, flag: str) -> str:
    from models.registry import UnknownModelError, get_model_info

    try:
        return get_model_info(side.name).name
    except UnknownModelError as e:
        raise PlanError(f"{flag}: {e}") from None


def _cases(names: Sequence[str], matrix: dict[str, Any]) -> list[Case]:
    """make_plan's cases of exactly these models: blocks at level block, the others at level model."""
    from models.registry import get_model_info

    blocks = [n for n in names if get_model_info(n).family == "block"]
    others = [n for n in names if n not in blocks]
    cases: list[Case] = []
    for group, level in ((others, "model"), (blocks, "block")):
        if group:
            cases.extend(make_plan(group, level=level, **matrix).cases)
    return cases


def _check_b(name: str, cases: Sequence[Case]) -> None:
    """B's model exists, takes every resolution and the same input as A's."""
    from models.registry import check_resolution, input_shape

    _one_model(SideArg(name, name=name), "--b")
    for c in cases:
        why = check_resolution(name, c.height, c.width)
        if why:
            raise PlanError(f"--b: {why}")
        sa, sb = input_shape(c.model, c.height, c.width, c.batch), input_shape(name, c.height, c.width, c.batch)
        if sa != sb:
            raise PlanError(f"--b: {name} takes an input of shape {sb} at {c.height}x{c.width}, {c.model} one of "
                            f"{sa}; accepted: two models with the same input")


def _design(design: str | None, backend_b: str | None) -> str:
    if design is not None and design not in DESIGNS:
        raise PlanError(f"--design: {design!r} is not accepted; accepted: {', '.join(DESIGNS)}")
    if backend_b is not None and design == "same-process":
        raise PlanError("--design same-process: not with --backend-b (A and B cannot share a process with two "
                        "backends); accepted: --design pairs")
    return design or ("pairs" if backend_b is not None else "same-process")


def _checkpoints(value: Any) -> tuple[int, ...]:
    text = value if isinstance(value, str) else ",".join(str(v) for v in value)
    try:
        cps = parse_ints(text, "--checkpoints", minimum=2)
    except CaseError as e:
        raise PlanError(str(e)) from None
    if list(cps) != sorted(cps) or cps[-1] > 10_000:
        raise PlanError(f"--checkpoints: {text!r} is not accepted; accepted: increasing process counts from 2 to "
                        "10000, e.g. 8,16,32,64")
    return tuple(cps)


def _number(flag: str, value: Any, low: float, high: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (math.isfinite(v) and low < v < high):
        raise PlanError(f"{flag}: {value!r} is not accepted; accepted: a number above {low:g} and below {high:g}")
    return v
