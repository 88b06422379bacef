"""Fuzzing the Python doors as test_cli_fuzz.py fuzzes the command line: bench.run's arguments and
register_model's keywords, each from a set of values the suite must accept and a set it must refuse.

A drawn call with any refused value must raise one error of bench.BenchInputError (ModelRegistrationError for
register_model) whose message is one line, and leave everything as it was: no file under the run's folder, no
model in the registry. A call with only accepted values must pass every check: bench.run reaches the point where
it would create the run folder (stopped there, so nothing is measured), register_model registers.
"""
from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bench
from bench import api
from models import registry
from models.registry import ModelRegistrationError, Published, get_model_info, list_models, register_model
from tests.test_cli_fuzz import _draws

NAN, INF = float("nan"), float("inf")
BAD_PATHS = [None, 5, "", b"results", ["results"]]
RUN_ARGS = {  # keyword -> (accepted values, refused values); models are blocks so that every level but "model" fits
    "models": (["block:msla", "block:msla,block:softmax", ["block:softmax"], ("block:msla", "block"), None],
               [42, 1.5, [1], b"block:msla", {"block:msla": 1}, "", [""], " , ", "nope", [None]]),
    "level": (["block", "both"], [1, None, "x", ["block"]]),
    "res": ([64, "64", "64,96x128", [64, (64, 96)], (64,), [64, "96x64"], [("64", "96")]],
            [128.5, True, [], [1.5], "0", [(64,)], None, "abc", [[64, 96, 1]], b"64", [True], {64: 64}, 2**64]),
    "devices": (["cpu", ["cpu"], ("cpu", "cpu")], [5, None, "tpu", [5], "", b"cpu", ["cpu", ""]]),
    "batch": ([1, "1,2", [1, 2], (2,)], [1.5, True, 0, [True], None, "x", [1.5], 2**64, -1]),
    "threads": ([None, 1, "1,2", [1]], [0, 1.5, True, "x", [None], b"1"]),
    "precision": ([None, "fp32", ["fp32", "bf16"]], [5, "fp8", [1], ""]),
    "backends": (["eager", ["eager"]], [None, 5, "tf", [None], ()]),
    **{flag: ([True, False], [1, 0, "yes", None]) for flag in
       ("channels_last", "fold", "calibrate", "allow_missing", "profile", "quick")},
    "min_time": ([None, 0.05, 0.1], [True, 0, -1, "x", NAN, [1]]),
    "max_time": ([None, 0.5, 2], [False, 0, INF, "x", NAN]),
    "timeout": ([None, 60, 60.5], [0, True, "x", -1, INF]),
    "repeats": ([None, 1], [0, 1.5, True, "2", 101]),
    "seed": ([0, 7], [-1, 1.5, True, "1", None, 2**64]),
    "metric": (["time"], ["x", None, 1]),
    "design": (["interleaved", "isolated"], ["x", None, ["isolated"]]),
    "budget": ([None, 60], [0, True, "x", -1, NAN]),
    "tie": ([0.02, 0.1], [0, 1, True, None, "x"]),
    "wait_quiet": ([None, 0, 30], [-1, True, "x", NAN, 86401]),
    "models_from": ([(), []], [5, [3], b"x.py", "", [""], [None]]),
    "out": (["OUT", Path("OUT")], BAD_PATHS),
    "run_id": ([None, "a1", "run.2_x-y"], [5, "", "../up", "a/b", ".x", "x" * 101, b"a", "é"]),
    "report": ([True, False], [1, "no", None]),
    "report_dir": ([None, "REPORTS"], [5, "", b"r"]),
    "progress": ([None, lambda *a, **k: None], [3, "x"]),
    "log": ([None, print], [3, "x"]),
    "argv": ([None, ["run", "--quick"]], ["x", [1], 5]),
    "cluster": ([None], [5, "", " ", b"x", ["local"]]),  # an accepted address would join a Ray cluster
    "hosts": ([None], ["a", ["a"], 5]),  # only with a cluster
    "colour": ([], ["red"]),  # not an option
}
GOOD_PUB = Published(params_m=4.8, macs_g=25, latency_ms={"Jetson AGX Orin, TensorRT fp16": 24.3}, miou=80.5,
                     source="paper", counted_as="evit-b1:msla", note="n")
REGISTER_KW = {
    "family": (["user", "block", "segformer"], ["", "mine", 5, None, ["user"]]),
    "mixer": (["custom", "my mixer"], ["", "a\nb", 5, None]),
    "dataset": ([None, "ade20k", "cityscapes"], ["", "coco", 5, ["ade20k"]]),
    "input_size": ([None, (64, 128), [512, 512], (32768, 1)],
                   [(0, 64), (-1, 64), (64,), (64, 64, 64), (True, 64), (64.0, 64), "64x64", 64, (32769, 64)]),
    "num_classes": ([None, 0, 19], [-1, True, 1.5, "19"]),
    "out_stride": ([None, 1, 8], [0, -8, True, 8.0, "8"]),
    "in_channels": ([1, 3], [0, -3, None, True, 3.0]),
    "input_stride": ([1, 16], [0, None, False, 1.5]),
    "size_multiple": ([1, 32], [0, -1, None, True]),
    "token_stride": ([1, 16], [0, None, True, "16"]),
    "published": ([None, Published(), GOOD_PUB],
                  [{"params_m": 1}, "x", Published(params_m=0), Published(params_m=-1), Published(macs_g=INF),
                   Published(latency_ms={"x": 0}), Published(latency_ms={"": 1}), Published(latency_ms=[1]),
                   Published(latency_ms={"x": "1"}), Published(miou=-1), Published(miou=True),
                   Published(params_m=True), Published(source=None), Published(counted_as="")]),
    "description": (["", "two\nlines are fine here"], [None, 5, b"x"]),
}
NAMES = (["fz-net", "fz net", "fz:a/b", "fz-é", "fz]"],
         ["", " ", "a,b", "a*", "a?", "a[b]", " fz", "fz ", "fz\n", "fz\x00", "fz\u2028x", "all", "user", "published",
          "block", 5, None, b"fz"])

FUZZ = settings(max_examples=int(os.environ.get("DENSEBENCH_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _calls(table: dict) -> st.SearchStrategy:
    """{keyword: (value, accepted)}: half the draws only of accepted values (a call with many keywords is rarely
    all accepted otherwise), half as test_cli_fuzz draws flags."""
    accepted = st.fixed_dictionaries({}, optional={k: st.sampled_from(ok).map(lambda v: (v, True))
                                                   for k, (ok, _) in sorted(table.items()) if ok})
    return st.one_of(accepted, _draws(table))


class Reached(Exception):
    """Raised in place of creating the run folder: every check of bench.run passed."""


def _one_line(e: BaseException, where: str) -> None:
    text = str(e)
    assert text and "\n" not in text and "Traceback" not in text, f"{where}: {text!r}"


@FUZZ
@given(args=_calls(RUN_ARGS))
def test_run_arguments(tmp_path, args):
    kw = {k: v for k, (v, _) in args.items()}
    for k, folder in (("out", "OUT"), ("report_dir", "REPORTS")):
        if kw.get(k) in (folder, Path(folder)):
            kw[k] = tmp_path / folder
    accepted = all(ok for _, ok in args.values())
    where = f"bench.run(**{kw!r})"
    with mock.patch.object(api, "start", side_effect=Reached):
        try:
            bench.run(**{"out": tmp_path / "OUT", **kw})
        except Reached:
            assert accepted, f"{where}: accepted"
        except bench.BenchInputError as e:
            assert not accepted, f"{where}: refused: {e}"
            _one_line(e, where)
    assert list(tmp_path.iterdir()) == [], where  # nothing written, accepted or not


@FUZZ
@given(name=st.one_of(st.sampled_from(NAMES[0]).map(lambda v: (v, True)),
                      st.sampled_from(NAMES[1]).map(lambda v: (v, False))),
       kw=_calls(REGISTER_KW))
def test_register_model_keywords(name, kw):
    values = {"name": name, **kw}
    given = {k: v for k, (v, _) in kw.items()}
    accepted = all(ok for _, ok in values.values())
    where = f"register_model({name[0]!r}, **{given!r})"
    with mock.patch.dict(registry._REGISTRY):  # each example starts from the same registry
        before = list_models()
        try:
            register_model(name[0], **given)(lambda: None)
        except ModelRegistrationError as e:
            assert not accepted, f"{where}: refused: {e}"
            _one_line(e, where)
            assert list_models() == before, where
        else:
            assert accepted, f"{where}: accepted"
            info = get_model_info(name[0])
            assert list_models() == [*before, name[0]] and all(v >= 1 for v in info.input_size)
            assert all(type(getattr(info, f)) is int for f in ("in_channels", "input_stride", "token_stride"))
