"""The case matrix: parsing, model selection by level, expansion, identity keys (no child processes)."""
import pytest

from bench.cases import Case, CaseError, expand
from bench.plan.parse import parse_ints, parse_resolution, select_models
from bench.cases import IDENTITY, case_key


@pytest.mark.parametrize("text,hw", [("512", (512, 512)), ("1024x2048", (1024, 2048)), (" 64X128 ", (64, 128))])
def test_parse_resolution(text, hw):
    assert parse_resolution(text) == hw


@pytest.mark.parametrize("text", ["0", "-512", "512x0", "abc", "512x", "x512", "1.5", ""])
def test_parse_resolution_rejects(text):
    with pytest.raises(CaseError):
        parse_resolution(text)


def test_parse_ints():
    assert parse_ints("1,2,2,4", "--threads") == [1, 2, 4]
    for bad in ("0", "a", "1,,x", ""):
        with pytest.raises(CaseError):
            parse_ints(bad, "--batch")


def test_select_models_levels():
    assert select_models(None, "model") == ["evit-b1:msla", "evit-b1:relu-linear", "evit-b1:softmax",
                                            "evit-b1:large-kernel"]
    assert select_models(None, "block") == ["block:msla", "block:relu-linear", "block:softmax", "block:large-kernel"]
    both = select_models(None, "both")
    assert len(both) == 8 and both[:4] == select_models(None, "model")
    assert select_models(["evit-b1:msla"], "block") == ["block:msla"]
    assert select_models(["block:softmax"], "both") == ["block:softmax"]
    with pytest.raises(CaseError):
        select_models(["block:softmax"], "model")
    with pytest.raises(CaseError):
        select_models(["no-such-model"], "both")
    with pytest.raises(CaseError):
        select_models(None, "everything")


def test_expand_matrix_and_keys():
    cases = expand(["evit-b1:msla", "block:msla"], [(512, 512), (1024, 2048)], [("cpu", "CPU X")], ["eager"],
                   {"cpu": ["fp32"], "cuda": ["fp16"]}, [1, 2], [1, 2])
    assert len(cases) == 2 * 2 * 2 * 2
    assert len({c.case_id for c in cases}) == len(cases)
    c = next(c for c in cases if c.model == "block:msla" and c.height == 1024)
    assert c.level == "block" and c.family == "block" and c.variant == "msla"
    assert c.tokens == (1024 // 16) * (2048 // 16)
    # the key is the schema's, computed from the identity columns only
    assert set(c.identity()) == set(IDENTITY)
    assert c.case_id == case_key(c.as_row())
    # travels as JSON-able spec and back
    assert Case.from_spec(c.to_spec()) == c


def test_cuda_rows_have_no_thread_sweep():
    cases = expand(["block:msla"], [(64, 64)], [("cpu", "C"), ("cuda:0", "G")], ["eager"],
                   {"cpu": ["fp32"], "cuda": ["fp16"]}, [1], [1, 2])
    assert sorted((c.device, c.threads, c.precision) for c in cases) == [
        ("cpu", 1, "fp32"), ("cpu", 2, "fp32"), ("cuda:0", 0, "fp16")]


def _cpu_case(threads, device="cpu"):
    return Case(model="block:msla", family="block", variant="msla", level="block", device=device, device_name="X",
                backend="eager", precision="fp32", batch=1, threads=threads if device == "cpu" else 0, height=64,
                width=64, tokens=16)


def test_rows_record_cpu_oversubscription():
    from bench.env import usable_cpus
    from bench.results.store import results_frame
    from bench.schema import COLUMN_NAMES, COLUMNS

    n = usable_cpus()
    rows = [_cpu_case(1).as_row(), _cpu_case(n + 1).as_row(), _cpu_case(0, "cuda:0").as_row()]
    assert rows[0]["cpu_oversubscription"] == pytest.approx(1 / n)
    assert rows[1]["cpu_oversubscription"] == pytest.approx((n + 1) / n) and rows[1]["cpu_oversubscription"] > 1
    frame = results_frame(rows)  # CUDA: NaN in the table
    assert frame["cpu_oversubscription"].isna().tolist() == [False, False, True]
    doc = next(c for c in COLUMNS if c.name == "cpu_oversubscription")
    assert "cpu_oversubscription" in COLUMN_NAMES and doc.dtype == "float64" and "sched_getaffinity" in doc.doc


_PLAN_ON_ONE_CPU = '''
import json, os
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # as under `taskset -c N`
from bench.plan import make_plan
plans = {t: make_plan("block:msla", level="block", res="64", threads=t) for t in ("1", "1,3")}
print(json.dumps({t: [p.warnings, [c.as_row()["cpu_oversubscription"] for c in p.cases]] for t, p in plans.items()}))
'''


def test_threads_beyond_the_usable_cpus_warn_and_are_recorded():
    import json
    import subprocess
    import sys
    from pathlib import Path

    r = subprocess.run([sys.executable, "-c", _PLAN_ON_ONE_CPU], cwd=Path(__file__).resolve().parent.parent,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["1"] == [[], [1.0]]  # one thread on one CPU: no warning
    warnings, over = got["1,3"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "--threads 3" in warnings[0] and "1 CPU(s)" in warnings[0] and "3x" in warnings[0]
    assert over == [1.0, 3.0]


def test_no_oversubscription_warning_without_cpu_cases():
    from bench.plan import oversubscription_warnings

    assert oversubscription_warnings([10**6], ["cuda:0"]) == []
    assert len(oversubscription_warnings([10**6], ["cpu", "cuda:0"])) == 1


def test_res_own_puts_each_model_at_its_own_input_size():
    """`--models published --res own`: the reference models at the input size the papers timed them at."""
    from bench.plan import make_plan
    from models.registry import get_model_info, list_models

    plan = make_plan("published", level="model", res="own")
    published = [n for n in list_models() if get_model_info(n).published is not None]
    assert sorted(c.model for c in plan.cases) == sorted(published)
    for c in plan.cases:
        assert (c.height, c.width) == tuple(get_model_info(c.model).input_size)
    assert plan.config["own_size"] and set(plan.config["resolutions"]) == {"1024x2048", "512x512"}
