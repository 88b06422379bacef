"""Numerics of a backend's output against the eager fp32 reference on the same input.

`rel_err = ||y - y_ref||_2 / ||y_ref||_2`, computed in float64 on the CPU whatever the dtypes and devices of the two
tensors, so a half-precision output is not judged in half precision. A non-finite output (NaN/Inf: the fp16
overflow of linear attention's normaliser that broke upstream TensorRT deployments) gives `rel_err = inf` and is
never ok.

Tolerances (upper bounds on rel_err per precision) and why. Measured on this project's CPU (torch 2.14.1,
seeded default initialisation, batch 1; `python -m bench.measure.numerics` re-measures):

| model (res)                  | bf16 autocast | fp16 autocast |
|------------------------------|---------------|---------------|
| evit-b0:msla (128)           | 2.6e-3        | 3.3e-4        |
| evit-b0:relu-linear (128)    | 2.9e-3        | 3.5e-4        |
| evit-b0:softmax (128)        | 2.9e-3        | 3.5e-4        |
| evit-b0:large-kernel (128)   | 2.9e-3        | 4.0e-4        |
| evit-b1:msla (256)           | 3.5e-3        | 4.3e-4        |
| evit-b1:relu-linear (256)    | 4.3e-3        | 4.8e-4        |
| evit-b1:softmax (256)        | 3.9e-3        | 5.1e-4        |
| evit-b1:large-kernel (256)   | 4.3e-3        | 5.1e-4        |

compile (inductor) and onnxruntime fp32 against eager fp32: 1e-7..1.5e-7.

int8 (the model stays fp32, the runtime quantizes: bench.backends.int8), one thread, seed 0, the shared
calibration set; `python -m bench.measure.localise [backend ...]` re-measures (onnxruntime 1.32 static QDQ U8S8
with attention kept float, openvino 2026.4 + NNCF 3.4, executorch 1.5 XNNPACK pt2e, compile = torchao's
X86InductorQuantizer; `-`: the quantizer refused the model):

| model (res)                  | onnxruntime | openvino | executorch | compile |
|------------------------------|-------------|----------|------------|---------|
| block:msla (128)             | 1.3e-2      | 9.2e-3   | 1.3e-2     | 9.4e-3  |
| block:softmax (128)          | 1.3e-2      | 9.2e-3   | 1.3e-2     | 9.4e-3  |
| block:relu-linear (128)      | 1.3e-2      | 9.2e-3   | 1.3e-2     | 9.4e-3  |
| block:large-kernel (128)     | 1.3e-2      | 9.2e-3   | 1.3e-2     | -       |
| evit-b0:msla (128)           | 1.5e-2      | 5.8e-3   | 6.4e-3     | 4.2e-3  |
| evit-b0:softmax (128)        | 6.0e-3      | 4.2e-3   | 6.0e-3     | 3.5e-3  |
| evit-b0:relu-linear (128)    | 6.3e-3      | 4.3e-3   | 6.0e-3     | 3.7e-3  |
| evit-b0:large-kernel (128)   | 6.3e-3      | 5.4e-3   | 6.3e-3     | -       |
| evit-b1:msla (256)           | 3.4e-2      | 8.4e-3   | 1.0e-2     |         |
| evit-b1:relu-linear (256)    | 4.1e-2      |          |            |         |
| evit-b1:softmax (256)        | 1.2e-2      |          |            |         |
| evit-b1:large-kernel (256)   | 1.2e-2      |          |            |         |

On onnxruntime the two linear-attention mixers carry 3x the error of the others at 256: their stage-4 blocks reach
0.10-0.16 (softmax, large-kernel: <= 0.019; openvino and executorch msla: <= 0.017), which bench.measure.localise
names (backbone.stages.3.1 for relu-linear, .3.3 for msla).

A network built to break (tests/localise_models.py: a channel that int8 rounds to zero, then divided by its own
mean) gives 0.99 (onnxruntime), 1.06 (openvino), 1.47 (executorch) and 0.19 (compile); the same network unbroken
1.4e-2..2.0e-2.

- fp32 1e-4: reorderings move the output by ~1e-7; 1e-4 leaves three orders of margin and still flags a
  reduced-precision path that leaked in (TF32 or fp16 anywhere gives >= ~3e-4).
- tf32 1e-2: TF32 has fp16's 10-bit mantissa (with fp32 range), so it is expected at the fp16 level (~5e-4)
  and gets the fp16 bound.
- fp16 1e-2: ~20x the worst measurement (5.1e-4) for GPU kernels that accumulate differently and for larger
  maps; an overflow in linear attention's normaliser gives inf/NaN (never ok) or ~1.
- bf16 5e-2: 8 bits of mantissa, ~8x fp16's error (measured 2.6e-3..4.3e-3); ~12x the worst measurement, still
  20x below a collapse (~1).
- int8 1e-1: the geometric middle of int8 that works (measured 3.5e-3..4.1e-2) and a collapse (~1): 2.4x the
  worst measurement (onnxruntime evit-b1:relu-linear at 256) and 10x below a collapse; 2x below the broken
  network's mildest collapse (0.19, compile), which a bound of 0.2 would pass. int8's error is the runtime's
  calibration and scheme as much as the model's (a 4x spread between runtimes on one model), so a tighter bound
  would judge a quantizer's choices, not whether the model survives; larger maps may take onnxruntime's linear
  attention past it, a finding about that runtime's int8, named at its block. The same bound judges each block in
  bench.measure.localise, where a healthy model's inner blocks can pass it (the pt2e runtimes' stride-8 blocks of
  evit-b0: 0.12-0.14) while its output survives.
"""
from __future__ import annotations

import math

import torch

from models.registry import build_model, example_input, resolve_models

TOLERANCES: dict[str, float] = {
    "fp32": 1e-4,
    "tf32": 1e-2,
    "fp16": 1e-2,
    "bf16": 5e-2,
    "int8": 1e-1,
}

# The CPU measurements behind TOLERANCES (rel_err against eager fp32; see the module docstring).
MEASURED_CPU: dict[str, dict[str, float]] = {
    "bf16": {"evit-b0:msla@128": 2.6e-3, "evit-b0:relu-linear@128": 2.9e-3, "evit-b0:softmax@128": 2.9e-3,
             "evit-b0:large-kernel@128": 2.9e-3, "evit-b1:msla@256": 3.5e-3, "evit-b1:relu-linear@256": 4.3e-3,
             "evit-b1:softmax@256": 3.9e-3, "evit-b1:large-kernel@256": 4.3e-3},
    "fp16": {"evit-b0:msla@128": 3.3e-4, "evit-b0:relu-linear@128": 3.5e-4, "evit-b0:softmax@128": 3.5e-4,
             "evit-b0:large-kernel@128": 4.0e-4, "evit-b1:msla@256": 4.3e-4, "evit-b1:relu-linear@256": 4.8e-4,
             "evit-b1:softmax@256": 5.1e-4, "evit-b1:large-kernel@256": 5.1e-4},
    # the worst runtime per model (the table in the module docstring)
    "int8": {"block:msla@128": 1.3e-2, "block:softmax@128": 1.3e-2, "block:relu-linear@128": 1.3e-2,
             "block:large-kernel@128": 1.3e-2, "evit-b0:msla@128": 1.5e-2, "evit-b0:softmax@128": 6.0e-3,
             "evit-b0:relu-linear@128": 6.3e-3, "evit-b0:large-kernel@128": 6.3e-3, "evit-b1:msla@256": 3.4e-2,
             "evit-b1:relu-linear@256": 4.1e-2, "evit-b1:softmax@256": 1.2e-2, "evit-b1:large-kernel@256": 1.2e-2},
}
# int8: the built-to-break network's output error per runtime (tests/localise_models.py), the collapse the bound
# must still catch
INT8_BROKEN: dict[str, float] = {"onnxruntime": 0.99, "openvino": 1.06, "executorch": 1.47, "compile": 0.19}


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


def _measure_cpu() -> dict[str, dict[str, float]]:  # pragma: no cover - a tool, minutes on 2 cores
    out: dict[str, dict[str, float]] = {"bf16": {}, "fp16": {}}
    for size, res in (("b0", 128), ("b1", 256)):
        for name in resolve_models([f"evit-{size}:*"]):  # the four mixer variants
            torch.manual_seed(0)
            model = build_model(name)
            x = example_input(name, res, res)
            with torch.inference_mode():
                ref = model(x)
                for p, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
                    with torch.autocast("cpu", dtype=dt):
                        out[p][f"{name}@{res}"] = relative_error(model(x), ref)
    return out


if __name__ == "__main__":  # pragma: no cover
    for p, d in _measure_cpu().items():
        for k, v in d.items():
            print(f"{p} {k:28s} rel_err {v:.2e}  (tolerance {TOLERANCES[p]:.0e})")
