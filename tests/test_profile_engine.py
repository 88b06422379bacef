"""The profiled pass through the engine: `run_bench.py profile` / `run --profile` time each case, then profile it
apart from the timing; profile.parquet, the traces and the row's profile columns must agree with the case."""
import contextlib
import gzip
import io
import json
import math

import pytest

from bench.results import store
from bench.schema import PROFILE_COLUMN_NAMES

FAST = ["--level", "block", "--res", "64", "--threads", "1", "--min-time", "0.1", "--max-time", "0.3", "-q",
        "--no-report"]
# the two interleaved groups (eager, onnxruntime) need their profiled first process and a few more, not the
# default 480 s of deciding; 15 s leaves the second group its first process on a slow machine
BUDGET = ["--budget", "15"]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    from bench.cli import main

    out, err = tmp_path_factory.mktemp("results"), io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):  # run_bench.py's main
        rc = main(["profile", "--models", "block:msla,block:large-kernel", "--backends", "eager,onnxruntime",
                   "--out", str(out), "--run-id", "p", *FAST, *BUDGET])
    assert rc == 0, err.getvalue()
    return store.load_run(out / "p")


def test_every_case_is_timed_and_profiled_apart(profiled):
    res = profiled.results
    assert len(res) == 4 and res["status"].eq("ok").all()
    assert set(res["profile_source"]) == {"torch", "onnxruntime"}
    assert (res["profiled_ms"] > 0).all() and res["profile_overhead"].map(math.isfinite).all()
    assert res["profile_reason"].isna().all()
    # the latency is the timed pass's: its samples are there, the profiled time is separate
    for _, row in res.iterrows():
        s = profiled.samples[profiled.samples["case_id"] == row["case_id"]]
        assert len(s) == row["n"]


def test_profile_rows_belong_to_their_cases_and_add_up(profiled):
    prof, res = profiled.profile, profiled.results.set_index("case_id")
    assert list(prof.columns) == list(PROFILE_COLUMN_NAMES)
    assert set(prof["case_id"]) == set(res.index)
    for (cid, breakdown), g in prof.groupby(["case_id", "breakdown"]):
        for col in ("model", "backend", "height", "threads"):
            assert (g[col] == res.loc[cid, col]).all()
        if breakdown in ("op_kind", "module"):
            assert g["time_share"].sum() == pytest.approx(1.0, abs=1e-6)
        if breakdown == "op_kind":  # the counted forward is the model's: MACs per kind sum to the row's MACs
            assert g["macs"].sum() == pytest.approx(float(res.loc[cid, "macs"]), rel=1e-9)
            assert (g["peak_gmacs_per_s"] > 0).all() and (g["bandwidth_gb_per_s"] > 0).all()


def test_kinds_say_what_the_blocks_are_made_of(profiled):
    kinds = profiled.profile[profiled.profile["breakdown"] == "op_kind"]
    lk = set(kinds.loc[(kinds["model"] == "block:large-kernel") & (kinds["time_ms"] > 0), "op_kind"])
    msla = set(kinds.loc[(kinds["model"] == "block:msla") & (kinds["time_ms"] > 0), "op_kind"])
    assert {"dw-strip-1x21", "dw-strip-21x1", "conv-1x1"} <= lk and not any(k.startswith("dw-strip") for k in msla)
    assert "matmul" in msla and "matmul" not in lk


def test_each_case_has_a_trace_perfetto_opens(profiled):
    traces = sorted((profiled.path / store.TRACES).glob("*.json.gz"))
    torch_cases = profiled.results[profiled.results["backend"] == "eager"]
    assert len(traces) == len(torch_cases)
    for t in traces:
        events = json.loads(gzip.decompress(t.read_bytes()))["traceEvents"]
        assert any(e.get("name", "").startswith("aten::") for e in events)


def test_profile_flag_is_validated_like_every_flag(tmp_path, capsys):
    from bench.cli import main

    assert main(["profile", "--models", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'nope'" in err[0]
    assert not any(tmp_path.iterdir())


def test_the_python_api_profiles(tmp_path):
    import bench

    run = bench.profile(["block:relu-linear"], level="block", res=[64], threads=1, min_time=0.1, max_time=0.3,
                        out=tmp_path, report=False)
    assert run.results["profile_source"].tolist() == ["torch"]
    kinds = run.profile[run.profile["breakdown"] == "op_kind"]
    assert kinds["time_share"].sum() == pytest.approx(1.0) and "matmul" in set(kinds["op_kind"])
    import bench.profiling  # the package of the profilers does not shadow the API function

    assert callable(bench.profile)
