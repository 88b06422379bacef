"""Fleet runs on a real Ray cluster (ray.cluster_utils.Cluster, no mocks): nodes on this machine that differ by
their custom resources, host labels and declared device names, so each is a host and a device class of its own.

One cluster for the module (starting Ray and probing a node costs seconds on 2 cores): node-a (class "Fleet CPU
A"), node-b and node-c (both "Fleet CPU B", so a case lost on one is retried on the other); node-c hangs every
case (DENSEBENCH_FAULT) so that removing it always catches a case mid-way. node-d comes and goes in the
resume test.
"""
from __future__ import annotations

import json
import threading
import time

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[fleet]')")
from ray.cluster_utils import Cluster  # noqa: E402

from bench import api  # noqa: E402
from bench.errors import UsageError  # noqa: E402
from bench.fleet.cluster import FleetError, connect  # noqa: E402
from bench.fleet.dispatch import measure_on_cluster  # noqa: E402
from bench.fleet.hygiene import DEVICE_NAMES_ENV, NODE_ENV, node_env_record  # noqa: E402
from bench.fleet.inventory import list_nodes  # noqa: E402
from bench.fleet.placement import cluster_plan  # noqa: E402
from bench.fleet.records import HOST_LABEL, NODE_LOST  # noqa: E402

pytestmark = pytest.mark.timeout(600)

# a --quick-like matrix: two mixer blocks at 64x64, 2 threads (Ray would give 1), short budgets, no calibration
OPTIONS = dict(models="block:msla,block:relu-linear", level="block", res=64, min_time=0.05, max_time=0.2,
               timeout=60, threads=2, calibrate=False)


def _node(cluster: Cluster, host: str, name: str, fault: str | None = None):
    env = {NODE_ENV: node_env_record(), DEVICE_NAMES_ENV: json.dumps({"cpu": name})}
    if fault:
        env["DENSEBENCH_FAULT"] = fault
    return cluster.add_node(num_cpus=1, resources={"densebench-cpu": 1}, labels={HOST_LABEL: host}, env_vars=env)


@pytest.fixture(scope="module")
def cluster():
    # A removed node is marked dead after health_check_failure_threshold (5) missed checks; one a second, not
    # Ray's one every 3 s, so each lost node costs ~5 s of waiting, not ~15-25 (a live node, which answers within
    # health_check_timeout_ms, is never marked dead by it)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                      "_system_config": {"health_check_period_ms": 1000}})
    nodes = {"node-a": _node(c, "node-a", "Fleet CPU A"), "node-b": _node(c, "node-b", "Fleet CPU B"),
             "node-c": _node(c, "node-c", "Fleet CPU B", fault="hang@block:*")}
    c.wait_for_nodes()
    connect(c.address)
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def _run(tmp_path, c, hosts, progress=None, **options):
    plan = cluster_plan(list_nodes(hosts), c.address, **{**OPTIONS, **options})
    state = api.start(plan, tmp_path)
    try:
        measure_on_cluster(state, plan, c.address, hosts=hosts, progress=progress)
    finally:
        state.close()
    return plan, api.load_run(state.run_dir)


def _remove_when(c, node, started: threading.Event, after_s: float = 3.0) -> threading.Thread:
    """Kill `node` (no graceful drain) `after_s` seconds after a case was handed to it."""
    def go():
        started.wait(120)
        time.sleep(after_s)
        c.remove_node(node, allow_graceful=False)
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_every_node_lands_in_one_run_with_its_host_and_threads(cluster, tmp_path):
    c, _ = cluster
    plan, run = _run(tmp_path, c, ["node-a", "node-b"])
    res = run.results.set_index("case_id")
    assert len(plan.cases) == 4 and set(res.index) == {k.case_id for k in plan.cases}
    assert (res["status"] == "ok").all(), res[["status", "reason"]]
    assert dict(zip(res["device_name"], res["host"])) == {"Fleet CPU A": "node-a", "Fleet CPU B": "node-b"}
    assert run.meta["status"] == "complete"
    assert (res["threads"] == 2).all()
    assert [json.loads(b)["torch_threads"] for b in res["backend_info"]] == [2] * 4  # not Ray's OMP_NUM_THREADS=1
    nodes = run.meta["fleet"]["nodes"]
    assert set(nodes) >= {"node-a", "node-b"} and nodes["node-a"]["devices"] == {"cpu": "Fleet CPU A"}
    assert nodes["node-a"]["ray_env_fixed"]["OMP_NUM_THREADS"][0] == "1"  # what Ray had set, removed
    assert set(run.samples["case_id"]) == set(res.index)


def test_node_lost_mid_case_is_retried_on_its_class(cluster, tmp_path):
    c, nodes = cluster
    started = threading.Event()
    on_c = _remove_when(c, nodes["node-c"], started)

    class_b = []

    def progress(case, i, n):
        class_b.append(case.device_name == "Fleet CPU B")
        if sum(class_b) >= 2:
            started.set()  # both class-B nodes have a case (one resolution each): node-c's hangs

    plan, run = _run(tmp_path, c, ["node-a", "node-b", "node-c"], progress, res="64,96")
    on_c.join()
    res = run.results.set_index("case_id")
    assert len(res) == 8 and (res["status"] == "ok").all(), res[["status", "host", "reason"]]
    assert set(res.loc[res["device_name"] == "Fleet CPU B", "host"]) == {"node-b"}
    retried = run.meta["fleet"]["retried"]
    assert [(r["lost"], r["to"]) for r in retried] == [("node-c", "node-b")]


def test_lost_node_without_a_peer_gives_node_lost_rows_and_resume_completes(cluster, tmp_path):
    c, nodes = cluster
    d = _node(c, "node-d", "Fleet CPU D", fault="hang@block:*")
    c.wait_for_nodes()
    started = threading.Event()
    on_d = _remove_when(c, d, started)

    def progress(case, i, n):
        if case.device_name == "Fleet CPU D":
            started.set()

    plan, run = _run(tmp_path, c, ["node-a", "node-d"], progress)
    on_d.join()
    res = run.results.set_index("case_id")
    lost = res[res["device_name"] == "Fleet CPU D"]
    assert len(lost) == 1 and lost["status"].tolist() == ["error"]
    assert lost["reason"].iloc[0].startswith(f"{NODE_LOST}: node-d")
    assert run.meta["status"] == "interrupted"  # the other class-D case waits for a node of its class
    kept = res[res["device_name"] == "Fleet CPU A"]
    assert (kept["status"] == "ok").all() and len(kept) == 2

    _node(c, "node-d", "Fleet CPU D")  # the board is back, healthy
    c.wait_for_nodes()
    state = api.reopen(run.path, retry_failed=["error"])
    try:
        measure_on_cluster(state, api.plan_of(state), c.address)
    finally:
        state.close()
    done = api.load_run(run.path)
    after = done.results.set_index("case_id")
    assert done.meta["status"] == "complete" and set(after.index) == {k.case_id for k in plan.cases}
    assert (after["status"] == "ok").all(), after[["status", "reason"]]
    assert set(after.loc[after["device_name"] == "Fleet CPU D", "host"]) == {"node-d"}
    for cid in kept.index:  # nothing measured before is lost or measured again
        assert after.loc[cid, "latency_ms_median"] == kept.loc[cid, "latency_ms_median"]
        assert after.loc[cid, "started_at"] == kept.loc[cid, "started_at"]
    old = run.samples[run.samples["case_id"].isin(kept.index)].reset_index(drop=True)
    new = done.samples[done.samples["case_id"].isin(kept.index)].reset_index(drop=True)
    assert old["latency_ms"].tolist() == new["latency_ms"].tolist()


def test_a_device_no_node_has_is_one_line(cluster):
    c, _ = cluster
    with pytest.raises(FleetError, match=r"--devices cuda: no node of the cluster has it") as e:
        cluster_plan(list_nodes(["node-a"]), c.address, **{**OPTIONS, "devices": "cuda"})
    assert isinstance(e.value, UsageError) and "\n" not in str(e.value)
    with pytest.raises(FleetError, match="--hosts: nowhere not in the cluster"):
        list_nodes(["nowhere"])


def test_unreachable_address_is_one_line():
    from bench.fleet.cluster import reachable

    with pytest.raises(FleetError, match="unreachable"):
        reachable("127.0.0.1:1")
    with pytest.raises(FleetError, match="not HOST:PORT"):
        reachable("nohost")


def test_ray_not_installed_is_one_line(monkeypatch):
    import sys

    from bench.fleet.cluster import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees where it is not installed
    with pytest.raises(FleetError, match=r"needs Ray, which is not installed; accepted: pip install -e '.\[fleet\]'"):
        import_ray()


def test_node_command_advertises_devices_and_keeps_the_dashboard_off(capsys):
    import argparse

    from bench.commands import node

    p = argparse.ArgumentParser()
    node.add_parser(p.add_subparsers())
    a = p.parse_args(["node", "--head", "--devices", "cpu,cuda:0", "--device-name", "cuda:0=Jetson AGX Orin",
                      "--host", "orin 1", "--dry-run"])
    assert a.func(a) == 0
    line = capsys.readouterr().out
    assert '"densebench-cpu": 1, "densebench-cuda:0": 1' in line and "--labels=densebench-host=orin-1" in line
    assert "--include-dashboard=false" in line and "--num-gpus=0" in line and "Jetson AGX Orin" in line
    with pytest.raises(UsageError, match="--device-name"):
        a = p.parse_args(["node", "--head", "--devices", "cpu", "--device-name", "cuda:0=x", "--dry-run"])
        a.func(a)


def test_cluster_flags_choose_the_measuring_function(tmp_path):
    import argparse

    from bench.commands.common import add_cluster_arguments
    from bench.commands.run import check_resume, measurer

    p = argparse.ArgumentParser()
    add_cluster_arguments(p)
    assert measurer(p.parse_args([])) is api.measure
    m = measurer(p.parse_args(["--cluster", "local", "--hosts", "a,b"]))
    assert m.func is measure_on_cluster and m.keywords == {"address": "local", "hosts": ["a", "b"]}
    with pytest.raises(UsageError, match="--hosts: only with --cluster"):
        measurer(p.parse_args(["--hosts", "a"]))

    run = tmp_path / "r1"
    run.mkdir()
    (run / "meta.json").write_text(json.dumps({"run_id": "r1", "fleet": {"nodes": {"node-a": {}}}}))
    with pytest.raises(UsageError, match="a cluster run .*--resume r1 --cluster ADDRESS"):
        check_resume(p.parse_args([]), run)
    check_resume(p.parse_args(["--cluster", "local"]), run)


def test_driver_killed_loses_nothing_and_resume_redoes_only_the_rest(cluster, tmp_path):
    """kill -9 of the driver (`run_bench.py run --cluster`) after its first row: that row and its samples stay, and
    --resume on the cluster measures only the cases that have no row."""
    import os
    import signal
    import subprocess
    import sys

    from bench.results.store import load_run

    c, _ = cluster
    out = tmp_path / "results"
    argv = [sys.executable, "run_bench.py", "run", "--cluster", c.address, "--hosts", "node-a", "--models",
            OPTIONS["models"], "--level", "block", "--res", "64,128", "--min-time", "0.05", "--max-time", "0.2",
            "--threads", "2", "--no-calibrate", "--no-report", "-q", "--out", str(out), "--run-id", "killed"]
    p = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and p.poll() is None:
        try:
            if len(load_run(out / "killed").results) >= 1:
                break
        except Exception:  # the folder or its first commit is not there yet
            pass
        time.sleep(0.2)
    assert p.poll() is None, p.stderr.read().decode()[-2000:]
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(30)
    before = load_run(out / "killed")
    assert 1 <= len(before.results) < 4
    kept = before.results.set_index("case_id")
    state = api.reopen(out / "killed")
    try:
        measure_on_cluster(state, api.plan_of(state), c.address, hosts=["node-a"])
    finally:
        state.close()
    done = load_run(out / "killed")
    after = done.results.set_index("case_id")
    assert len(after) == 4 and (after["status"] == "ok").all() and done.meta["status"] == "complete"
    for cid in kept.index:
        assert after.loc[cid, "started_at"] == kept.loc[cid, "started_at"]
        assert after.loc[cid, "latency_ms_median"] == kept.loc[cid, "latency_ms_median"]
    old = before.samples[before.samples["case_id"].isin(kept.index)]["latency_ms"].tolist()
    assert done.samples[done.samples["case_id"].isin(kept.index)]["latency_ms"].tolist() == old


@pytest.mark.parametrize("argv, says", [
    (["run", "--cluster", ""], "argument --cluster: empty; accepted: HOST:PORT"),
    (["run", "--cluster", "127.0.0.1:99999"], "argument --cluster: '127.0.0.1:99999': not HOST:PORT"),
    (["run", "--cluster", "127.0.0.1:18446744073709551616"], "not HOST:PORT"),  # was an OverflowError traceback
    (["run", "--cluster", "head:0"], "not HOST:PORT; accepted: HOST:PORT of a Ray head node's GCS (PORT 1-65535"),
    (["run", "--cluster", "a b:6379"], "not HOST:PORT"),
    (["run", "--cluster", "x" * 300 + ":6379"], "not HOST:PORT"),  # an idna UnicodeError in socket otherwise
    (["run", "--cluster", "ray://head:10001"], "Ray Client addresses are not supported"),
    (["node", "--address", "garbage"], "argument --address: 'garbage': not HOST:PORT"),
    (["node", "--address", "local"], "argument --address: 'local': not HOST:PORT"),
    (["node", "--head", "--port", "99999"], "argument --port: '99999': not a port; accepted: an integer 1-65535"),
    (["node", "--head", "--port", "0"], "argument --port: '0': not a port"),
    (["node", "--head", "--num-cpus", "-5"], "argument --num-cpus: '-5': not a CPU count; accepted: an integer 0-"),
    (["node", "--head", "--num-cpus", "2.5"], "not a CPU count"),
    (["node", "--address", "head:6379", "--port", "7000"], "--port 7000: only with --head"),
])
def test_cluster_addresses_and_node_numbers_are_one_line_before_ray(argv, says, capsys):
    """Every value is checked before Ray sees it: one line, exit 2 (Ray printed 31-42 lines of traceback and once
    left a gcs_server running; --cluster '' was a local run)."""
    from bench import cli

    assert cli.main([*argv, "--dry-run"] if argv[0] == "node" else [*argv, "--quick", "--list"]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_addresses_ray_accepts_pass_and_the_api_door_checks_them_too(capsys):
    from bench import cli
    from bench.fleet.cluster import check_address

    for good in ("local", "auto", " head:6379 ", "10.0.0.1:1", "[::1]:65535", "node-1.lab.example.org:6379"):
        assert check_address(good) == good.strip()
    assert cli.main(["node", "--head", "--port", "7000", "--num-cpus", "0", "--dry-run"]) == 0
    assert "--head --port=7000 --num-cpus=0" in capsys.readouterr().out
    assert cli.main(["node", "--address", "auto", "--dry-run"]) == 0
    for bad, says in ((5, "--cluster 5: a int"), ("", "--cluster: empty"), ("h:65536", "not HOST:PORT")):
        with pytest.raises(FleetError, match=says):
            connect(bad)  # bench.run(cluster=...) and plan_on_cluster come through here


def test_node_checks_the_port_and_the_head_before_ray_start(monkeypatch, capsys):
    """`ray start` took ~50 s and 47 lines of traceback on a taken port, and retried a dead head for minutes."""
    import os
    import socket

    from bench import cli

    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail(f"ray start was run: {a[1]}"))
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["node", "--head", "--port", str(port)]) == 2
    assert cli.main(["node", "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and f"--port {port}: cannot be used on this machine" in err[0], err
    assert "--address 127.0.0.1:1: unreachable" in err[1]


def _processes() -> dict[int, tuple[int, str, str, bytes]]:
    """pid -> (parent, start time, state + name, environment) of every process this user can read."""
    from pathlib import Path

    out = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            head, _, rest = (d / "stat").read_text().rpartition(")")
            f = rest.split()
            out[int(d.name)] = (int(f[1]), f[19], f"{f[0]}:{head.partition('(')[2]}", (d / "environ").read_bytes())
        except (OSError, IndexError, ValueError):
            pass  # gone, or not ours
    return out


def _started_by(root: int | None, mark: str, known: dict[int, str] | None = None) -> dict[int, str]:
    """{pid: start time} of the live processes `root` started: its descendants now (None once it is gone: its pid
    may be reused), those seen before (`known`, matched by start time: Ray's agents outlive their parents) and
    those whose environment carries `mark` (Ray rewrites its agents' environment, hence both); never another
    test's processes."""
    procs = _processes()
    live = {pid: v for pid, v in procs.items() if not v[2].startswith("Z")}
    found = {pid: v[1] for pid, v in live.items()
             if f"DENSEBENCH_TEST_MARK={mark}".encode() in v[3].split(b"\0")
             or (known and known.get(pid) == v[1])}
    todo = [] if root is None else [root]
    while todo:
        parent = todo.pop()
        kids = [pid for pid, v in live.items() if v[0] == parent and pid not in found]
        found.update({pid: live[pid][1] for pid in kids})
        todo += kids
    return found


def _names(pids: dict[int, str]) -> list[str]:
    procs = _processes()
    return sorted(procs[p][2].partition(":")[2] for p in pids if p in procs)


def _head_and_worker(names: list[str]) -> bool:
    """The head is up (gcs_server, raylet, its agents) and a Ray worker of the run exists."""
    agents = {"ray::DashboardA", "ray::RuntimeEnv"}
    return {"gcs_server", "raylet", *agents} <= set(names) and any(
        n.startswith("ray::") and n not in agents for n in names)


def test_a_local_head_does_not_outlive_its_killed_driver(tmp_path):
    """kill -9 of the driver of `run --cluster local` while its cases run: within a short grace period no process
    it started is left (ray.init()'s head left the raylet's agents up for 40-60 s; `ray start` a whole head)."""
    import os
    import signal
    import subprocess
    import sys
    import uuid

    mark = uuid.uuid4().hex
    argv = [sys.executable, "run_bench.py", "run", "--cluster", "local", "--models", "block:msla", "--level",
            "block", "--res", "64,96,128", "--min-time", "0.5", "--max-time", "1", "--threads", "1", "--no-calibrate",
            "--no-report", "-q", "--out", str(tmp_path)]
    err = tmp_path / "stderr.txt"
    with open(err, "wb") as f:
        p = subprocess.Popen(argv, env={**os.environ, "DENSEBENCH_TEST_MARK": mark}, stdout=subprocess.DEVNULL,
                             stderr=f, start_new_session=True)
    started: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline:
            started = _started_by(p.pid, mark, started)
            if _head_and_worker(_names(started)):
                break
            time.sleep(0.2)
        assert p.poll() is None, err.read_text()[-2000:]
        assert _head_and_worker(_names(started)), (_names(started), err.read_text()[-2000:])
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        deadline = time.monotonic() + 15
        while _started_by(None, mark, started) and time.monotonic() < deadline:
            time.sleep(0.25)
        left = _names(_started_by(None, mark, started))
        assert left == [], f"left behind by the killed driver: {left} (of {_names(started) or len(started)})"
    finally:
        for pid in _started_by(None if p.poll() is not None else p.pid, mark, started):
            try:
                os.kill(pid, signal.SIGKILL)  # only what this test's driver started
            except OSError:
                pass
        if p.poll() is None:
            p.kill()
