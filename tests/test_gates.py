import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.analysis.gates import evaluate_gates, matrix_for
from bench.analysis.gates_file import DEFAULT_GATES, GateConfigError, load_gates
from bench.commands.check import add_check_arguments, cmd_check
from bench.results.store import load_run

sys.path.insert(0, str(Path(__file__).parent))  # works with or without tests/__init__.py
from runfactory import case, make_run, noise  # noqa: E402

SPEEDUP = {"name": "sp", "kind": "speedup", "faster": "block:msla", "slower": "block:softmax", "height": 1024,
           "width": 1024, "min_ratio": 10.0}
SCALING = {"name": "sc", "kind": "scaling_exponent", "model": "block:msla", "resolutions": [512, 1024, 2048],
           "max_exponent": 1.3}


def _run(tmp_path, cases, name="r"):
    return load_run(make_run(tmp_path, name, cases))


def _args(*argv):
    return add_check_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_default_gates_file_is_valid():
    gates = load_gates()
    assert DEFAULT_GATES.exists() and len(gates) >= 3
    assert ("block:msla", 1024, 1024) in matrix_for(gates, ["cpu"])
    assert all(m.startswith("block:") for m, _, _ in matrix_for(gates, ["cpu"]))


def test_speedup_pass_and_fail_name_the_values(tmp_path):
    good = _run(tmp_path, [case("block:msla", 1024, 1024, noise(1, median=100)),
                           case("block:softmax", 1024, 1024, noise(2, median=5000))], "good")
    [r] = evaluate_gates(good, [SPEEDUP])
    assert r.passed and not r.skipped and r.measured["ratio"] == pytest.approx(50, rel=0.05)
    bad = _run(tmp_path, [case("block:msla", 1024, 1024, noise(1, median=1000)),
                          case("block:softmax", 1024, 1024, noise(2, median=5000))], "bad")
    [r] = evaluate_gates(bad, [SPEEDUP])
    assert not r.passed and not r.skipped
    assert "block:softmax / block:msla at 1024x1024" in r.message and "5.00x" in r.message and "10x" in r.message
    assert r.measured["faster_ms"] == pytest.approx(1000, rel=0.05)


def test_speedup_statuses(tmp_path):
    oom = _run(tmp_path, [case("block:msla", 1024, 1024, noise(1, median=100)),
                          case("block:softmax", 1024, 1024, status="oom")], "oom")
    [r] = evaluate_gates(oom, [SPEEDUP])
    assert r.passed and "did not finish (oom)" in r.message
    broken = _run(tmp_path, [case("block:msla", 1024, 1024, status="error"),
                             case("block:softmax", 1024, 1024, noise(2, median=5000))], "broken")
    [r] = evaluate_gates(broken, [SPEEDUP])
    assert not r.passed and not r.skipped and "did not run ok" in r.message
    absent = _run(tmp_path, [case("block:msla", 1024, 1024, noise(1))], "absent")
    [r] = evaluate_gates(absent, [SPEEDUP])
    assert r.skipped and "no slower row" in r.message


def test_scaling_exponent(tmp_path):
    lin = [case("block:msla", r, r, noise(r, median=10 * (r / 512) ** 2)) for r in (512, 1024, 2048)]
    quad = [case("block:msla", r, r, noise(r, median=10 * (r / 512) ** 4)) for r in (512, 1024, 2048)]
    [r] = evaluate_gates(_run(tmp_path, lin, "lin"), [SCALING])
    assert r.passed and r.measured["exponent"] == pytest.approx(1.0, abs=0.03)
    assert set(r.measured["points_ms"]) == {"512x512", "1024x1024", "2048x2048"}
    [r] = evaluate_gates(_run(tmp_path, quad, "quad"), [SCALING])
    assert not r.passed and r.measured["exponent"] == pytest.approx(2.0, abs=0.03)
    assert "pixels^2.00" in r.message and "<= 1.3" in r.message
    [r] = evaluate_gates(_run(tmp_path, quad, "quad2"),
                         [{"name": "q", "kind": "scaling_exponent", "model": "block:msla", "min_exponent": 1.7}])
    assert r.passed
    [r] = evaluate_gates(_run(tmp_path, lin[:1], "one"), [SCALING])
    assert r.skipped


def test_gates_per_group_and_device_filter(tmp_path):
    rows = []
    for thr in (1, 2):
        rows += [case("block:msla", 1024, 1024, noise(thr, median=100), threads=thr),
                 case("block:softmax", 1024, 1024, noise(thr + 9, median=5000 if thr == 1 else 500), threads=thr)]
    res = evaluate_gates(_run(tmp_path, rows), [SPEEDUP])
    assert [(r.group.endswith("t1"), r.passed) for r in res] == [(True, True), (False, False)]
    [r] = evaluate_gates(_run(tmp_path, rows, "r2"), [{**SPEEDUP, "devices": ["cuda"]}])
    assert r.skipped and "cuda" in r.message


@pytest.mark.parametrize("bad,msg", [
    ({"kind": "speedup"}, "missing name"),
    ({"name": "x", "kind": "nope"}, "kind"),
    ({"name": "x", "kind": "speedup", "faster": "a"}, "missing slower"),
    ({"name": "x", "kind": "scaling_exponent", "model": "a"}, "max_exponent"),
    ({"name": "x", "kind": "speedup", "faster": "a", "slower": "b", "height": 1, "width": 1, "min_ratio": "2"},
     "number"),
])
def test_invalid_gates(tmp_path, bad, msg):
    from bench.analysis.gates_file import validate_gates
    with pytest.raises(GateConfigError, match=msg):
        validate_gates([bad])


def test_cmd_check_on_existing_run(tmp_path, capsys):
    good = make_run(tmp_path, "good", [case("block:msla", r, r, noise(r, median=10 * (r / 512) ** 2.1))
                                       for r in (512, 1024, 2048)]
                    + [case("block:softmax", r, r, noise(r + 1, median=10 * (r / 512) ** 4 * 5)) for r in (512, 1024)])
    md, js = tmp_path / "g.md", tmp_path / "g.json"
    assert cmd_check(_args("--run", str(good), "--markdown", str(md), "--json", str(js))) == 0
    out = capsys.readouterr().out
    assert "PASS  msla-faster-than-softmax-1024" in out and "FAIL" not in out
    assert "| gate |" in md.read_text()
    data = json.loads(js.read_text())
    assert {d["outcome"] for d in data} <= {"PASS", "SKIP"} and any(d["outcome"] == "PASS" for d in data)
    # a run where msla is quadratic and barely faster: the gates fail and name the values
    bad = make_run(tmp_path, "bad", [case("block:msla", r, r, noise(r, median=10 * (r / 512) ** 4))
                                     for r in (512, 1024, 2048)]
                   + [case("block:softmax", r, r, noise(r + 1, median=12 * (r / 512) ** 4)) for r in (512, 1024)])
    assert cmd_check(_args("--run", str(bad))) == 1
    out = capsys.readouterr().out
    assert "FAIL  msla-faster-than-softmax-1024" in out and "1.20x (< required 4x)" in out
    assert "FAIL  msla-near-linear-in-pixels" in out and "pixels^2.00" in out


def test_cmd_check_bad_input(tmp_path, capsys):
    assert cmd_check(_args("--run", str(tmp_path / "nope"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("check: error: ") and err.count("\n") == 1
    (tmp_path / "g.toml").write_text("[[gate]]\nname = 'x'\nkind = 'speedup'\n")
    assert cmd_check(_args("--run", str(tmp_path), "--gates", str(tmp_path / "g.toml"))) == 2
    assert "missing faster" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("[[gate]\n")
    assert cmd_check(_args("--run", str(tmp_path), "--gates", str(tmp_path / "bad.toml"))) == 2
    assert "invalid TOML" in capsys.readouterr().err
    other = make_run(tmp_path, "other", [case("evit-b1:msla", 512, 512, noise(1))])
    assert cmd_check(_args("--run", str(other))) == 2  # no gate applies: not a silent pass
    assert "no gate could be evaluated" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("DENSEBENCH_SLOW_TESTS"),
                    reason="runs the real engine (~30 s on a busy 2-core machine); set DENSEBENCH_SLOW_TESTS=1")
def test_cmd_check_measures_a_tiny_matrix_with_the_engine(tmp_path, capsys):
    gates = tmp_path / "tiny.toml"
    gates.write_text('[[gate]]\nname = "tiny"\nkind = "speedup"\nfaster = "block:relu-linear"\n'
                     'slower = "block:softmax"\nheight = 256\nwidth = 256\nmin_ratio = 1.0\n')
    from bench.commands.check import measure_gates  # the command layer measures; gates only evaluates

    rc = cmd_check(_args("--gates", str(gates), "--out", str(tmp_path / "res"), "--min-time", "0.05",
                         "--max-time", "0.2"), measure=measure_gates)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "PASS  tiny" in out and "check run:" in out


def test_cmd_check_measures_through_the_injected_measure(tmp_path, capsys):
    """Without --run, cmd_check evaluates the run the command layer's `measure` made; without one it says so."""
    made = make_run(tmp_path, "made", [case("block:msla", 1024, 1024, noise(1, median=100)),
                                       case("block:softmax", 1024, 1024, noise(2, median=5000))])
    (tmp_path / "sp.toml").write_text('[[gate]]\nname = "sp"\nkind = "speedup"\nfaster = "block:msla"\n'
                                      'slower = "block:softmax"\nheight = 1024\nwidth = 1024\nmin_ratio = 10.0\n')
    calls = []

    def measure(gates, devices, out_dir, **timing):
        calls.append((matrix_for(gates, ["cpu"]), devices, out_dir, timing["threads"], timing["min_time_s"]))
        return made

    args = _args("--gates", str(tmp_path / "sp.toml"), "--out", str(tmp_path / "res"), "--min-time", "0.05")
    assert cmd_check(args, measure=measure) == 0
    assert calls == [([("block:msla", 1024, 1024), ("block:softmax", 1024, 1024)], ["cpu"], tmp_path / "res", 1,
                      0.05)]
    out = capsys.readouterr().out
    assert f"check run: {made}" in out and "PASS  sp" in out
    assert cmd_check(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("check: error: ") and err.count("\n") == 1 and "--run" in err


def test_gates_apply_only_where_their_thresholds_were_measured(tmp_path):
    rows = []
    for thr in (1, 2):
        rows += [case("block:msla", 1024, 1024, noise(thr, median=100), threads=thr),
                 case("block:softmax", 1024, 1024, noise(thr + 9, median=5000), threads=thr)]
    gate = {**SPEEDUP, "measured_for": {"threads": [1], "backend": ["eager"]}}
    t1, t2 = evaluate_gates(_run(tmp_path, rows), [gate])
    assert t1.passed and not t1.skipped
    assert t2.skipped and t2.outcome == "SKIP" and t2.message == "measured for threads 1; this run has threads 2"
    [r] = evaluate_gates(_run(tmp_path, rows[:2], "cpu"), [{**SPEEDUP, "measured_for": {"devices": ["cuda"]}}])
    assert r.skipped and r.message == "measured for device cuda; this run has device cpu"
    assert all(g.get("measured_for") for g in load_gates())  # every shipped gate says where it was measured


@pytest.mark.parametrize("measured_for,msg", [
    ({"thread": [1]}, "measured_for.thread is not one of"),
    ({"threads": 1}, "measured_for.threads must be a non-empty list of int"),
    ({"threads": ["1"]}, "list of int"),
    ({"backend": []}, "non-empty list of str"),
    ([1], "must be a table"),
])
def test_invalid_measured_for(measured_for, msg):
    from bench.analysis.gates_file import validate_gates
    with pytest.raises(GateConfigError, match=msg):
        validate_gates([{**SPEEDUP, "measured_for": measured_for}])


def _gate_file(tmp_path):
    (tmp_path / "sp.toml").write_text('[[gate]]\nname = "sp"\nkind = "speedup"\nfaster = "block:msla"\n'
                                      'slower = "block:softmax"\nheight = 1024\nwidth = 1024\nmin_ratio = 10.0\n')
    return str(tmp_path / "sp.toml")


def test_noisy_rows_are_not_judged_unless_allowed(tmp_path, capsys):
    run = make_run(tmp_path, "busy", [case("block:msla", 1024, 1024, noise(1, median=100)),
                                      case("block:softmax", 1024, 1024, noise(2, median=5000), noisy=True,
                                           noisy_reason="load 3.4 on 2 cores")])
    [r] = evaluate_gates(load_run(run), [SPEEDUP])
    assert r.skipped and r.noisy and r.outcome == "SKIP-NOISY"
    assert "block:softmax 1024x1024 (load 3.4 on 2 cores)" in r.message
    assert cmd_check(_args("--run", str(run), "--gates", _gate_file(tmp_path))) == 3
    out = capsys.readouterr().out
    assert "SKIP-NOISY  sp" in out and "1 not judged: measured on a busy machine" in out
    assert cmd_check(_args("--run", str(run), "--gates", _gate_file(tmp_path), "--allow-noisy")) == 0
    out = capsys.readouterr().out
    assert "PASS  sp" in out and "judged on noisy rows (--allow-noisy)" in out
    slow_fast = make_run(tmp_path, "busyfail", [case("block:msla", 1024, 1024, noise(1, median=1000)),
                                                case("block:softmax", 1024, 1024, noise(2, median=5000),
                                                     noisy=True, noisy_reason="x")])
    assert cmd_check(_args("--run", str(slow_fast), "--gates", _gate_file(tmp_path), "--allow-noisy")) == 1
    assert cmd_check(_args("--run", str(slow_fast), "--gates", _gate_file(tmp_path))) == 3  # no FAIL on noise


def test_conservative_ratio_only_from_cis_at_their_nominal_level(tmp_path):
    few = _run(tmp_path, [case("block:msla", 1024, 1024, noise(1, median=100)),
                          case("block:softmax", 1024, 1024, np.array([5000.0, 5100.0, 4900.0]))], "few")
    [r] = evaluate_gates(few, [SPEEDUP])
    assert r.passed and np.isnan(r.measured["ratio_conservative"])  # the median ratio still decides
    assert r.measured["ci_level"]["slower"] == pytest.approx(0.75)
    many = _run(tmp_path, [case("block:msla", 1024, 1024, noise(1, median=100)),
                           case("block:softmax", 1024, 1024, noise(2, median=5000))], "many")
    [r] = evaluate_gates(many, [SPEEDUP])
    assert 40 < r.measured["ratio_conservative"] <= r.measured["ratio"]


# ---------------------------------------------------------------- every gate field checked at load (issue 12)

SP_TOML = {"name": '"sp"', "kind": '"speedup"', "faster": '"block:msla"', "slower": '"block:softmax"',
           "height": "1024", "width": "1024", "min_ratio": "10.0"}
SC_TOML = {"name": '"sp"', "kind": '"scaling_exponent"', "model": '"block:msla"', "resolutions": "[512, 1024, 2048]",
           "max_exponent": "1.4"}


def _toml(base: dict, change: dict, top: str = "") -> str:
    keys = {**base, **change}
    return top + "[[gate]]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items() if v is not None)


def _gate_run(tmp_path):
    return make_run(tmp_path, "r", [case("block:msla", r, r, noise(r, median=10 * (r / 512) ** 2))
                                    for r in (512, 1024, 2048)]
                    + [case("block:softmax", 1024, 1024, noise(2, median=5000))])


# (the gate, what changes in it, the field the one line must name)
GATE_MISTAKES = [
    *[(SP_TOML, {"min_ratio": v}, "min_ratio") for v in ("nan", "inf", "-inf", "0", "-1.5", "true", '"2"')],
    *[(SP_TOML, {"height": v}, "height") for v in ("true", "0", "-512", "512.5", '"512"')],
    (SP_TOML, {"width": "false"}, "width"),
    (SP_TOML, {"faster": '""'}, "faster"),
    (SP_TOML, {"slower": "3"}, "slower"),
    (SP_TOML, {"devices": '["tpu"]'}, "devices"),
    (SP_TOML, {"devices": "[]"}, "devices"),
    (SP_TOML, {"devices": '"cpu"'}, "devices"),
    (SP_TOML, {"batch": "0"}, "batch"),
    (SP_TOML, {"batch": "true"}, "batch"),
    (SP_TOML, {"threads": "-1"}, "threads"),
    (SP_TOML, {"backend": '""'}, "backend"),
    (SP_TOML, {"precision": "16"}, "precision"),
    (SP_TOML, {"description": "3"}, "description"),
    (SP_TOML, {"min_ration": "2.0"}, "min_ration"),  # a typo: unknown, the accepted keys listed
    (SP_TOML, {"model": '"block:msla"'}, "model"),  # a scaling key in a speedup gate
    (SP_TOML, {"measured_for": "{ threads = [true] }"}, "measured_for.threads"),
    (SP_TOML, {"measured_for": "{ batch = [0] }"}, "measured_for.batch"),
    (SP_TOML, {"measured_for": '{ devices = ["tpu"] }'}, "measured_for.devices"),
    (SP_TOML, {"measured_for": '{ backend = [""] }'}, "measured_for.backend"),
    *[(SC_TOML, {"max_exponent": v}, "max_exponent") for v in ("nan", "inf", "true")],
    (SC_TOML, {"max_exponent": None, "min_exponent": "-inf"}, "min_exponent"),
    (SC_TOML, {"min_exponent": "2.0"}, "min_exponent"),  # above max_exponent 1.4: no run can pass it
    *[(SC_TOML, {"resolutions": v}, "resolutions") for v in ("[512, true]", "[512]", "[]", "[512, 512]", '"512"',
                                                             "[512, 0]", "[512.0, 1024.0]")],
    (SC_TOML, {"faster": '"block:msla"'}, "faster"),
]


@pytest.mark.parametrize("base,change,field", GATE_MISTAKES)
def test_gate_field_mistake_is_one_line_naming_gate_and_field(tmp_path, capsys, base, change, field):
    from bench.cli import main

    (tmp_path / "g.toml").write_text(_toml(base, change))
    assert main(["check", "--run", str(_gate_run(tmp_path)), "--gates", str(tmp_path / "g.toml")]) == 2
    cap = capsys.readouterr()
    assert cap.err.count("\n") == 1 and "Traceback" not in cap.err and not cap.out, cap
    assert cap.err.startswith("check: error: ") and "gate 'sp'" in cap.err and field in cap.err, cap.err
    assert "accepted" in cap.err or "must be" in cap.err, cap.err


@pytest.mark.parametrize("change,what", [({"name": '""'}, "name"), ({"name": "3"}, "name"),
                                         ({"name": '"a\\nb"'}, "name"), ({"name": None}, "missing name")])
def test_gate_name_must_be_a_non_empty_line(tmp_path, change, what):
    (tmp_path / "g.toml").write_text(_toml(SP_TOML, change))
    with pytest.raises(GateConfigError, match=f"gate #1: {what}.*accepted: a non-empty one-line string"):
        load_gates(tmp_path / "g.toml")


def test_unknown_key_lists_the_accepted_ones(tmp_path):
    (tmp_path / "g.toml").write_text(_toml(SP_TOML, {"min_ration": "2.0"}))
    with pytest.raises(GateConfigError) as e:
        load_gates(tmp_path / "g.toml")
    listed = str(e.value).split("accepted for kind 'speedup': ")[1].split(", ")
    # every key gates.py reads of a speedup gate, and of any gate
    assert set(listed) == {"name", "kind", "description", "devices", "measured_for", "backend", "precision",
                           "batch", "threads", "faster", "slower", "height", "width", "min_ratio"}
    (tmp_path / "t.toml").write_text(_toml(SP_TOML, {}, top="gates = 1\n"))
    with pytest.raises(GateConfigError, match="unknown top-level key.*gates.*accepted: \\[\\[gate\\]\\] tables"):
        load_gates(tmp_path / "t.toml")


def test_a_gate_with_every_optional_key_loads_and_evaluates(tmp_path):
    extra = {"description": '"all of it"', "devices": '["cpu"]', "backend": '"eager"', "precision": '"fp32"',
             "batch": "1", "threads": "1",
             "measured_for": '{ devices = ["cpu"], backend = ["eager"], precision = ["fp32"], batch = [1], '
                             'threads = [0, 1] }'}
    (tmp_path / "g.toml").write_text(_toml(SP_TOML, extra) + _toml({**SC_TOML, "name": '"sc"'},
                                                                   {"min_exponent": "0.5", **extra}))
    gates = load_gates(tmp_path / "g.toml")
    res = evaluate_gates(load_run(_gate_run(tmp_path)), gates)
    assert [(r.name, r.outcome) for r in res] == [("sp", "PASS"), ("sc", "PASS")]


HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "a~~b~~c", "a$x_1$b", "[l](javascript:x)",
           "`code`"]
RAW = ["<script", "<img", "~~", "$x", "](javascript", "`code`"]


def _unescaped(text: str, raw: str) -> bool:
    """raw in text with no backslash before it: Markdown would give it its meaning."""
    return re.search(r"(?<!\\)" + re.escape(raw), text) is not None


def test_check_markdown_escapes_gate_and_model_names(tmp_path, capsys):
    """Everything of a gate file and a run that reaches --markdown is escaped: names, groups, messages."""
    from bench.cli import main

    fast, slow = HOSTILE[0], HOSTILE[1]
    run = make_run(tmp_path, "r", [case(fast, 512, 512, noise(1, median=100), device_name=HOSTILE[2]),
                                   case(slow, 512, 512, noise(2, median=500), device_name=HOSTILE[2])])
    gates = "".join(f'[[gate]]\nname = {json.dumps(n)}\nkind = "speedup"\nfaster = {json.dumps(fast)}\n'
                    f'slower = {json.dumps(slow)}\nheight = 512\nwidth = 512\nmin_ratio = 1.5\n' for n in HOSTILE)
    (tmp_path / "g.toml").write_text(gates)
    md = tmp_path / "g.md"
    assert main(["check", "--run", str(run), "--gates", str(tmp_path / "g.toml"), "--markdown", str(md)]) == 0
    text = md.read_text()
    assert text.count("| PASS |") == len(HOSTILE)
    for raw in RAW:
        assert not _unescaped(text, raw), raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "a\\~\\~b\\~\\~c" in text and "a\\$x\\_1\\$b" in text
