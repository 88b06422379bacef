"""The command line: bad input (one line, exit 2, nothing written), --help, and a --quick end-to-end run."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.schema import COLUMNS, COLUMN_NAMES, SAMPLE_COLUMNS, STATUSES

REPO = Path(__file__).resolve().parent.parent


def _cli(*args, **kw):
    return subprocess.run([sys.executable, str(REPO / "run_bench.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, **kw)


def _one_line_error(stderr: str, *needles: str) -> None:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("args,needles", [
    (["--models", "nope"], ["unknown model 'nope'", "evit-b1:msla"]),
    (["--devices", "cuda:7"], ["cuda:7", "accepted here: cpu"]),
    (["--res", "1024x-5"], ["not positive"]),
])
def test_bad_input_subprocess(tmp_path, args, needles):
    out = tmp_path / "results"
    r = _cli(*args, "--out", str(out))
    assert r.returncode == 2
    _one_line_error(r.stderr, *needles)
    assert r.stdout == ""
    assert not out.exists()


@pytest.mark.parametrize("args,needles", [
    (["--res", "abc"], ["malformed resolution", "HxW"]),
    (["--res", "0"], ["not positive"]),
    (["--res", "500"], ["multiples of 32"]),
    (["--devices", "tpu"], ["unknown device 'tpu'", "cpu"]),
    (["--backends", "eager,magic"], ["unknown backend 'magic'", "onnxruntime"]),
    (["--precision", "fp8"], ["unknown precision 'fp8'", "bf16"]),
    (["--batch", "0"], ["--batch", ">= 1"]),
    (["--threads", "two"], ["--threads", "integer"]),
    (["--level", "layer"], ["model, block, both"]),
    (["--max-time", "0"], ["--max-time", "positive"]),
    (["--min-time", "5", "--max-time", "1"], ["--min-time"]),
    (["--nonsense"], ["unrecognized arguments"]),
    (["frobnicate"], ["unknown command", "models"]),
    (["--resume", "no-such-run"], ["--resume", "no run"]),
])
def test_bad_input_in_process(tmp_path, capsys, args, needles):
    out = tmp_path / "results"
    assert main([*args, "--out", str(out)]) == 2
    cap = capsys.readouterr()
    _one_line_error(cap.err, *needles)
    assert not out.exists()


def test_unwritable_out(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    assert main(["--res", "128", "--out", str(f / "results")]) == 2
    _one_line_error(capsys.readouterr().err, "--out", "not a folder")


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--resume", "--quick", "--devices", "compare", "DENSEBENCH_FAULT", "Exit status"):
        assert needle in text


def test_quick_end_to_end(tmp_path, capfd):
    out = tmp_path / "results"
    rc = main(["--quick", "--out", str(out)])  # the CLI's main in this process; the script's own: the tests above
    r = subprocess.CompletedProcess("run_bench.py", rc, *capfd.readouterr())  # children's output too (capfd)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    (run_dir,) = list(out.iterdir())
    assert f"results: {run_dir}" in r.stdout and "msla speedup over softmax" in r.stdout
    # parquet and csv: exactly the schema's columns, one row per case, all ok
    pq = pd.read_parquet(run_dir / "results.parquet")
    csv = pd.read_csv(run_dir / "results.csv")
    assert list(pq.columns) == list(COLUMN_NAMES) == list(csv.columns)
    for c in COLUMNS:
        kind = str(pq[c.name].dtype).lower()
        assert {"int64": "int", "float64": "float", "bool": "bool", "string": "str"}[c.dtype] in kind, (c, kind)
    assert len(pq) == 4 and set(pq["status"]) <= set(STATUSES)
    assert (pq["status"] == "ok").all(), pq[["model", "reason"]]
    assert set(pq["model"]) == {"evit-b1:msla", "evit-b1:softmax", "block:msla", "block:softmax"}
    assert set(pq["level"]) == {"model", "block"} and (pq["threads"] == 1).all()
    assert (pq["height"] == 128).all() and (pq["macs"] > 0).all() and (pq["params"] > 0).all()
    assert (pq["latency_ms_median"] > 0).all() and (pq["throughput_ips"] > 0).all()
    assert (pq["frac_of_peak"] > 0).all() and (pq["device_peak_gmacs_per_s"] > 0).all()
    assert pq["case_id"].is_unique and pq["run_id"].nunique() == 1
    s = pd.read_parquet(run_dir / "samples.parquet")
    assert list(s.columns) == [c.name for c in SAMPLE_COLUMNS]
    assert s.groupby("case_id").size().to_dict() == pq.set_index("case_id")["n"].to_dict()
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["run_id"] == run_dir.name
    env = meta["env"]
    for k in ("host", "os", "cpu_model", "cpu_physical_cores", "ram_total_gb", "packages", "git", "command"):
        assert k in env
    assert meta["calibration"]["cpu|fp32|t1"]["gmacs_per_s"] > 0
    assert meta["started_at"] <= meta["ended_at"]
    # the report, next to the results folder
    assert (tmp_path / "reports" / f"{run_dir.name}.html").exists() or "report: failed" in r.stderr


def test_list_prints_the_default_matrix(tmp_path, capsys):
    assert main(["--list", "--res", "512,1024,2048", "--out", str(tmp_path / "r")]) == 0
    ids = capsys.readouterr().out.splitlines()
    assert len(ids) == 24 and len(set(ids)) == 24  # 4 variants + 4 blocks, 3 resolutions
    assert ids[0].startswith("evit-b1:msla|model|512x512|") and not (tmp_path / "r").exists()


def test_run_id_is_validated(tmp_path, capsys):
    out = tmp_path / "results"
    (out / "taken").mkdir(parents=True)
    assert main(["--run-id", "taken", "--out", str(out)]) == 2
    _one_line_error(capsys.readouterr().err, "already exists")
    assert main(["--run-id", "../escape", "--out", str(out)]) == 2
    _one_line_error(capsys.readouterr().err, "--run-id", "accepted")
    assert sorted(p.name for p in out.iterdir()) == ["taken"]


def test_unknown_isolation_variable_is_one_line_before_anything_is_written(tmp_path):
    out = tmp_path / "results"
    r = _cli("--quick", "--out", str(out), env={**__import__("os").environ, "DENSEBENCH_ISOLATION": "bogus"})
    assert r.returncode == 2
    _one_line_error(r.stderr, "DENSEBENCH_ISOLATION", "'bogus'", "accepted: fork, spawn")
    assert not out.exists()
