"""Fuzzing the doors: every combination of flags, environment variables and values hypothesis draws.

For each flag a set of values the suite must accept and a set it must refuse; a drawn command line with any
refused value must end in exactly one line on stderr and exit 2 (no traceback, nothing written), one with only
accepted values must succeed. `run` is fuzzed through `--list` (the plan is validated in full before anything is
measured, and --list stops right there), compare over two stored runs.
"""
import contextlib
import io
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import main
from tests import runfactory as rf

BIG = str(2**64)
JUNK = ["", " ", ",", "x", "é", "nan", "inf", "-1", "1e400"]
RUN_FLAGS = {  # flag -> (accepted values, refused values)
    "--models": (["block:msla", "block:softmax,block:msla", "evit-b1:*", "block"],
                 ["", " ", ",", "nope", "block:nope", "evit-b1:", "*zzz*", "é"]),
    "--level": (["model", "block", "both"], ["", "blocks", "x"]),
    "--res": (["64", "64x96", "128,256"],
              ["", "0", "-64", "64x", "x64", "64x0", "nan", "1e400", BIG, "64.5", "64,,96", "abc"]),
    "--devices": (["cpu"], ["", "tpu", "cuda:99", ",", "gpu0"]),
    "--batch": (["1", "1,2"], ["", "0", "-1", "1.5", BIG, "nan", "x", "1,,2"]),
    "--precision": (["fp32", "fp32,bf16"], ["", "fp8", "x", ","]),
    "--threads": (["1", "1,2"], ["", "0", "-1", "1.5", BIG, "x"]),
    "--backends": (["eager", "eager,compile", "onnxruntime"], ["", "x", "tensorflow", ","]),
    "--min-time": (["0.1"], ["nan", "inf", "-1", "x", "1e400", ""]),
    "--max-time": (["1", "2.5"], ["nan", "inf", "-1", "0", "x", ""]),
    "--timeout": (["60"], ["nan", "inf", "-1", "0", "x", ""]),
    "--repeats": (["1"], ["0", "-1", "1.5", "x", BIG, ""]),  # above 1 only with --design isolated (test_groups)
    "--design": (["interleaved", "isolated"], ["", "x", "paired"]),
    "--budget": (["60", "0.5"], ["nan", "inf", "-1", "0", "x", ""]),
    "--tie": (["0.02", "0.1"], ["nan", "0", "1", "-0.1", "x", ""]),
    "--wait-quiet": (["0", "30"], ["nan", "inf", "-1", "x", ""]),
    "--seed": (["0", "7"], ["-1", "1.5", "x", BIG, ""]),
    "--metric": (["time"], ["x", ""]),
    "--run-id": (["a1", "run.2_x-y"], ["", "../up", "a/b", ".hidden", "x" * 101, "é"]),
}
RUN_ENV = {
    "DENSEBENCH_ISOLATION": (["fork", "spawn"], ["x", "threads"]),
    "DENSEBENCH_MODELS_FROM": ([], ["/no/such/file.py", "no_such_package.module"]),
    "DENSEBENCH_WAIT_QUIET": (["0", "30"], ["x", "-1", "nan", ""]),
}
COMPARE_FLAGS = {
    "--threshold": (["0.05", "0.2", "0"], ["nan", "inf", "-0.1", "x", ""]),
    "--alpha": (["0.01", "0.2"], ["nan", "0", "1", "1.5", "-0.1", "x", ""]),
}


def _draws(flags: dict) -> st.SearchStrategy:
    """{flag: (value, accepted)} for a random subset of the flags."""
    def one(flag):
        ok, bad = flags[flag]
        return st.one_of([s for s in (st.sampled_from(ok).map(lambda v: (v, True)) if ok else None,
                                      st.sampled_from(bad).map(lambda v: (v, False))) if s is not None])
    return st.fixed_dictionaries({}, optional={f: one(f) for f in sorted(flags)})


def _call(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    err = io.StringIO()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return rc, err.getvalue()


def _judge(rc: int, err: str, accepted: bool, argv: list[str], env: dict) -> None:
    where = f"argv={argv} env={env}"
    assert "Traceback" not in err, where + "\n" + err
    if accepted:
        assert rc == 0, f"{where}: refused ({rc}): {err}"
    else:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1 and "error:" in lines[0], f"{where}: rc {rc}, stderr {err!r}"


FUZZ = settings(max_examples=int(os.environ.get("DENSEBENCH_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(flags=_draws(RUN_FLAGS), env=_draws(RUN_ENV), quick=st.booleans())
def test_run_flags(tmp_path, flags, env, quick):
    argv = ["--list", "--out", str(tmp_path / "results")] + (["--quick"] if quick else [])
    for f, (v, _) in flags.items():
        argv.append(f"{f}={v}")
    values = {**flags, **env}
    accepted = all(ok for _, ok in values.values())
    rc, err = _call(argv, {k: v for k, (v, _) in env.items()})
    _judge(rc, err, accepted, argv, env)
    assert not (tmp_path / "results").exists()  # --list writes nothing, valid or not


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cases = [rf.case("block:msla", samples=rf.noise(1)), rf.case("block:softmax", samples=rf.noise(2))]
    return rf.make_run(root, "a", cases), rf.make_run(root, "b", cases)


@FUZZ
@given(flags=_draws(COMPARE_FLAGS))
def test_compare_flags(two_runs, flags):
    argv = ["compare", str(two_runs[0]), str(two_runs[1])] + [f"{f}={v}" for f, (v, _) in flags.items()]
    rc, err = _call(argv, {})
    accepted = all(ok for _, ok in flags.values())
    assert "Traceback" not in err
    if accepted:
        assert rc in (0, 1, 3), f"{argv}: {err}"  # 1: a regression found, 3: noisy; both are verdicts
    else:
        _judge(rc, err, False, argv, {})


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv", [
    ["models", "--res", "0"], ["models", "--res", "64x"], ["models", "--res", BIG], ["models", "--family", ""],
    ["models", "--family", "nope"], ["models", "--format", "xml"], ["report"], ["report", "/no/such/run"],
    ["compare", "/no/a", "/no/b"], ["nope"], ["--resume", ""], ["--resume", "/no/such/run"],
    ["--resume", "x", "--retry-failed", ""], ["ab", "--threshold", "nan"], ["ab", "--alpha", "2"],
    ["ab", "--checkpoints", "8,x"], ["ab", "--max-time", "-1"], ["ab", "--a", ""], ["ab", "--res", "0"],
])
def test_other_doors(tmp_path, argv):
    rc, err = _call(argv, {})
    _judge(rc, err, False, argv, {})
