"""The Python API is typed at the door (issue 20): each wrong type the hostile-user pass found, answered with one
named error under bench.BenchInputError and one line before anything is measured or written; a str where a list
is expected is one item; a run given 50 times is one run. Nothing here measures: an accepted call stops where
the run folder would be created."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from unittest import mock

import pytest

import bench
from bench import api
from bench.errors import ArgumentError, BenchInputError
from tests import runfactory as rf

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "custom_model.py"
PLAN = dict(models="block:msla", level="block", res=64)


class Reached(Exception):
    """Raised instead of creating the run folder: every check of the door passed."""


@contextlib.contextmanager
def stop_at_start():
    with mock.patch.object(api, "start", side_effect=Reached):
        yield


def one_line(e: BaseException) -> str:
    text = str(e)
    assert text and "\n" not in text and "Traceback" not in text, repr(text)
    return text


@pytest.mark.parametrize("kw,error,needle", [
    (dict(devices=5), "PlanError", "--devices: 5 is not accepted"),
    (dict(models=42), "PlanError", "--models: 42 is not accepted"),
    (dict(res=128.5), "PlanError", "--res: 128.5 is not accepted"),
    (dict(res=[]), "PlanError", "--res: [] (list)"),  # not silently "own"
    (dict(res=True), "PlanError", "--res: True"),
    (dict(batch=1.5), "PlanError", "--batch: 1.5"),
    (dict(threads=[True]), "PlanError", "--threads: True"),
    (dict(min_time=True), "PlanError", "--min-time: True"),
    (dict(quick="yes"), "PlanError", "quick: 'yes'"),
    (dict(level=None), "PlanError", "--level: None"),
    (dict(models_from=5), "PlanError", "--models-from: 5"),
    (dict(models_from=[None]), "PlanError", "--models-from: None"),
    (dict(colour="red"), "PlanError", "unknown option 'colour'"),
    (dict(out=None), "ArgumentError", "out: None is not accepted"),
    (dict(out=""), "ArgumentError", "out: ''"),
    (dict(run_id=5), "ArgumentError", "run_id: 5 is not accepted"),
    (dict(run_id="../up"), "ArgumentError", "run_id: '../up'"),
    (dict(cluster=5), "ArgumentError", "cluster: 5 is not accepted"),
    (dict(cluster=""), "ArgumentError", "cluster: ''"),  # was silently a local run
    (dict(hosts="a"), "ArgumentError", "hosts: 'a'"),  # hosts without a cluster
    (dict(report="no"), "ArgumentError", "report: 'no'"),
    (dict(report_dir=5), "ArgumentError", "report_dir: 5"),
    (dict(progress=3), "ArgumentError", "progress: 3"),
    (dict(argv="run --quick"), "ArgumentError", "argv: 'run --quick'"),
])
def test_run_refuses_wrong_types_at_the_door(tmp_path, kw, error, needle):
    kw = {"out": tmp_path / "out", **PLAN, **kw}
    with stop_at_start(), pytest.raises(BenchInputError) as e:
        bench.run(**kw)
    assert type(e.value).__name__ == error and needle in one_line(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_str_where_a_list_is_expected_is_one_item(tmp_path):
    plans = []

    def start(plan, *args, **kwargs):
        plans.append(plan)
        raise Reached

    with mock.patch.object(api, "start", side_effect=start):
        for kw in (dict(models_from=str(EXAMPLE), models="example-segnet", level="model", res="128,256"),
                   dict(models="block:msla,block:softmax", res="64,64x128"),
                   dict(models=("block:msla",), res=[64, (64, 128)], batch=(1, 2), threads="1")):
            with pytest.raises(Reached):
                bench.run(out=tmp_path / "out", **kw)
    assert plans[0].config["models_from"] == [str(EXAMPLE)]  # one file, not one source per character
    assert plans[0].config["resolutions"] == ["128x128", "256x256"]
    assert plans[1].config["models"] == ["block:msla", "block:softmax"]
    assert plans[2].config["resolutions"] == ["64x64", "64x128"] and plans[2].config["batches"] == [1, 2]
    assert list(tmp_path.iterdir()) == []


def test_retry_failed_takes_a_status_or_a_comma_string():
    assert api.retry_statuses("error") == ["error"]  # not 'e', 'r', 'r', 'o', 'r'
    assert api.retry_statuses("error,timeout") == ["error", "timeout"]
    assert api.retry_statuses(["oom", "oom"]) == ["oom"] and api.retry_statuses(()) == []
    for bad in ("ok", "x", 5, [5], None, b"error"):
        with pytest.raises(ArgumentError) as e:
            api.retry_statuses(bad)
        assert one_line(e.value).startswith("retry_failed: ")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cases = [rf.case("block:msla", samples=rf.noise(1)), rf.case("block:softmax", samples=rf.noise(2))]
    return rf.make_run(root, "a", cases), rf.make_run(root, "b", cases)


@pytest.mark.parametrize("call,needle", [
    (lambda a, b: bench.load_run(5), "path: 5"),
    (lambda a, b: bench.load_run(None), "path: None"),
    (lambda a, b: bench.compare(a, 5), "current: 5"),
    (lambda a, b: bench.compare(None, b), "baseline: None"),
    (lambda a, b: bench.compare(a, b, threshold="x"), "threshold: 'x'"),
    (lambda a, b: bench.compare(a, b, alpha=True), "alpha: True"),
    (lambda a, b: bench.compare(a, b, normalize="yes"), "normalize: 'yes'"),
    (lambda a, b: bench.report(5, "x.html"), "runs: 5"),
    (lambda a, b: bench.report([], "x.html"), "runs: []"),
    (lambda a, b: bench.report([a, 5], "x.html"), "runs: 5"),
    (lambda a, b: bench.report([a], None), "path: None"),
    (lambda a, b: bench.resume(5), "path: 5"),
    (lambda a, b: bench.resume(a, retry_failed="nope"), "retry_failed: 'nope'"),
    (lambda a, b: bench.resume(a, log="print"), "log: 'print'"),
])
def test_the_other_doors_refuse_wrong_types(two_runs, tmp_path, monkeypatch, call, needle):
    monkeypatch.chdir(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in two_runs[0].rglob("*")}
    with pytest.raises(ArgumentError) as e:
        call(*two_runs)
    assert needle in one_line(e.value)
    assert list(tmp_path.iterdir()) == [] and {p: p.stat().st_mtime_ns for p in two_runs[0].rglob("*")} == before


def test_one_run_given_50_times_is_one_run(two_runs, tmp_path):
    from bench.analysis.report import unique_runs

    a, b = two_runs
    assert unique_runs([a] * 50 + [b, Path(str(a) + "/"), a / ".." / a.name, a / "results.parquet"]) == [a, b]
    html = bench.report([str(a)] * 50, tmp_path / "r.html").read_text()
    assert "<title>Token-mixer benchmark: a</title>" in html and "runs merged" not in html


def test_every_bad_input_error_has_one_base():
    from bench.cases import CaseError
    from bench.cli import main
    from bench.errors import UsageError
    from bench.fleet.cluster import FleetError
    from bench.plan import PlanError
    from bench.results.lifecycle import RunFolderError

    for cls in (PlanError, CaseError, RunFolderError, UsageError, FleetError, ArgumentError):
        assert issubclass(cls, bench.BenchInputError) and issubclass(cls, ValueError), cls
    assert bench.BenchInputError is BenchInputError and bench.PlanError is PlanError
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["--models", "nope", "--list"]) == 2  # the CLI still answers them with one line, exit 2
    assert err.getvalue().count("\n") == 1
