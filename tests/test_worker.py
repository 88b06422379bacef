"""Children that crash, hang, run out of memory or fail: each becomes a row with the right status.

The faults are injected with the documented test-only DENSEBENCH_FAULT (passed in the case spec by the runner);
the status classification is the engine's own (bench.measure.child.run_case and bench.launch.outcome.classify).
"""
import json
import signal

import pytest

from bench.cases import Case
from bench.launch.isolation import ForkServer, Spawner, make_isolation
from bench.launch.outcome import classify


def _spec(fault=None, model="block:msla", res=64, **kw):
    c = Case(model=model, family="block", variant=model.split(":")[1], level="block", device="cpu",
             device_name="test-cpu", backend="eager", precision="fp32", batch=1, threads=1, height=res, width=res,
             tokens=(res // 16) ** 2, min_time_s=0.02, max_time_s=0.2, timeout_s=60, macs=1000)
    spec = c.to_spec()
    spec.update(kw)
    spec["settings"] = {"fault": fault, "min_samples": 5} if fault else {"min_samples": 5}
    return spec


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    fs = ForkServer(tmp_path_factory.mktemp("fs"))
    fs.start()
    yield fs
    fs.close()


def test_ok_row(server):
    out = server.run(_spec(), 60)
    row, samples = classify(out, 60)
    assert row["status"] == "ok", row.get("reason")
    assert row["n"] == len(samples) >= 5
    assert row["latency_ms_min"] <= row["latency_ms_median"] <= row["latency_ms_max"]
    assert row["latency_ms_ci_low"] <= row["latency_ms_median"] <= row["latency_ms_ci_high"]
    assert row["params"] > 0 and row["peak_mem_mb"] >= 0 and row["weights_mem_mb"] > 0
    # eager fp32 is measured against a float64 forward of the same weights: a real, small, non-zero error
    assert 0.0 < row["rel_err"] < 1e-5 and row["numerics_ok"] is True
    assert "float64" in json.loads(row["backend_info"])["numerics"]
    assert row["gmacs_per_s"] == pytest.approx(1000 / (row["latency_ms_median"] / 1e3) / 1e9)
    assert out.signal == 0 and out.exit_code == 0


def test_crash_is_error_with_signal(server):
    row, samples = classify(server.run(_spec("crash"), 60), 60)
    assert row["status"] == "error" and "SIGABRT" in row["reason"] and samples == []


def test_hang_is_timeout(server):
    out = server.run(_spec("hang"), 3)
    row, _ = classify(out, 3)
    assert out.timed_out and row["status"] == "timeout" and "3 s" in row["reason"]
    # the server is still usable after a killed child
    assert classify(server.run(_spec(), 60), 60)[0]["status"] == "ok"


def test_oom_is_oom(server):
    row, _ = classify(server.run(_spec("oom"), 60), 60)
    assert row["status"] == "oom", row
    assert "allocate" in row["reason"]


def test_sigkill_without_kernel_oom_evidence_is_an_error(server):
    """The `sigkill` fault kills the child with SIGKILL itself: not the kernel's OOM killer, so no oom."""
    out = server.run(_spec("sigkill"), 60)
    row, _ = classify(out, 60)
    assert out.signal == signal.SIGKILL and not out.killed_by_us and out.pid
    assert out.oom_before is not None and out.oom_after is not None
    if out.oom_after.cgroup is not None and out.oom_after.cgroup > out.oom_before.cgroup:
        pytest.skip("the kernel OOM-killed something in this cgroup meanwhile")
    assert row["status"] == "error", row
    assert "signal 9 (SIGKILL) from outside" in row["reason"] and "fault:sigkill" in row["reason"]
    assert "no out-of-memory evidence" in row["reason"]


def test_exception_is_error(server):
    row, _ = classify(server.run(_spec("error"), 60), 60)
    assert row["status"] == "error" and "injected error" in row["reason"]


def test_fault_pattern_only_hits_matching_models(server):
    row, _ = classify(server.run(_spec("crash@evit-*"), 60), 60)
    assert row["status"] == "ok"


def test_unsupported_is_a_row(server):
    row, _ = classify(server.run(_spec(precision="tf32"), 60), 60)
    assert row["status"] == "unsupported" and "tf32" in row["reason"]


def test_spawn_isolation_classifies_the_same(tmp_path):
    out = Spawner(tmp_path).run(_spec("crash"), 120)
    row, _ = classify(out, 120)
    assert out.signal == signal.SIGABRT and row["status"] == "error" and "SIGABRT" in row["reason"]


def test_unknown_isolation_is_one_line_naming_the_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSEBENCH_ISOLATION", "thread")
    with pytest.raises(ValueError) as e:
        make_isolation(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "'thread'" in msg and "fork" in msg and "spawn" in msg


def test_extra_env_is_merged_over_child_env(tmp_path):
    for iso in (make_isolation(tmp_path, "fork", env={"DENSEBENCH_X": "1"}),
                make_isolation(tmp_path, "spawn", env={"DENSEBENCH_X": "1", "CUDA_DEVICE_ORDER": "FASTEST_FIRST"})):
        env = iso._child_env()
        assert env["DENSEBENCH_X"] == "1" and "PYTHONPATH" in env
    assert env["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"  # the caller's value wins


_USER_MODEL = '''
from torch import nn
from models.registry import register_model


@register_model("user-tiny", num_classes=4, out_stride=1)
def build():
    return nn.Conv2d(3, 4, 1)
'''


@pytest.mark.parametrize("kind", ["fork", "spawn"])
def test_user_models_load_in_the_children(tmp_path, kind):
    src = tmp_path / "tiny_user_model.py"
    src.write_text(_USER_MODEL)
    iso = make_isolation(tmp_path, kind, env={"DENSEBENCH_MODELS_FROM": str(src)})
    try:
        spec = _spec(res=32)
        spec.update(model="user-tiny", family="user", variant="custom", level="model")
        row, samples = classify(iso.run(spec, 120), 120)
    finally:
        iso.close()
    assert row["status"] == "ok", row.get("reason")
    assert row["params"] == 16 and len(samples) >= 5


def test_bad_model_source_says_why(tmp_path):
    iso = make_isolation(tmp_path, "spawn", env={"DENSEBENCH_MODELS_FROM": str(tmp_path / "missing.py")})
    row, _ = classify(iso.run(_spec(), 120), 120)
    assert row["status"] == "error" and "missing.py" in row["reason"], row
