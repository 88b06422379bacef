"""Every model exports to ONNX (current opset) and ONNX Runtime on the CPU computes what PyTorch computes."""
from __future__ import annotations

import os

import pytest
import torch

from models import build_model, example_input, get_model_info, list_models
from models.onnx_export import ONNX_OPSET, export_onnx, onnxruntime_session

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# One model per architecture and head layout runs by default; DENSEBENCH_SLOW_TESTS=1 runs every registered model.
DEFAULT = ["evit-b0:msla", "evit-b0:softmax", "evit-b0:relu-linear", "evit-b0:large-kernel",
           "block:msla", "block:softmax", "block:relu-linear", "block:large-kernel",
           "efficientvit-seg-b1-ade20k", "efficientvit-seg-l1-cityscapes", "segformer-b0-ade20k",
           "segnext-t-cityscapes"]
MODELS = list_models() if os.environ.get("DENSEBENCH_SLOW_TESTS") == "1" else DEFAULT


@pytest.mark.parametrize("name", MODELS)
def test_onnx_round_trip(name, tmp_path):
    m = get_model_info(name).size_multiple
    h, w = 2 * max(m, 32), 3 * max(m, 32)
    model = build_model(name)
    x = example_input(name, h, w)
    path = export_onnx(model, x, tmp_path / "model.onnx")
    import onnx

    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == ONNX_OPSET
    sess = onnxruntime_session(path)
    (y_ort,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        y = model(x)
    assert y_ort.shape == tuple(y.shape)
    rel = (torch.from_numpy(y_ort) - y).norm() / y.norm()
    assert rel.item() < 1e-4, f"{name}: ONNX Runtime differs from PyTorch by {rel.item():.2e}"
