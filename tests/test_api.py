"""The Python API (bench.run / resume / load_run / compare / report), users' own models end to end, and the
`densebench` console script.

Users' models are real files: examples/custom_model.py and a file written here with builders that fail in each
documented way. The children only know these models through DENSEBENCH_MODELS_FROM, so an ok row proves the
fork server (and the spawned interpreter) imported them.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import bench
from bench.plan import PlanError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "custom_model.py"
FAST = dict(quick=True, level="model", res=[128], min_time=0.02, max_time=0.1, calibrate=False)

BROKEN = '''
import torch
from torch import nn
from models.registry import register_model

@register_model("t-raises")
def raises():
    raise ValueError("no weights for you")

@register_model("t-not-module")
def not_module():
    return 42

class Flat(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))

@register_model("t-not-dense")
def not_dense():
    return Flat()

@register_model("t-good")
def good():
    return nn.Conv2d(3, 5, 3, stride=2, padding=1)
'''


def test_run_returns_the_stored_run_and_users_model_goes_through_every_stage(tmp_path):
    run = bench.run(["example-segnet", "evit-b1:msla"], models_from=[str(EXAMPLE)], out=tmp_path / "results",
                    run_id="a", report=True, **FAST)
    assert run.path == tmp_path / "results" / "a" and run.run_id == "a"
    res = run.results.set_index("model")
    assert list(res["status"]) == ["ok", "ok"], run.results[["model", "status", "reason"]]
    seg = res.loc["example-segnet"]
    assert seg["family"] == "user" and seg["variant"] == "gated-depthwise"
    assert seg["params"] > 0 and seg["macs"] > 0 and seg["latency_ms_median"] > 0
    assert set(run.samples["case_id"]) == set(run.results["case_id"])
    assert run.meta["config"]["models_from"] == [str(EXAMPLE)] and run.meta["status"] == "complete"
    html = tmp_path / "reports" / "a.html"
    assert html.exists() and "example-segnet" in html.read_text()

    again = bench.run(["example-segnet", "evit-b1:msla"], models_from=[str(EXAMPLE)], out=tmp_path / "results",
                      run_id="b", report=False, **FAST)
    df = bench.compare(run, again, threshold=10.0, allow_noisy=True)  # the pipeline, not the machine, is tested
    assert set(df["model"]) == {"example-segnet", "evit-b1:msla"} and set(df["verdict"]) == {"unchanged"}
    out = bench.report([run.path, again.path], tmp_path / "both.html")
    assert out.exists() and bench.load_run(again.path).results["status"].eq("ok").all()


def test_users_model_on_the_onnxruntime_backend(tmp_path):
    pytest.importorskip("onnxruntime")
    run = bench.run(["example-segnet"], models_from=[str(EXAMPLE)], backends="onnxruntime",
                    out=tmp_path, report=False, **FAST)
    row = run.results.iloc[0]
    assert row["status"] == "ok", row["reason"]
    assert json.loads(row["backend_info"])["providers"] == ["CPUExecutionProvider"] and row["numerics_ok"]


def test_broken_users_models_become_rows_with_reasons(tmp_path, monkeypatch):
    src = tmp_path / "broken_models.py"
    src.write_text(BROKEN)
    monkeypatch.setenv("DENSEBENCH_MODELS_FROM", str(src))  # the variable alone, no models_from argument
    monkeypatch.setenv("DENSEBENCH_ISOLATION", "spawn")  # and the spawned interpreter sees the models too
    run = bench.run(["t-raises", "t-not-module", "t-not-dense", "t-good"], out=tmp_path / "r", report=False, **FAST)
    rows = run.results.set_index("model")
    assert rows.loc["t-good", "status"] == "ok", rows.loc["t-good", "reason"]
    assert rows.loc["t-raises", "status"] == "error" and "ValueError" in rows.loc["t-raises", "reason"]
    assert "no weights for you" in rows.loc["t-raises", "reason"]
    assert rows.loc["t-not-module", "status"] == "error" and "Module" in rows.loc["t-not-module", "reason"]
    assert rows.loc["t-not-dense", "status"] == "error" and "dense" in rows.loc["t-not-dense", "reason"]
    assert all("Traceback" not in r and "\n" not in r for r in rows["reason"])


def test_resume_reimports_the_runs_model_files(tmp_path):
    from bench.results.lifecycle import open_run

    run = bench.run(["example-segnet"], models_from=[str(EXAMPLE)], res=[128, 256], out=tmp_path,
                    report=False, **{k: v for k, v in FAST.items() if k != "res"})
    state = open_run(run.path)  # drop a finished case, as a kill would have left it
    state.rows = state.rows[:1]
    state.samples = [s for s in state.samples if s["case_id"] == state.rows[0]["case_id"]]
    state.mark("interrupted")
    state.save()
    state.close()
    done = bench.resume(run.path, report=False)
    assert len(done.results) == 2 and done.results["status"].eq("ok").all()
    assert done.meta["status"] == "complete" and len(done.meta["resumed"]) == 1


@pytest.mark.parametrize("options,needle", [
    (dict(models=""), "--models: empty"),
    (dict(models="example-nope"), "unknown model"),
    (dict(batch=2**64), "int64"),
    (dict(seed=-1), "--seed"),
    (dict(repeats=0), "--repeats"),
    (dict(models_from=["/no/such/file.py"]), "--models-from"),
    (dict(models_from=[""]), "--models-from: empty"),
])
def test_bad_options_raise_plan_error_before_anything_is_written(tmp_path, options, needle):
    with pytest.raises(PlanError) as e:
        bench.run(out=tmp_path / "never", **{**FAST, **options})
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "never").exists()


def test_console_script_is_the_cli():
    exe = Path(sys.executable).with_name("densebench")
    assert exe.exists(), "pip install -e . declares the densebench console script (pyproject [project.scripts])"
    r = subprocess.run([str(exe), "models", "--family", "block", "--format", "csv"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("model,") and "block:msla" in r.stdout
    r = subprocess.run([str(exe), "--models", "nope"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown model 'nope'" in r.stderr
