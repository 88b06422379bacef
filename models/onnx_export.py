"""ONNX export of any registry model, and the ONNX Runtime check that it computes what PyTorch computes."""
from __future__ import annotations

import io
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # an optional extra: only the type is needed here
    import onnxruntime

ONNX_OPSET = 18  # ai.onnx opset for export: supported by ONNX Runtime >= 1.14 and TensorRT 8.6+/10
EXPORTERS = ("dynamo", "torchscript")


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = ONNX_OPSET,
                exporter: str = "dynamo") -> Path:
    """Export a static-shape graph (like a deployed TensorRT/ORT engine) with one input and one output.

    exporter "dynamo" (default): torch.export + onnxscript, the supported path (~10-20 s for a small model on a
    slow CPU). "torchscript": the legacy tracer (~1-2 s), which the tests use for speed.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown onnx exporter {exporter!r}; valid: {', '.join(EXPORTERS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {"dynamo": True, "external_data": False, "verbose": False} if exporter == "dynamo" else {"dynamo": False}
    # the dynamo exporter prints progress lines and both warn about tracing details we do not act on
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), opset_version=opset, input_names=["input"],
                          output_names=["output"], **kw)
    return path


def onnxruntime_session(path: str | Path, providers: list[str] | None = None) -> onnxruntime.InferenceSession:
    """A plain session (CPU unless told otherwise) with ORT's warnings silenced, for the round-trip check.

    onnxruntime is an optional extra: imported here, not at module level, so exporting does not need it.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])
