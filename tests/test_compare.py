import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.analysis.compare import compare_runs, format_table, run_compare, to_json_dict, to_markdown
from bench.analysis import compare
from bench.commands import compare as compare_command
from bench.commands.compare import main as cmd_compare
from bench.results.store import load_run
sys.path.insert(0, str(Path(__file__).parent))  # works with or without tests/__init__.py
from runfactory import ENV, build_run, case, make_run, noise  # noqa: E402


@pytest.fixture(autouse=True)
def _fewer_resamples(monkeypatch):
    monkeypatch.setattr(compare, "N_BOOT", 500)  # keeps the suite fast; the rule is the same


def _cmp(tmp_path, base_cases, cur_cases, **kw):
    b = make_run(tmp_path, "base", base_cases)
    c = make_run(tmp_path, "cur", cur_cases)
    return compare_runs(load_run(b), load_run(c), **kw)


def _verdict(df, model, h=512):
    r = df[(df["model"] == model) & (df["height"] == h)]
    assert len(r) == 1
    return r.iloc[0]


@pytest.mark.parametrize("factor,expected", [(1.0, "unchanged"), (1.03, "unchanged"), (1.10, "slower"),
                                             (1.50, "slower"), (0.80, "faster"), (0.97, "unchanged")])
def test_verdicts_on_shifted_samples(tmp_path, factor, expected):
    df = _cmp(tmp_path, [case("m", samples=noise(1))], [case("m", samples=noise(2) * factor)])
    r = _verdict(df, "m")
    assert r["verdict"] == expected
    assert bool(r["regression"]) == (expected == "slower")
    assert r["ratio"] == pytest.approx(factor, rel=0.02)
    assert r["ci_low"] <= r["ratio"] <= r["ci_high"]
    assert r["basis"] == "samples"


def test_identical_samples_unchanged(tmp_path):
    x = noise(3)
    r = _verdict(_cmp(tmp_path, [case("m", samples=x)], [case("m", samples=x)]), "m")
    assert r["verdict"] == "unchanged" and r["ratio"] == 1.0 and r["p_value"] > 0.9


def test_shift_3pct_is_significant_but_below_threshold(tmp_path):
    # with many samples a 3% shift is highly significant; the minimum effect keeps it "unchanged"
    df = _cmp(tmp_path, [case("m", samples=noise(4, n=2000, cv=0.005))],
              [case("m", samples=noise(5, n=2000, cv=0.005) * 1.03)], n_boot=400)
    r = _verdict(df, "m")
    assert r["p_value"] < 1e-6 and r["ci_low"] > 1.0
    assert r["verdict"] == "unchanged"
    assert _verdict(_cmp(tmp_path / "t2", [case("m", samples=noise(4, n=2000, cv=0.005))],
                         [case("m", samples=noise(5, n=2000, cv=0.005) * 1.03)], threshold=0.02, n_boot=400),
                  "m")["verdict"] \
        == "slower"


def test_large_but_insignificant_change_is_unchanged(tmp_path):
    # 3 samples each side, very noisy: a 10% point ratio that the data cannot establish
    b = np.array([10.0, 14.0, 7.0])
    c = np.array([11.0, 15.4, 7.7])
    r = _verdict(_cmp(tmp_path, [case("m", samples=b)], [case("m", samples=c)]), "m")
    assert r["ratio"] == pytest.approx(1.1)
    assert r["verdict"] == "unchanged" and "not significant" in r["note"]


def test_heavy_tailed_noise_no_false_alarm(tmp_path):
    rng = np.random.default_rng(7)
    alarms = 0
    for i in range(20):
        a = 10 * (1 + 0.02 * rng.standard_t(1.5, 400).clip(-5, None))  # Student-t, infinite variance
        b = 10 * (1 + 0.02 * rng.standard_t(1.5, 400).clip(-5, None))
        a[rng.choice(400, 20, replace=False)] *= 5  # plus 5% huge outliers
        df = compare_runs(build_run("a", [case("m", samples=a)]), build_run("b", [case("m", samples=b)]), n_boot=300)
        alarms += int(df["regression"].any())
    assert alarms == 0


def _procs(seed, k=3, n=150, median=10.0, between=0.06, factor=1.0):
    """k processes whose medians differ by ~`between` (lognormal sd), each with tight within-process noise."""
    rng = np.random.default_rng(seed)
    return [noise(seed * 10 + j, n=n, median=median * factor * float(np.exp(rng.normal(0, between))), cv=0.01)
            for j in range(k)]


def test_repeats_widen_the_ci_by_the_process_spread(tmp_path):
    """Runs with --repeats: the process-level bootstrap keeps A/A runs whose processes disagree by ~6% from being
    called slower, where pooling the samples as if independent calls many of them; a real 30% slowdown is still
    found."""
    flat_alarms = hier_alarms = 0
    for t in range(12):
        a, b = _procs(100 + t), _procs(200 + t)
        hier = compare_runs(build_run("a", [case("m", groups=a)]), build_run("b", [case("m", groups=b)]), n_boot=300)
        flat = compare_runs(build_run("a", [case("m", samples=np.concatenate(a))]),
                            build_run("b", [case("m", samples=np.concatenate(b))]), n_boot=300)
        assert hier.iloc[0]["basis"] == "repeats" and flat.iloc[0]["basis"] == "samples"
        hier_alarms += int(hier["verdict"].iloc[0] != "unchanged")
        flat_alarms += int(flat["verdict"].iloc[0] != "unchanged")
    assert hier_alarms == 0 and flat_alarms >= 3
    slow = compare_runs(build_run("a", [case("m", groups=_procs(1, between=0.02))]),
                        build_run("b", [case("m", groups=_procs(2, between=0.02, factor=1.3))]), n_boot=300)
    r = slow.iloc[0]
    assert r["verdict"] == "slower" and r["basis"] == "repeats" and r["ci_low"] > 1.1


def test_repeats_on_one_side_only_fall_back_to_samples(tmp_path):
    df = _cmp(tmp_path, [case("m", groups=_procs(5))], [case("m", samples=noise(6))])
    assert df.iloc[0]["basis"] == "samples"
    assert load_run(tmp_path / "base").samples.groupby("repeat").size().tolist() == [150, 150, 150]


def test_new_missing_failed(tmp_path):
    base = [case("a", samples=noise(1)), case("gone", samples=noise(2)), case("broke", samples=noise(3)),
            case("wasbad", status="error"), case("unsup", samples=noise(4))]
    cur = [case("a", samples=noise(5)), case("fresh", samples=noise(6)), case("broke", status="oom"),
           case("wasbad", samples=noise(7)), case("unsup", status="unsupported")]
    df = _cmp(tmp_path, base, cur)
    v = {r["model"]: (r["verdict"], bool(r["regression"])) for _, r in df.iterrows()}
    assert v == {"a": ("unchanged", False), "gone": ("missing", False), "fresh": ("new", False),
                 "broke": ("failed", True), "wasbad": ("failed", False), "unsup": ("failed", False)}
    assert df.iloc[0]["model"] == "broke"  # regressions first
    assert "current oom" in _verdict(df, "broke")["note"]


def test_matching_uses_full_identity(tmp_path):
    base = [case("m", samples=noise(1)), case("m", h=1024, w=1024, samples=noise(2, median=40))]
    cur = [case("m", samples=noise(3)), case("m", h=1024, w=1024, samples=noise(4, median=40)),
           case("m", samples=noise(5), threads=2)]
    df = _cmp(tmp_path, base, cur)
    assert len(df) == 3
    assert sorted(df["verdict"]) == ["new", "unchanged", "unchanged"]
    assert df[df["verdict"] == "new"].iloc[0]["threads"] == 2


def test_summary_basis_without_samples(tmp_path):
    b = make_run(tmp_path, "base", [case("m", samples=noise(1)), case("s", samples=noise(2))], with_samples=False)
    c = make_run(tmp_path, "cur", [case("m", samples=noise(3) * 1.5), case("s", samples=noise(4))],
                 with_samples=False)
    df = compare_runs(load_run(b / "results.csv"), load_run(c))
    assert _verdict(df, "m")["verdict"] == "slower" and _verdict(df, "m")["basis"] == "summary"
    assert _verdict(df, "s")["verdict"] == "unchanged"


def test_normalize_corrects_uniform_machine_drift(tmp_path):
    # current machine 20% slower everywhere (calibration rate 100 -> 83.3): a drift, not a regression
    base = [case("m", samples=noise(1), rate=100.0)]
    cur = [case("m", samples=noise(2) * 1.2, rate=100.0 / 1.2)]
    assert _verdict(_cmp(tmp_path / "raw", base, cur), "m")["verdict"] == "slower"
    r = _verdict(_cmp(tmp_path / "norm", base, cur, normalize=True), "m")
    assert r["verdict"] == "unchanged" and r["scale"] == pytest.approx(1 / 1.2)
    assert r["ratio"] == pytest.approx(1.0, abs=0.02)
    # a real 20% regression on top of the drift is still caught
    cur2 = [case("m", samples=noise(2) * 1.44, rate=100.0 / 1.2)]
    assert _verdict(_cmp(tmp_path / "both", base, cur2, normalize=True), "m")["verdict"] == "slower"
    nocal = _verdict(_cmp(tmp_path / "nocal", [case("m", samples=noise(1), rate=None)],
                          [case("m", samples=noise(2), rate=None)], normalize=True), "m")
    assert "no calibration" in nocal["note"]


def test_env_mismatch_reported(tmp_path):
    b = make_run(tmp_path, "base", [case("m", samples=noise(1))])
    c = make_run(tmp_path, "cur", [case("m", samples=noise(2))], env={**ENV, "torch_version": "2.15.0"})
    df = compare_runs(load_run(b), load_run(c))
    assert df.attrs["env_mismatch"] == ["torch_version: 2.14.1 -> 2.15.0"]
    assert "environment differs: torch_version: 2.14.1 -> 2.15.0" in format_table(df)
    assert "2.15.0" in to_markdown(df)
    assert to_json_dict(df)["env_mismatch"] == ["torch_version: 2.14.1 -> 2.15.0"]
    same = compare_runs(load_run(b), load_run(b))
    assert same.attrs["env_mismatch"] == []


# ------------------------------------------------------------------ CLI

def _args(*argv):
    """argv parsed by the compare command's own parser (as `run_bench.py compare ...` parses it)."""
    import argparse
    sub = argparse.ArgumentParser().add_subparsers()
    return compare_command.add_parser(sub).parse_args(list(argv))


def _two_runs(tmp_path, factor=1.0):
    b = make_run(tmp_path, "base", [case("m", samples=noise(1)), case("n", h=1024, w=1024, samples=noise(2))])
    c = make_run(tmp_path, "cur", [case("m", samples=noise(3) * factor),
                                   case("n", h=1024, w=1024, samples=noise(4))])
    return b, c


def test_exit_codes_and_outputs(tmp_path, capsys):
    b, c = _two_runs(tmp_path / "ok")
    assert cmd_compare(_args(str(b), str(c))) == 0
    out = capsys.readouterr().out
    assert "no regression: 2 unchanged" in out and "m 512x512 eager fp32 b1 t1" in out
    b, c = _two_runs(tmp_path / "slow", factor=1.3)
    md, js = tmp_path / "s.md", tmp_path / "s.json"
    assert cmd_compare(_args(str(b), str(c / "results.parquet"), "--markdown", str(md), "--json", str(js))) == 1
    out = capsys.readouterr().out
    assert "SLOWER" in out and "REGRESSION: 1 slower, 1 unchanged" in out
    lines = out.splitlines()
    header = next(i for i, l in enumerate(lines) if l.startswith("case"))
    assert lines[header + 2].index("SLOWER") == lines[header + 3].index("unchanged")  # aligned columns
    text = md.read_text()
    assert text.startswith("### Latency compare") and "| case |" in text and "🔴 SLOWER" in text
    data = json.loads(js.read_text())
    assert data["regression"] is True and data["summary"]["slower"] == 1 and data["threshold"] == 0.05
    slow = [x for x in data["cases"] if x["verdict"] == "slower"][0]
    assert slow["model"] == "m" and slow["ratio"] == pytest.approx(1.3, rel=0.03) and slow["regression"] is True
    assert cmd_compare(_args(str(b), str(c), "--threshold", "0.5")) == 0


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.startswith("compare: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    b, c = _two_runs(tmp_path)
    assert run_compare(str(tmp_path / "nope"), str(c)) == 2  # the command refuses it sooner (below)
    assert "no such run folder" in _one_line_error(capsys)
    # corrupt parquet
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.parquet").write_bytes(b"PAR1 this is not parquet")
    assert cmd_compare(_args(str(bad), str(c))) == 2
    assert "unreadable" in _one_line_error(capsys)
    # a parquet file of another table (missing columns)
    other = tmp_path / "other"
    other.mkdir()
    pd.DataFrame({"x": [1, 2]}).to_parquet(other / "results.parquet")
    assert cmd_compare(_args(str(b), str(other))) == 2
    assert "missing columns" in _one_line_error(capsys)
    # corrupt samples
    (c / "samples.parquet").write_bytes(b"garbage")
    assert cmd_compare(_args(str(b), str(c))) == 2
    _one_line_error(capsys)
    # samples table without latency_ms
    pd.DataFrame({"case_id": ["x"]}).to_parquet(c / "samples.parquet")
    assert cmd_compare(_args(str(b), str(c))) == 2
    assert "latency_ms" in _one_line_error(capsys)
    # empty folder, schema version mismatch, bad options, unwritable output
    (tmp_path / "empty").mkdir()
    assert run_compare(str(tmp_path / "empty"), str(b)) == 2  # the command refuses it sooner (below)
    _one_line_error(capsys)
    (b / "meta.json").write_text(json.dumps({"schema_version": 99}))
    assert cmd_compare(_args(str(b), str(b))) == 2
    assert "schema version" in _one_line_error(capsys)
    b2, c2 = _two_runs(tmp_path / "fine")
    assert cmd_compare(_args(str(b2), str(c2), "--alpha", "2")) == 2
    _one_line_error(capsys)
    assert run_compare(b2, c2, json_path=tmp_path / "no" / "dir" / "x.json") == 2
    assert "cannot write" in _one_line_error(capsys)



def test_the_command_refuses_what_is_not_a_run_before_loading(tmp_path, capsys):
    """The compare command names its runs as --resume does: no such run, or a folder without a results file, is one
    line and exit 2 before anything is loaded (run_compare's own refusal is above)."""
    from bench.cli import main

    b, c = _two_runs(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "nope"), str(c)]) == 2
    assert "BASELINE: no run" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "empty"), str(b)]) == 2
    assert "is not a run folder" in capsys.readouterr().err

# ------------------------------------------------------------------ undecided, CI levels, nothing compared, noise

@pytest.mark.parametrize("r,lo,hi,p,verdict,note", [
    (1.12, 1.06, 1.19, 0.03, "undecided", "ratio 1.120 [1.060, 1.190] beyond 5% but p = 0.03 >= alpha 0.01"),
    (1.02, 0.99, 1.07, 0.001, "undecided", "ratio 1.020 [0.990, 1.070]: p = 0.001 < alpha 0.01 but the CI includes 1"),
    (1.02, 0.99, 1.04, 0.001, "unchanged", ""),  # the CI within the threshold: established small, whatever p says
    (1.10, 0.98, 1.20, 0.001, "undecided", "p = 0.001 < alpha 0.01 but the CI includes 1"),
    (1.03, 1.01, 1.08, 0.001, "undecided", "significant but the CI reaches beyond 5%"),
    (1.10, 1.06, 1.15, 0.001, "slower", ""),
    (0.80, 0.75, 0.85, 1e-4, "faster", ""),
    (1.03, 1.02, 1.04, 1e-6, "unchanged", ""),  # established within the threshold
    (1.01, 0.97, 1.05, 0.5, "unchanged", ""),  # insignificant and small
    (1.12, 1.06, 1.19, float("nan"), "slower", ""),  # summary basis: the CI alone decides
    (1.12, 0.98, 1.19, float("nan"), "unchanged", "beyond threshold but not significant"),
])
def test_judge_names_the_figures_that_disagree(r, lo, hi, p, verdict, note):
    from bench.analysis.verdict import judge

    v, why = judge(r, lo, hi, p, 0.05, 0.01)
    assert v == verdict and note in why and (why == "") == (note == "")


def test_significant_test_with_a_ci_including_1_is_undecided(tmp_path):
    # the slow half of the samples got 30% slower: the rank test sees it, the CI of the ratio of medians spans 1
    c = noise(2, n=601)
    c[c > np.median(c)] *= 1.3
    r = _verdict(_cmp(tmp_path, [case("m", samples=noise(1, n=601))], [case("m", samples=c)]), "m")
    assert r["verdict"] == "undecided" and not r["regression"] and r["p_value"] < 0.01 and r["ci_low"] < 1
    assert "< alpha 0.01 but the CI includes 1" in r["note"] and f"{r['ratio']:.3f}" in r["note"]


def test_summary_basis_below_6_samples_is_undecided(tmp_path):
    """Five samples a side: (min, max) covers the median with 93.75%, not 95%: no 'slower' rests on it, however
    large the change; with six samples the same change is judged."""
    five, six = 10 + 0.1 * np.arange(5), 10 + 0.1 * np.arange(6)
    few = [case("m", samples=five), case("k", samples=six)]
    slow = [case("m", samples=five * 1.5), case("k", samples=six * 1.5)]
    b = make_run(tmp_path, "base", few, with_samples=False)
    c = make_run(tmp_path, "cur", slow, with_samples=False)
    df = compare_runs(load_run(b), load_run(c))
    m = _verdict(df, "m")
    assert m["basis"] == "summary" and m["verdict"] == "undecided" and not m["regression"]
    assert "baseline CI of the median reaches 93.8% (n = 5)" in m["note"] and "< 95%" in m["note"]
    assert _verdict(df, "k")["verdict"] == "slower"


def test_runs_sharing_no_case_exit_2_with_one_line(tmp_path, capsys):
    b = make_run(tmp_path, "base", [case("a", samples=noise(1)), case("b", samples=noise(2))])
    c = make_run(tmp_path, "cur", [case("c", samples=noise(3))])
    assert cmd_compare(_args(str(b), str(c), "--json", str(tmp_path / "x.json"))) == 2
    captured = capsys.readouterr()
    assert captured.err == ("compare: error: nothing compared: the runs share no case "
                            "(baseline 2 cases, current 1)\n")
    assert captured.out == "" and not (tmp_path / "x.json").exists()


def _noisy(row, reason="load 3.1 on 2 cores"):
    return {**row, "noisy": True, "noisy_reason": reason}


def test_noisy_cases_are_not_judged_unless_allowed(tmp_path, capsys):
    base = [case("m", samples=noise(1)), case("n", h=1024, w=1024, samples=noise(2)), case("t", samples=noise(5))]
    cur = [_noisy(case("m", samples=noise(3) * 1.3)), case("n", h=1024, w=1024, samples=noise(4)),
           _noisy(case("t", status="timeout"), "cpu frequency drifted 12%")]
    b, c = make_run(tmp_path, "base", base), make_run(tmp_path, "cur", cur)
    js = tmp_path / "c.json"
    assert cmd_compare(_args(str(b), str(c), "--json", str(js))) == 3
    out = capsys.readouterr().out
    df = compare_runs(load_run(b), load_run(c))
    assert dict(zip(df["model"], df["verdict"])) == {"m": "noisy", "t": "noisy", "n": "unchanged"}
    assert not df["regression"].any()
    assert "current noisy (load 3.1 on 2 cores): not judged" in _verdict(df, "m")["note"]
    assert "current timeout" in _verdict(df, "t")["note"]
    assert "NOT JUDGED: 1 unchanged, 2 noisy" in out and "2 not judged: measured on a busy machine" in out
    data = json.loads(js.read_text())
    assert data["not_judged_noisy"] == 2 and data["exit_status"] == 3 and data["regression"] is False
    assert cmd_compare(_args(str(b), str(c), "--allow-noisy")) == 1
    out = capsys.readouterr().out
    assert "REGRESSION: 1 slower, 1 unchanged, 1 failed" in out and "2 judged on noisy data (--allow-noisy)" in out
    judged = compare_runs(load_run(b), load_run(c), allow_noisy=True)
    assert "judged anyway (--allow-noisy)" in _verdict(judged, "m")["note"]
    assert run_compare(b, c, allow_noisy=True, out=sys.stderr) == 1  # run --baseline's path


def test_a_clean_regression_wins_over_noise_and_old_runs_are_not_noisy(tmp_path):
    b = make_run(tmp_path, "base", [case("m", samples=noise(1)), case("q", samples=noise(2))])
    c = make_run(tmp_path, "cur", [case("m", samples=noise(3) * 1.3), _noisy(case("q", samples=noise(4)))])
    assert run_compare(b, c, out=sys.stderr) == 1
    old = tmp_path / "old"
    old.mkdir()
    load_run(c).results.drop(columns=["noisy", "noisy_reason"]).to_parquet(old / "results.parquet")
    df = compare_runs(load_run(b), load_run(old))
    assert set(df["verdict"]) <= {"slower", "unchanged"} and not df["noisy"].any()


HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "a~~b~~c", "a$x_1$b", "[l](javascript:x)",
           "`code`", "# head", "- item"]
RAW = ["<script", "<img", "~~", "$x", "](javascript", "`code`", "\n# head", "\n- item"]


def _unescaped(text: str, raw: str) -> bool:
    """raw in text with no backslash before it: Markdown would give it its meaning."""
    import re
    return re.search(r"(?<!\\)" + re.escape(raw), text) is not None


def test_markdown_escapes_names_reasons_run_ids_and_hosts(tmp_path, capsys):
    """compare --markdown through the CLI: model and device names, failure and noise reasons, run ids and the
    environment's values all come from data; none reaches the Markdown with its meaning."""
    from bench.cli import main

    bad_env = {**ENV, "cpu_model": HOSTILE[1], "torch_version": HOSTILE[3]}
    base = [case(n, samples=noise(i), device_name=HOSTILE[2]) for i, n in enumerate(HOSTILE)]
    base.append(case("gone", status="error", reason=" ".join(HOSTILE)))
    cur = [case(n, samples=noise(i + 50) * 1.3, device_name=HOSTILE[2], noisy=True, noisy_reason=HOSTILE[0])
           for i, n in enumerate(HOSTILE)]
    cur.append(case("gone", status="error", reason=" ".join(HOSTILE)))
    b = make_run(tmp_path, "base" + HOSTILE[0].replace("/", ""), base, env=bad_env)
    c = make_run(tmp_path, "cur" + HOSTILE[4].replace("/", ""), cur)
    md = tmp_path / "c.md"
    assert main(["compare", str(b), str(c), "--allow-noisy", "--markdown", str(md)]) == 1
    text = md.read_text()
    assert text.count("🔴 SLOWER") == len(HOSTILE) and "environment" in text.lower()
    for raw in RAW:
        assert not _unescaped(text, raw), raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "a\\$x\\_1\\$b" in text and "\\# head" in text
