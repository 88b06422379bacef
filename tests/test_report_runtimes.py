"""The runtime as a dimension of the report (issue 22): the fastest mixer per runtime and precision with a computed
reading when the winner changes (or does not), what ran where with fallback cases flagged, int8 survival per mixer
and runtime with its first bad block and the fixed disclosure that accuracy is not measured; everything escaped,
and none of it in a report whose runs have no such data. Built from run folders written through
bench.results.store (tests/runfactory's rows, the schema's columns)."""
from __future__ import annotations

import html as htmllib
import json
import re

import pytest

from bench.analysis.report import int8_view, ran_where, runtimes, write_report
from bench.analysis.report.data import load_runs, merge_runs
from bench.results.store import pairs_frame, write_pairs
from tests.runfactory import XSS_IMG, XSS_SCRIPT, interleave, pair_row, report_row, write_fixture_run

CPU = "Fixture Xeon 8480 (CPU)"
RUN = "rt"
XNN_FALLBACK = ("not a measurement of XNNPACK: only 38% of the MACs ran in it; fell back: "
                "aten.convolution.default (62% of MACs)")


def _row(variant: str, backend: str, precision: str, lat: float | None, *, res: int = 1024, threads: int = 1,
         base: str = "block", **extra) -> dict:
    level = "block" if base == "block" else "model"
    r = report_row(RUN, "box", f"{base}:{variant}", variant, level, CPU, threads, res, res, backend=backend,
                   precision=precision, lat=lat, status=extra.pop("status", "ok"), reason=extra.pop("reason", ""))
    r.update(extra)
    return r


@pytest.fixture(autouse=True)
def _no_zoo_counts(monkeypatch):
    """The reference-model table counts the zoo's MACs (tens of seconds on a busy 2-core box, once per process);
    nothing of these sections depends on it."""
    from bench.analysis.report import published

    monkeypatch.setattr(published, "reference_models", lambda m: ([], []))


def _delegated(runtime: str, macs: float, ops: float, fallback: dict, verdict: str) -> dict:
    """The columns and backend_info a graph backend writes (bench.backends.delegation's record)."""
    info = {"delegation": {"runtime": runtime, "ops_share": ops, "macs_share": macs, "fallback": fallback,
                           "verdict": verdict}}
    text = ", ".join(f"{k} x{v}" for k, v in sorted(fallback.items(), key=lambda kv: -kv[1]))
    return dict(delegated_ops_share=ops, delegated_macs_share=macs, fallback_ops=text,
                backend_info=json.dumps(info))


def _int8(ok: bool, rel_err: float, share: float, first_bad: str = "", excluded=()) -> dict:
    info = {"int8": {"excluded": list(excluded), "macs_share": share}, "calibration": {"images": 8}}
    return dict(numerics_ok=ok, rel_err=rel_err, int8_macs_share=share, first_bad_block=first_bad,
                backend_info=json.dumps(info))


def _merged(tmp_path, rows, name=RUN, pairs=None):
    d = write_fixture_run(tmp_path / name, rows, meta=dict(run_id=name))
    if pairs:
        write_pairs(d, pairs_frame(pairs))
    return merge_runs(load_runs([d])), d


def _changing_rows() -> list[dict]:
    """block 1024 on 1 thread: large-kernel wins on eager fp32 and openvino fp32, msla on onnxruntime fp32 and
    openvino int8 (the winner changes with the runtime, and with the precision on openvino)."""
    return [_row("large-kernel", "eager", "fp32", 10.0), _row("msla", "eager", "fp32", 20.0),
            _row("softmax", "eager", "fp32", 30.0),
            _row("msla", "onnxruntime", "fp32", 5.0), _row("large-kernel", "onnxruntime", "fp32", 8.0),
            _row("large-kernel", "openvino", "fp32", 6.0), _row("msla", "openvino", "fp32", 7.0),
            _row("msla", "openvino", "int8", 3.0, **_int8(True, 0.012, 0.97)),
            _row("large-kernel", "openvino", "int8", 6.0, **_int8(True, 0.02, 0.99))]


def test_reading_names_the_mixers_and_runtimes_when_the_winner_changes(tmp_path):
    m, _ = _merged(tmp_path, _changing_rows())
    (g,) = runtimes.groups(m)
    by = {e["runtime"]: e for e in g["entries"]}
    assert [e["runtime"] for e in g["entries"]] == ["eager fp32", "onnxruntime fp32", "openvino fp32",
                                                    "openvino int8"]
    assert {k: e["fastest"] for k, e in by.items()} == {"eager fp32": "large-kernel", "onnxruntime fp32": "msla",
                                                        "openvino fp32": "large-kernel", "openvino int8": "msla"}
    assert by["eager fp32"]["runner_up"] == "msla" and by["eager fp32"]["ratio"] == "2.00×"
    assert by["onnxruntime fp32"]["ratio"] == "1.60×"
    assert all(e["verdict"] == "resolved" for e in g["entries"])
    assert "separate processes" in by["eager fp32"]["design"]  # isolated rows: no paired interval
    where = f"At 1024x1024 on 1 thread (block, {CPU})"
    assert g["readings"][0] == (f"{where}, large-kernel is fastest on eager fp32 and openvino fp32, but msla is "
                                f"fastest on onnxruntime fp32 and openvino int8.")
    assert "On openvino the winner changes with the precision: large-kernel in fp32, msla in int8." in g["readings"]
    assert not any("every runtime" in s for s in g["readings"])


def test_reading_says_the_winner_is_the_same_on_every_runtime(tmp_path):
    rows = [_row("msla", "eager", "fp32", 10.0), _row("softmax", "eager", "fp32", 14.0),
            _row("msla", "onnxruntime", "fp32", 6.0), _row("softmax", "onnxruntime", "fp32", 9.0),
            _row("msla", "openvino", "int8", 3.0, **_int8(True, 0.01, 0.95)),
            _row("softmax", "openvino", "int8", 4.0, **_int8(True, 0.02, 0.95)),
            # another thread count: its own comparison group, one runtime only: no runtime section for it
            _row("msla", "eager", "fp32", 7.0, threads=2), _row("softmax", "eager", "fp32", 9.0, threads=2)]
    m, _ = _merged(tmp_path, rows)
    (g,) = runtimes.groups(m)
    assert g["threads"] == "1"
    assert g["readings"] == [f"At 1024x1024 on 1 thread (block, {CPU}), msla is fastest on every runtime measured "
                             f"(eager fp32, onnxruntime fp32 and openvino int8)."]


def test_a_change_resting_on_unresolved_answers_says_so(tmp_path):
    """Overlapping CIs on onnxruntime: its winner differs from eager's, but that answer is not resolved."""
    wide = dict(latency_ms_ci_low=4.0, latency_ms_ci_high=7.0)
    rows = [_row("msla", "eager", "fp32", 10.0), _row("softmax", "eager", "fp32", 14.0),
            _row("softmax", "onnxruntime", "fp32", 5.0, **wide), _row("msla", "onnxruntime", "fp32", 5.2, **wide)]
    m, _ = _merged(tmp_path, rows)
    (g,) = runtimes.groups(m)
    text = " ".join(g["readings"])
    assert "msla is fastest on eager fp32, but softmax is fastest on onnxruntime fp32." in text
    assert "Among the decided answers msla wins everywhere: the change rests on answers not decided" in text
    assert "Not decided: onnxruntime fp32 (softmax not resolved against msla: CIs overlap)." in text
    busy = dict(noisy=True, noisy_reason="other processes used 1.01 cores during the case " * 5)
    rows = [_row("msla", "eager", "fp32", 10.0, **busy), _row("softmax", "eager", "fp32", 14.0, **busy),
            _row("softmax", "openvino", "fp32", 5.0, **busy), _row("msla", "openvino", "fp32", 8.0, **busy)]
    m, _ = _merged(tmp_path, rows, name="busy")
    (g,) = runtimes.groups(m)
    assert g["readings"][1:] == [
        "None of these answers is decided (each is flagged or not resolved, below): the change with the runtime is "
        "not established.",
        "Not decided: eager fp32 (msla flagged against softmax: busy machine); openvino fp32 (softmax flagged "
        "against msla: busy machine)."]


def test_paired_runtime_uses_the_pair_table(tmp_path):
    """Where the mixers of a runtime were measured interleaved, its answer is the paired decision."""
    wide = dict(latency_ms_ci_low=3.0, latency_ms_ci_high=8.0)
    ms = interleave(_row("msla", "onnxruntime", "fp32", 5.0, **wide))
    sm = interleave(_row("softmax", "onnxruntime", "fp32", 5.5, **wide))
    rows = [_row("msla", "eager", "fp32", 10.0), _row("softmax", "eager", "fp32", 14.0), ms, sm]
    m, _ = _merged(tmp_path, rows, pairs=[pair_row(ms, sm, 1.1, 1.07, 1.13, "faster", n_processes=10)])
    (g,) = runtimes.groups(m)
    ort = next(e for e in g["entries"] if e["runtime"] == "onnxruntime fp32")
    assert ort["verdict"] == "resolved" and ort["design"].startswith("paired")  # CIs overlap; the pair decides
    assert ort["ratio"] == "1.10×" and "softmax is 1.10× slower than msla" == ort["pair_text"]
    assert g["readings"] == [f"At 1024x1024 on 1 thread (block, {CPU}), msla is fastest on every runtime measured "
                             f"(eager fp32 and onnxruntime fp32)."]


def test_fallback_case_is_flagged_in_table_and_reading(tmp_path):
    good = _delegated("XNNPACK", 1.0, 0.93, {"aten.split_with_sizes": 2}, "delegate")
    bad = _delegated("XNNPACK", 0.38, 0.7, {"aten.convolution.default": 3, "aten.split_with_sizes": 2},
                     XNN_FALLBACK)
    rows = [_row("msla", "eager", "fp32", 10.0), _row("softmax", "eager", "fp32", 14.0),
            _row("msla", "executorch", "fp32", 4.0, **good), _row("softmax", "executorch", "fp32", 3.0, **bad)]
    m, d = _merged(tmp_path, rows)
    f = ran_where.frame(m).set_index("label")
    label = f"block:softmax 1024x1024 executorch fp32 b1 t1"
    assert bool(f.loc[label, "flagged"]) and not f["flagged"].drop(label).any()
    assert f.loc[label, "fallback"] == "aten.convolution.default x3, aten.split_with_sizes x2"
    assert f.loc[label, "macs_share"] == pytest.approx(0.38)
    v = ran_where.view(m)
    assert v["n_flagged"] == 1
    assert f"{label} is {XNN_FALLBACK}." in v["readings"]
    assert "executorch (XNNPACK): 2 cases, MACs in the delegate 38% to 100%, ops 70% to 93%; 1 measured the " \
           "fallback, not the delegate." in v["readings"]
    (g,) = runtimes.groups(m)  # the executorch winner is the fallback's time: flagged beside it
    assert f"On executorch fp32 the fastest (softmax) is flagged: {XNN_FALLBACK}." in g["readings"]
    assert g["readings"][0].endswith("msla is fastest on eager fp32, but softmax is fastest on executorch fp32 "
                                     "(flagged).")
    page = write_report([d], tmp_path / "r.html").read_text()
    flagged = re.findall(r'<tr class="ran-where-row flagged">(.*?)</tr>', page, re.S)
    assert len(flagged) == 1 and "block:softmax" in flagged[0] and "<strong>fallback:</strong>" in flagged[0]
    assert htmllib.escape(XNN_FALLBACK, quote=True) in htmllib.unescape(page) or XNN_FALLBACK in htmllib.unescape(page)
    md = (tmp_path / "r.md").read_text()
    assert "## What ran where (graph runtimes)" in md and "FALLBACK" in md


def test_int8_survival_per_mixer_and_runtime(tmp_path):
    rows = [_row("msla", "openvino", "fp32", 6.0), _row("softmax", "openvino", "fp32", 7.0),
            _row("msla", "openvino", "int8", 3.0, **_int8(True, 0.012, 0.97, excluded=["/mixer/Div x1: runs on float data (kept)"])),
            _row("softmax", "openvino", "int8", 4.0, **_int8(False, 0.41, 0.9, "stages.1.mixer",
                                                              [{"name": "/stage/attn/Softmax_3", "why": "softmax"}])),
            _row("msla", "onnxruntime", "int8", 4.0, **_int8(False, 0.2, 0.8, "stages.0.mixer")),
            _row("softmax", "executorch", "int8", None, status="unsupported", reason="executorch is not installed")]
    m, d = _merged(tmp_path, rows)
    f = int8_view.frame(m).set_index(["variant", "runtime"])
    assert f.loc[("msla", "openvino"), "word"] == "survives"
    assert f.loc[("softmax", "openvino"), "word"] == "does not survive"
    assert f.loc[("softmax", "openvino"), "first_bad"] == ["stages.1.mixer"]
    assert f.loc[("msla", "onnxruntime"), "word"] == "does not survive"
    assert f.loc[("softmax", "executorch"), "word"] == "not measured"
    (g,) = runtimes.groups(m)  # runtimes with rows but fewer than two mixers ok: named, each mixer's status
    assert [e["runtime"] for e in g["entries"]] == ["openvino fp32", "openvino int8"]
    assert g["undecided"] == ["onnxruntime int8: msla ok", "executorch int8: softmax unsupported"]
    v = int8_view.view(m)
    assert v["readings"] == [
        "msla survives on openvino (rel_err up to 1.2e-02; int8 MACs 97%); does not survive on onnxruntime "
        "(rel_err up to 2.0e-01; int8 MACs 80%; first bad block: stages.0.mixer).",
        "softmax does not survive on openvino (rel_err up to 4.1e-01; int8 MACs 90%; first bad block: "
        "stages.1.mixer); not measured on executorch (unsupported: executorch is not installed)."]
    by = {(r["model"], r["setting"]): r for r in v["rows"]}
    ov = by[("block:msla", f"{CPU} openvino int8 b1 t1")]
    assert ov["speedup"] == "2.00×" and ov["excluded"] == "/mixer/Div x1"  # fp32 6 ms / int8 3 ms on openvino
    soft = by[("block:softmax", f"{CPU} openvino int8 b1 t1")]
    assert soft["excluded"] == "Softmax_3" and soft["excluded_full"] == "/stage/attn/Softmax_3 (softmax)"
    page = htmllib.unescape(write_report([d], tmp_path / "r.html").read_text())
    assert int8_view.DISCLOSURE in page and 'id="int8"' in page
    row = re.search(r'<tr class="int8-row">(<td>block:softmax</td><td>[^<]*openvino int8.*?)</tr>', page, re.S)
    assert row and "stages.1.mixer" in row.group(1) and "does not survive" in row.group(1)
    md = (tmp_path / "r.md").read_text()
    assert "## int8: which mixer survives" in md and "Accuracy (mIoU) is not measured" in md
    assert "stages.1.mixer" in md


def test_hostile_fallback_op_and_model_name_are_escaped(tmp_path):
    evil_op = f"{XSS_SCRIPT}|**x**"
    evil_model = f"{XSS_IMG}"
    bad = _delegated(f"XNN{XSS_IMG}", 0.3, 0.5, {evil_op: 1}, f"not a measurement of {XSS_SCRIPT}: 70% fell back")
    rows = [_row("msla", "eager", "fp32", 10.0, base=evil_model), _row("softmax", "eager", "fp32", 12.0, base=evil_model),
            _row("msla", "executorch", "int8", 3.0, base=evil_model,
                 **{**_int8(False, 0.5, 0.6, f"blk{XSS_SCRIPT}"), **bad}),
            _row("softmax", "executorch", "int8", 2.0, base=evil_model, **_int8(True, 0.01, 0.9))]
    m, d = _merged(tmp_path, rows)
    assert ran_where.view(m)["n_flagged"] == 1 and runtimes.view(m)
    page = write_report([d], tmp_path / "r.html").read_text()
    assert XSS_SCRIPT not in page and "<img src=x" not in page
    assert 'id="ran-where"' in page and 'id="int8"' in page and 'id="runtimes"' in page
    assert htmllib.escape(evil_op, quote=True) in page or htmllib.escape(evil_op, quote=False) in page
    md = (tmp_path / "r.md").read_text()
    assert "<script" not in md and "<img" not in md and "**x**" not in md


def test_sections_absent_without_their_data(tmp_path):
    """Eager rows only (two precisions absent, no delegation, no int8): none of the three sections, no
    disclosure; a graph runtime in fp32 with no int8 rows shows what ran where but no int8 section."""
    rows = [_row("msla", "eager", "fp32", 10.0), _row("softmax", "eager", "fp32", 14.0),
            _row("msla", "eager", "fp32", 8.0, threads=2), _row("softmax", "eager", "fp32", 11.0, threads=2)]
    m, d = _merged(tmp_path, rows, name="eager")
    assert runtimes.view(m) is None and ran_where.view(m) is None and int8_view.view(m) is None
    page = write_report([d], tmp_path / "e.html").read_text()
    for marker in ('id="runtimes"', 'id="ran-where"', 'id="int8"', 'href="#runtimes"', "int8-disclosure",
                   "Accuracy (mIoU) is not measured"):
        assert marker not in page, marker
    md = (tmp_path / "e.md").read_text()
    assert "per runtime" not in md and "What ran where" not in md and "int8" not in md
    rows2 = rows[:2] + [_row("msla", "openvino", "fp32", 6.0, **_delegated("OpenVINO CPU", 1.0, 1.0, {}, "delegate")),
                        _row("softmax", "openvino", "fp32", 8.0,
                             **_delegated("OpenVINO CPU", 1.0, 1.0, {}, "delegate"))]
    m2, _ = _merged(tmp_path, rows2, name="ov")
    assert runtimes.view(m2) and ran_where.view(m2)["n_flagged"] == 0 and int8_view.view(m2) is None
    assert "every verdict is the delegate" in ran_where.view(m2)["readings"][0]


def test_foreign_backend_info_is_read_as_absent():
    """A cell that is not JSON, or JSON that is not an object, is a row without a record, not an error."""
    for raw in ("{", "[1, 2]", "null", "", None, float("nan"), "[" * 5000):
        assert ran_where.backend_info({"backend_info": raw}) == {}
    assert ran_where.verdict({"backend_info": "{"}) == ""
    assert ran_where.verdict({"delegated_macs_share": 0.5}) == ran_where.NO_VERDICT
