"""`run_bench.py check` refuses every bad flag with one line and exit 2, before a gate is read or a run folder
exists, with run's own validators (bench/plan/).

Nothing here measures: the gates file of these tests applies to CUDA only and the flags say cpu, so where the
validation let a bad flag through, the check would stop at "no gate applies to device(s) cpu" (that line names no
flag, so the test fails) instead of running a matrix.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.cli import main

sys.path.insert(0, str(Path(__file__).parent))  # works with or without tests/__init__.py
from runfactory import case, make_run, noise  # noqa: E402

CUDA_ONLY = ('[[gate]]\nname = "cuda-only"\nkind = "speedup"\ndevices = ["cuda"]\nfaster = "block:msla"\n'
             'slower = "block:softmax"\nheight = 512\nwidth = 512\nmin_ratio = 1.0\n')
SPEEDUP = ('[[gate]]\nname = "sp"\nkind = "speedup"\nfaster = "block:msla"\nslower = "block:softmax"\n'
           'height = 1024\nwidth = 1024\nmin_ratio = 10.0\n')

# (flags, the flag the one line must name)
BAD_FLAGS = [
    (["--devices", "tpu"], "--devices"),
    (["--devices", ","], "--devices"),
    (["--max-time", "nan"], "--max-time"),
    (["--max-time", "inf"], "--max-time"),
    (["--max-time", "-3"], "--max-time"),
    (["--min-time", "nan"], "--min-time"),
    (["--min-time", "0"], "--min-time"),
    (["--min-time", "-0.5"], "--min-time"),
    (["--min-time", "5", "--max-time", "1"], "--min-time"),
    (["--timeout", "nan"], "--timeout"),
    (["--timeout", "inf"], "--timeout"),
    (["--timeout", "-1"], "--timeout"),
    (["--timeout", "0"], "--timeout"),
    (["--threads", "0"], "--threads"),
    (["--threads", "-2"], "--threads"),
    (["--threads", str(2**63)], "--threads"),
    (["--precision", "fp8"], "--precision"),
    (["--precision", "fp32,fp16"], "--precision"),
    (["--backend", "nope"], "--backend"),
    (["--backend", "eager,compile"], "--backend"),
]


def _names_what_is_accepted(err: str, flag: str) -> bool:
    # bench.plan.parse.parse_list says "empty list" without an "accepted" part: run's own wording, reused as it is
    return flag in err and ("accepted" in err or f"{flag}: empty list" in err)


def _one_line(capsys) -> str:
    cap = capsys.readouterr()
    assert cap.err.count("\n") == 1 and "Traceback" not in cap.err, cap.err
    return cap.err


@pytest.fixture
def cuda_gates(tmp_path) -> str:
    (tmp_path / "cuda.toml").write_text(CUDA_ONLY)
    return str(tmp_path / "cuda.toml")


@pytest.mark.parametrize("flags,flag", BAD_FLAGS)
def test_bad_flag_is_one_line_before_any_run_folder(tmp_path, capsys, cuda_gates, flags, flag):
    out = tmp_path / "res"
    assert main(["check", "--gates", cuda_gates, "--out", str(out), *flags]) == 2
    err = _one_line(capsys)
    assert err.startswith("run_bench.py: error: ") and _names_what_is_accepted(err, flag), err
    assert not out.exists()  # refused before the run folder (and before anything was measured)


@pytest.mark.parametrize("flags,flag", [f for f in BAD_FLAGS if f[1] != "--devices"] + [
    (["--devices", "tpu"], "--devices")])
def test_bad_flag_is_refused_with_run_too(tmp_path, capsys, flags, flag):
    """With --run nothing is measured, but a bad value is still bad input, not silently ignored."""
    run = make_run(tmp_path, "r", [case("block:msla", 1024, 1024, noise(1, median=100)),
                                   case("block:softmax", 1024, 1024, noise(2, median=5000))])
    (tmp_path / "sp.toml").write_text(SPEEDUP)
    assert main(["check", "--run", str(run), "--gates", str(tmp_path / "sp.toml"), *flags]) == 2
    assert _names_what_is_accepted(_one_line(capsys), flag)


def test_absent_device_is_refused_only_when_measuring(tmp_path, capsys, cuda_gates):
    out = tmp_path / "res"
    assert main(["check", "--gates", cuda_gates, "--out", str(out), "--devices", "cuda:99"]) == 2
    err = _one_line(capsys)
    assert "--devices" in err and "cuda:99 is not present" in err and not out.exists()
    run = make_run(tmp_path, "r", [case("block:msla", 1024, 1024, noise(1, median=100)),
                                   case("block:softmax", 1024, 1024, noise(2, median=5000))])
    (tmp_path / "sp.toml").write_text(SPEEDUP)
    assert main(["check", "--run", str(run), "--gates", str(tmp_path / "sp.toml"), "--devices", "cuda:99"]) == 0
    assert "PASS  sp" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--markdown", "--json"])
def test_output_that_is_a_folder_is_refused_before_measuring(tmp_path, capsys, cuda_gates, flag):
    out = tmp_path / "res"
    assert main(["check", "--gates", cuda_gates, "--out", str(out), flag, str(tmp_path)]) == 2
    err = _one_line(capsys)
    assert flag in err and "accepted" in err and not out.exists()


def test_valid_flags_pass_validation_and_are_normalised(tmp_path, capsys, cuda_gates):
    """Good values get through (the check then stops at its gates, which apply to CUDA only: nothing measured)."""
    out = tmp_path / "res"
    assert main(["check", "--gates", cuda_gates, "--out", str(out), "--devices", "CPU", "--threads", "2",
                 "--precision", "fp32", "--backend", "eager", "--min-time", "0.1", "--max-time", "0.2",
                 "--timeout", "30"]) == 2
    err = _one_line(capsys)
    assert err == "check: error: no gate applies to device(s) cpu\n" and not out.exists()
