import math

import pytest
import torch

from bench.measure.numerics import TOLERANCES, evaluate, numerics_ok, relative_error, tolerance


def test_relative_error_known_value():
    y_ref = torch.tensor([3.0, 4.0])  # norm 5
    y = torch.tensor([3.0, 4.5])  # diff norm 0.5
    assert relative_error(y, y_ref) == pytest.approx(0.1, rel=1e-12)
    assert relative_error(y_ref, y_ref) == 0.0


def test_relative_error_in_fp64_for_half_inputs():
    # In half precision 2048 + 1 rounds to 2048: computing the error in fp16 would miss the difference.
    y_ref = torch.tensor([2048.0, 0.0], dtype=torch.float32)
    y = torch.tensor([2048.0, 1.0], dtype=torch.float16)
    assert relative_error(y, y_ref) == pytest.approx(1 / 2048, rel=1e-9)
    assert relative_error(torch.ones(4, dtype=torch.bfloat16), torch.ones(4)) == 0.0


def test_non_finite_is_inf_and_never_ok():
    y_ref = torch.ones(8)
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = torch.ones(8)
        y[3] = bad
        err = relative_error(y, y_ref)
        assert math.isinf(err)
        for p in TOLERANCES:
            assert not numerics_ok(p, err)
    assert evaluate(torch.full((2,), float("nan")), y_ref[:2], "fp16") == {"rel_err": math.inf, "numerics_ok": False}
    assert not numerics_ok("fp32", float("nan"))


def test_shape_mismatch_and_zero_reference():
    assert math.isinf(relative_error(torch.ones(3), torch.ones(4)))
    assert relative_error(torch.zeros(3), torch.zeros(3)) == 0.0
    assert math.isinf(relative_error(torch.ones(3), torch.zeros(3)))


def test_non_finite_reference_is_an_error():
    with pytest.raises(ValueError, match="reference"):
        relative_error(torch.ones(2), torch.tensor([1.0, float("nan")]))


def test_tolerances_ordered_and_thresholds():
    assert TOLERANCES["fp32"] < TOLERANCES["tf32"] <= TOLERANCES["fp16"] < TOLERANCES["bf16"] < 0.5
    assert numerics_ok("fp32", 1e-6) and not numerics_ok("fp32", 1e-3)
    assert numerics_ok("bf16", 1e-2) and not numerics_ok("bf16", 1.0)  # a collapse is ~1
    assert numerics_ok("fp16", TOLERANCES["fp16"]) and not numerics_ok("fp16", TOLERANCES["fp16"] * 1.01)
    with pytest.raises(ValueError, match="valid"):
        tolerance("int4")


def test_tolerances_cover_measurements_with_margin():
    from bench.measure.numerics import MEASURED_CPU
    for p in ("fp16", "bf16"):
        worst = max(MEASURED_CPU[p].values())
        assert 5 * worst < TOLERANCES[p] < 0.1, (p, worst)


def test_int8_tolerance_between_healthy_and_broken():
    # healthy int8 (the worst runtime per model) passes with margin; the network built to break fails on every
    # int8 runtime, the mildest collapse (compile's) included
    from bench.measure.numerics import INT8_BROKEN, MEASURED_CPU
    worst = max(MEASURED_CPU["int8"].values())
    assert 2 * worst < TOLERANCES["int8"]
    assert all(not numerics_ok("int8", v) and v > 1.5 * TOLERANCES["int8"] for v in INT8_BROKEN.values())
    assert TOLERANCES["bf16"] < TOLERANCES["int8"] < 0.5


def test_fp16_linear_attention_overflow_is_flagged():
    # The failure the column exists for: linear attention's normaliser sum_j relu(k_j) over N tokens in fp16
    # overflows (max 65504) at high resolution; in fp32 (the island) it does not.
    torch.manual_seed(0)
    n, d = 16384, 16  # 1024x2048 image at stride 16 -> 8192 tokens; 16384 at 2048x2048
    q = torch.rand(n, d) + 0.5
    k = torch.rand(n, d) + 0.5
    v = torch.randn(n, d)

    def attn(q, k, v):
        kv = k.t() @ v  # d x d
        den = q @ k.sum(0, keepdim=True).t()  # n x 1
        return (q @ kv) / (den + 1e-5)

    ref = attn(q, k, v)
    y_half = attn(q.half(), (k * 8).half(), v.half())  # k scaled (the ratio is scale-free): sums exceed 65504
    y_island = attn(q, k * 8, v)
    assert numerics_ok("fp16", relative_error(y_island.half(), ref))
    assert not numerics_ok("fp16", relative_error(y_half, ref))
