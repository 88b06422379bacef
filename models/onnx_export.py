"""ONNX export of any registry model, and the ONNX Runtime check that it computes what PyTorch computes."""
from __future__ import annotations

import io
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import torch
from torch import nn

DEFAULT_OPSET = 18


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export with torch's dynamo-based exporter (static shapes, like a deployed TensorRT/ORT engine)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), opset_version=opset, dynamo=True,
                          external_data=False, verbose=False)
    return path


def onnxruntime_session(path: str | Path, providers: list[str] | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])
