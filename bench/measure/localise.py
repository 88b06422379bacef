"""Where the error enters: the outputs of each block of a model, run by the case's backend, against eager fp32 on
the same input, and the first block (in forward order) whose error passes the precision's tolerance.

The final output's rel_err (bench.measure.numerics) says whether an int8 or fp16 model is still the fp32 model;
this says where it stops being so: an fp16 overflow in linear attention's normaliser, a quantized division or
softmax, or error that grows block by block until the output collapses. The step (bench.measure.steps.
side_localise) runs for int8 and fp16 cases in their first process, after the timing: `first_bad_block` (empty
when no block passes) and backend_info["localise"] = {"blocks": [[name, rel_err], ...] (forward order, the
final output last), "tolerance", "first_bad_block", "final_rel_err", "case_rel_err", "build_s", "localise_s",
"rebuilt_vs_case"[, "note"]}, or {"reason"} when it could not be done.

How:
- `tap_points(model)` picks the blocks (rule in its docstring); `TappedModel.discover(model, x)` wraps the model
  so that its forward returns a TUPLE (final output, *block outputs in forward order), collected by forward hooks
  that append to a list the forward then returns from. Under torch.export (ONNX's dynamo exporter, ExecuTorch),
  TorchScript tracing (OpenVINO's converter) and dynamo (compile) the hooks run while the graph is traced, so the
  collected tensors become graph outputs: the tapped graph is the case's graph with more outputs. Each block
  output leaves the graph flattened (a reshape: no arithmetic, and quantizers give it its input's scale) and is
  reshaped back here: ExecuTorch 1.5's XNNPACK delegate fails at run time when a 4-D tensor it holds in its NHWC
  layout is also a graph output (measured: int8 block:large-kernel, "propagating input shapes failed"; a conv
  output that a division outside the delegate also reads, "attempted to resize a static tensor" to the NHWC
  shape); flattened, the delegate hands each one out in the model's layout.
- Which block outputs are kept is decided once, in an eager fp32 forward that is also the reference: a tensor,
  floating point, not the very tensor an earlier tap or the final output already gave (a module that returns its
  last child's output), and not modified in place later in the forward (an in-place ReLU after a norm: eager would
  show the modified value, a functional graph the original). The final output is the last block, named after the
  innermost module that returned it.
- The backend is built a second time, on the tapped model (`backends.prepare(..., options={"all_outputs": True})`:
  graph runtimes return every output; eager and compile return the tuple natively), run once on the case's input,
  and each output is compared with the same block of the reference (`numerics.relative_error`). The model is
  rebuilt with the case's seed; `rebuilt_vs_case` is its fp32 output against the case's own reference (0.0: the
  same model; a folded case is tapped after folding, so it differs by folding's ~1e-7).

What it is not:
- An extra output changes what a graph runtime may do with the tensor: it has to be materialised (no fusion across
  it) and a quantizer sees a graph output there, which it may quantize differently from an internal edge. So the
  tapped build is not the timed graph: its output's error (`final_rel_err`) is recorded beside the timed one's
  (`case_rel_err`, the row's rel_err), with a `note` when they differ by more than SAME_BUILD_FACTOR (measured:
  compile int8 block:msla, 0.0094 timed, 0.00091 tapped; onnxruntime, openvino and executorch int8 gave the same
  output error both ways on the four blocks and evit-b0 at 128).
- A block inside the model may pass the tolerance while the output stays within it: the output is the judge of a
  case (numerics_ok), the blocks say where the error is. Measured on int8 evit-b0 at 128 (any mixer): blocks
  backbone.stages.1.0 and .1 (stride 8) at 0.12 and 0.14 on executorch, 0.063 and 0.12 on compile, against output
  errors of 0.006 and 0.004 (onnxruntime 0.045 there, openvino 0.044; both pt2e quantizers use histogram-observer
  ranges, onnxruntime MinMax), so a surviving case can name a block. onnxruntime int8 at 256 names evit-b1's
  stage-4 linear-attention blocks (relu-linear: backbone.stages.3.1, 0.10-0.15; msla: .3.3, 0.07-0.16; softmax and
  large-kernel there <= 0.019, openvino's msla <= 0.016) for output errors of 0.041 and 0.034.
- Work a module does in its own forward, outside any submodule (linear attention's matmuls and division are a
  function called by the mixer, not a module), shows up in the next tap that consumes it (the mixer's `proj`)
  and in the enclosing module's tap.
- It runs the model once: the error of one seeded input, not a distribution.
"""
from __future__ import annotations

import math
import pathlib
import time
from typing import Any, Mapping

import torch
from torch import nn

from bench import backends
from bench.backends.base import set_fp32_math
from bench.measure.numerics import TOLERANCES, relative_error
from models.deploy import fold_conv_bn
from models.registry import build_model, example_input

LOCALISED_PRECISIONS = ("int8", "fp16")  # the reduced precisions whose error is localised (on by default)
SAME_BUILD_FACTOR = 2.0  # tapped vs timed output error: beyond this factor the two builds are not the same graph
MIN_BLOCKS = 4  # fewer blocks than this (a model that is one block) and the blocks are opened one more level
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)  # exact types: ConvNormAct(nn.Sequential) is a block


def _is_container(m: nn.Module) -> bool:
    return type(m) in _CONTAINERS


def _holds_stage(m: nn.Module) -> bool:
    """m holds a list of composite modules (a stage's blocks, a backbone's stages, a head's branches)."""
    return any(_is_container(c) and any(next(g.children(), None) is not None for g in c.children())
               for c in m.children())


def _points(model: nn.Module, forced: set[str]) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []

    def visit(path: str, m: nn.Module, depth: int) -> None:
        composite = next(m.children(), None) is not None
        opened = composite and (_is_container(m) or depth <= 1 or _holds_stage(m) or path in forced)
        if opened:
            for name, child in m.named_children():
                visit(f"{path}.{name}" if path else name, child, depth + 1)
        if depth > 0 and not _is_container(m):
            out.append((path, m))

    visit("", model, 0)
    return out


def tap_points(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks of `model` as (module path, module), each after its parts (the order forward hooks fire in
    for a sequential model; TappedModel orders them by the real forward).

    Rule: the root and its direct children (a model's backbone and head; a block's residual) are opened, and so
    is every module that holds a list of composite modules (an nn.Sequential / nn.ModuleList / nn.ModuleDict of
    blocks: a stage, a backbone's stages, a head's branches); the lists themselves are opened and are never a
    block; an opened module other than the root is a block too, after its parts; everything else is one block.
    So EfficientViT-Seg gives its stem's layers, every block of every stage (an EfficientViT block is one block:
    mixer and FFN together), each head branch and layer; SegFormer and SegNeXt every transformer / MSCA block,
    each stage's norm and the stage, and the decode head's layers; a user's model its top-level parts and their
    blocks. When that gives fewer than MIN_BLOCKS blocks (a model that is one block: `block:*`), every composite
    block is opened one more level until there are enough or nothing is left to open: a mixer block gives its
    mixer's parts (qkv, the multi-scale aggregation, proj, ...), the mixer and the residual.
    """
    forced: set[str] = set()
    while True:
        points = _points(model, forced)
        more = {p for p, m in points if next(m.children(), None) is not None and p not in forced}
        if len(points) >= MIN_BLOCKS or not more:
            return points
        forced |= more


class TappedModel(nn.Module):
    """`model` whose forward returns (final output, *the kept block outputs in forward order).

    Build it with `TappedModel.discover(model, x)`, which runs one eager forward to decide which hook calls are
    kept (see the module docstring); `names` are their module paths (a module called twice: `path#2`) and
    `final_name` the module that returned the final output. A forward whose hook calls differ in number from the
    discovered ones (a data-dependent forward) raises: the tuple would not line up with `names`.
    """

    def __init__(self, model: nn.Module, points: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.model = model
        self.keep: list[bool] = []
        self.names: list[str] = []
        self.final_name = "output"
        self.shapes: list[tuple[int, ...]] = []
        self._calls: list[Any] = []
        self._versions: list[int] | None = None  # set during discovery only: tensors' versions at hook time
        for name, m in points:
            m.register_forward_hook(self._hook_for(name))

    def _hook_for(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._calls.append((name, output))
            if self._versions is not None:
                self._versions.append(output._version if isinstance(output, torch.Tensor) else -1)
        return hook

    @classmethod
    def discover(cls, model: nn.Module, x: torch.Tensor) -> tuple["TappedModel", list[torch.Tensor]]:
        """Wrap `model` and decide which block outputs are kept from one eager forward on `x` (run as it is: on
        its device, fp32 math as set); returns the wrapper and that forward's outputs (final first, then the
        kept blocks), detached, in fp32 on the CPU: the reference of the tapped build."""
        tapped = cls(model, tap_points(model))
        return tapped, tapped._discover(x)

    def _discover(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._calls, self._versions = [], []
        try:
            with torch.no_grad():  # not inference_mode: its tensors have no version counter (in-place writes)
                final = self.model(x)
            calls, versions = self._calls, self._versions
        finally:
            self._calls, self._versions = [], None
        seen: list[torch.Tensor] = []
        counts: dict[str, int] = {}
        for (name, t), v in zip(calls, versions):
            counts[name] = counts.get(name, 0) + 1
            label = name if counts[name] == 1 else f"{name}#{counts[name]}"
            keep = (isinstance(t, torch.Tensor) and t.is_floating_point() and t._version == v
                    and not any(t is s for s in seen))
            if keep and t is final:
                keep = False
                if self.final_name == "output":
                    self.final_name = label
            self.keep.append(keep)
            if keep:
                seen.append(t)
                self.names.append(label)
                self.shapes.append(tuple(t.shape))
        if not isinstance(final, torch.Tensor):
            raise TypeError(f"the model returns {type(final).__name__}, not one tensor")
        return [t.detach().float().cpu() for t in (final, *seen)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._calls = []
        final = self.model(x)
        calls, self._calls = self._calls, []
        if len(calls) != len(self.keep):
            raise RuntimeError(f"the forward called {len(calls)} tapped modules, the discovery pass "
                               f"{len(self.keep)}: the block outputs would not line up with their names")
        return (final, *[t.reshape(-1) for (_, t), k in zip(calls, self.keep) if k])  # flat: see the docstring

    def restore(self, outputs: tuple | list) -> list:
        """The block outputs of a run back in their shapes (the forward hands them out flat)."""
        if not isinstance(outputs, (tuple, list)) or len(outputs) != 1 + len(self.shapes):
            return outputs
        return [outputs[0], *[t.reshape(shape) if t.numel() == math.prod(shape) else t
                              for t, shape in zip(outputs[1:], self.shapes)]]


def _finite(v: float) -> float | str:
    """A float for JSON: finite values rounded to 3 significant digits, inf / nan as strings (standard JSON)."""
    return float(f"{v:.3g}") if math.isfinite(v) else str(v)


def compare(names: list[str], outputs: tuple | list, reference: list[torch.Tensor], precision: str) -> dict:
    """Each block's rel_err (`names`: the tapped blocks then the final output's name; `outputs` and `reference`:
    final first, then the blocks) and the first block, in forward order, above the precision's tolerance."""
    tol = TOLERANCES[precision]
    if not isinstance(outputs, (tuple, list)) or len(outputs) != len(reference):
        got = len(outputs) if isinstance(outputs, (tuple, list)) else 1
        raise ValueError(f"the backend returned {got} output(s) for the tapped model, expected {len(reference)} "
                         "(options['all_outputs'] not honoured?)")
    ordered = list(zip(names, [*outputs[1:], outputs[0]], [*reference[1:], reference[0]]))
    blocks: list[list] = []
    first_bad = None
    for name, y, y_ref in ordered:
        try:
            err = relative_error(y, y_ref)
        except ValueError:  # the fp32 forward itself is not finite there: no reference to judge against
            blocks.append([name, "reference not finite"])
            continue
        blocks.append([name, _finite(err)])
        if first_bad is None and not err <= tol:
            first_bad = name
    final = blocks[-1][1]
    return {"blocks": blocks, "tolerance": tol, "first_bad_block": first_bad, "final_rel_err": final}


def localise(model: nn.Module, x: torch.Tensor, *, backend: str, device: torch.device | str, precision: str,
             channels_last: bool = False, fold: bool = False, workdir: pathlib.Path | str = "/tmp",
             options: Mapping[str, Any] | None = None, y_ref: torch.Tensor | None = None) -> dict:
    """Tap `model` (fp32, not yet prepared), take the reference from its eager fp32 forward on `device`, build
    `backend` at `precision` on the tapped model with every output returned, run it once on `x` and compare.
    Returns {"blocks": [[name, rel_err], ...] (forward order, the final output last), "tolerance",
    "first_bad_block" (a name or None), "final_rel_err", "build_s", "localise_s"}; with `y_ref` (the case's own
    eager fp32 output) also "rebuilt_vs_case", the rel_err between it and this model's (0.0: the same model).
    Raises what tapping, the
    build or the run raise (bench.backends.Unsupported among them): the caller words it as a reason."""
    t0 = time.perf_counter()
    device = torch.device(device)
    model = model.eval()
    if fold:  # before tapping: folding replaces modules (their hooks would go with them)
        model = fold_conv_bn(model)
    set_fp32_math(device.type, "fp32")
    tapped, reference = TappedModel.discover(model.to(device), x.to(device))
    prepared = backends.prepare(tapped, x, backend=backend, device=device, precision=precision,
                                channels_last=channels_last, fold=False, workdir=workdir,
                                options={**(options or {}), "all_outputs": True})
    with torch.inference_mode():
        outputs = prepared.fn()
    record = compare([*tapped.names, tapped.final_name], tapped.restore(outputs), reference, precision)
    record.update(build_s=round(prepared.build_s, 3), localise_s=round(time.perf_counter() - t0, 3))
    if y_ref is not None:
        record["rebuilt_vs_case"] = _finite(relative_error(reference[0], y_ref))
    return record


def beside_case(record: dict, case_rel_err: Any) -> dict:
    """The timed build's own rel_err (`case_rel_err`, the row's) beside the tapped build's final one, and a note
    when they differ by more than SAME_BUILD_FACTOR: the extra outputs changed how the backend built the graph
    (measured: compile int8 block:msla, 0.0094 timed against 0.00091 tapped, the residual add no longer
    quantized), so the blocks' errors describe the tapped build, not the timed one."""
    if not isinstance(case_rel_err, (int, float)) or not math.isfinite(case_rel_err):
        return record
    record["case_rel_err"] = _finite(float(case_rel_err))
    try:
        final = float(record.get("final_rel_err"))  # "inf" / "nan" as written by _finite
    except (TypeError, ValueError):
        return record
    low, high = sorted((final, float(case_rel_err)))
    if not math.isnan(final) and high > SAME_BUILD_FACTOR * max(low, 1e-12):
        record["note"] = (f"the tapped build's output error ({final:.2g}) is not the timed build's "
                          f"({case_rel_err:.2g}): its extra outputs changed how the backend built the graph; "
                          "the blocks' errors describe the tapped build")
    return record


INT8_MEASURED = (*[(f"block:{m}", 128) for m in ("msla", "softmax", "relu-linear", "large-kernel")],
                 *[(f"evit-b0:{m}", 128) for m in ("msla", "softmax", "relu-linear", "large-kernel")],
                 *[(f"evit-b1:{m}", 256) for m in ("msla", "softmax", "relu-linear", "large-kernel")])


def _measure_int8(backend: str) -> None:  # pragma: no cover - a tool, minutes per backend on 2 cores
    """The measurements behind TOLERANCES["int8"] (bench.measure.numerics): per model, the timed build's
    rel_err against eager fp32 and the tapped build's first block past the tolerance; one thread, seed 0."""
    torch.set_num_threads(1)
    for name, res in INT8_MEASURED:
        torch.manual_seed(0)
        x = example_input(name, res, res, seed=0)
        try:
            model = build_model(name)
            y_ref = backends.reference_output(model, x)
            err = relative_error(backends.prepare(model, x, backend=backend, device="cpu", precision="int8").fn(),
                                 y_ref)
            torch.manual_seed(0)
            rec = localise(build_model(name), x, backend=backend, device="cpu", precision="int8", y_ref=y_ref)
            worst = max((b for b in rec["blocks"] if isinstance(b[1], float)), key=lambda b: b[1])
            print(f"{backend} {name}@{res}: rel_err {err:.2g}; first bad block {rec['first_bad_block']}; "
                  f"worst block {worst[0]} {worst[1]:.2g}", flush=True)
        except Exception as e:  # noqa: BLE001 - a tool: say why and go on
            print(f"{backend} {name}@{res}: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)


if __name__ == "__main__":  # pragma: no cover
    import sys

    for b in sys.argv[1:] or ("onnxruntime", "openvino", "executorch", "compile"):
        _measure_int8(b)
