"""What a child writes back is one typed record (bench.measure.result.ChildResult): a real child's result reads
back field by field, and a result file of the wrong shape becomes the row's reason, not a KeyError in the runner."""
from __future__ import annotations

import json

import pytest

from bench.cases import Case, ProcessSettings
from bench.launch.isolation import Isolation
from bench.launch.outcome import Outcome, classify
from bench.measure.child import run_case_file
from bench.measure.result import ChildResult, ChildTimes, ResultFormatError


def test_a_real_case_result_reads_back_typed(tmp_path):
    case = Case(model="block:relu-linear", family="block", variant="relu-linear", level="block", device="cpu",
                device_name="test-cpu", backend="eager", precision="fp32", batch=1, threads=1, height=64, width=64,
                tokens=16, min_time_s=0.02, max_time_s=0.1, timeout_s=60,
                settings=ProcessSettings(min_samples=5, numerics64=False))
    spec, out = tmp_path / "spec.json", tmp_path / "result.json"
    spec.write_text(json.dumps(case.to_spec()))
    assert run_case_file(str(spec), str(out)) == 0
    res = ChildResult.from_json(json.loads(out.read_text()))
    assert res.row is not None and res.row["status"] == "ok", res.row
    assert len(res.samples) >= 1 and all(s > 0 for s in res.samples)
    assert isinstance(res.child, ChildTimes) and res.child.timing_s is not None and res.child.stage
    assert res.child.total_s >= res.child.timing_s
    assert ChildResult.from_json(res.to_json()) == res  # the JSON round trip is exact


@pytest.mark.parametrize("data,words", [
    ([], "not an object"),
    ({"row": "ok"}, "row = 'ok' is a str, not a dict"),
    ({"row": {}, "samples": 3}, "samples = '3' is a int, not a list"),
    ({"rows": [1]}, "rows must be a list of objects"),
    ({"cycles": [[1.0, "x"]]}, "cycles must be a list of lists of numbers"),
    ({"child": {"pid": "12"}}, "child.pid must be an int"),
    ({"child": {"timing_s": "fast"}}, "child.timing_s = 'fast' is not a number"),
    ({"rowz": {}}, "unknown field 'rowz'"),
])
def test_a_result_of_the_wrong_shape_is_refused_in_one_line(data, words):
    with pytest.raises(ResultFormatError) as e:
        ChildResult.from_json(data)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_malformed_result_file_becomes_the_rows_reason(tmp_path):
    result, err = tmp_path / "case.result.json", tmp_path / "case.stderr"
    result.write_text(json.dumps({"row": ["not", "a", "row"], "samples": []}))
    err.write_text("")
    out = Isolation._finish(Outcome(result=None, exit_code=0), result, err)
    row, samples = classify(out, 10.0)
    assert out.result is None and samples == []
    assert row["status"] == "error" and "child result: row" in row["reason"], row
