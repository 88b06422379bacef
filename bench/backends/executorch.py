"""ExecuTorch on the CPU with the XNNPACK delegate, the mobile-CPU deployment path: `torch.export` ->
`to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])` -> `.pte` -> `executorch.runtime`; int8 through
pt2e with the XNNPACK quantizer (per-channel symmetric int8 weights, static per-tensor activations calibrated on
`bench.backends.int8.calibration_set`).

What the partitioner does not take runs on ExecuTorch's portable kernels; the lowered graph says which ops and
how many MACs went where (`bench.backends.graph_counts`, recorded in info["delegation"]), and a case whose
arithmetic fell back is not a measurement of XNNPACK and says so (`Delegation.verdict`). ExecuTorch runs its own
threadpool: it is set to the case's thread count and the count read back is recorded.

executorch is an optional extra (densebench[executorch]; 1.5.x pins torchao 0.18 and runs with the project's
torch 2.14), imported only when this backend prepares a case: importing `executorch.exir` costs seconds. A
missing dependency surfaces inside executorch as "pybindings._C is not found"; `import_reason` walks the
exception chain and names the missing module instead, and a runtime built for another torch (an undefined
symbol) is said as such: either way one `Unsupported` line per case, never a crash.
"""
from __future__ import annotations

import functools
import importlib.util
import pathlib
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Mapping

import torch
from torch import nn

from bench.backends import graph_counts
from bench.backends.base import Runner, Unsupported, package_version
from bench.backends.delegation import Delegation
from bench.backends.int8 import calibration_info, pt2e_quantize

NAME = "executorch"
_PRECISIONS = ("fp32", "int8")
_EXTRA = "pip install densebench[executorch]"
# modules executorch imports at runtime without declaring them all (module, distribution)
_DEPENDENCIES = (("torchao", "torchao"), ("ruamel.yaml", "ruamel.yaml"), ("tabulate", "tabulate"))
INT8_SCHEME = "pt2e XNNPACKQuantizer, static"


def _missing() -> str | None:
    """Why executorch cannot even be tried (not installed, a dependency absent), from metadata and module specs:
    cheap enough for the parent's check of every case (the full import is left to prepare)."""
    version = package_version("executorch")
    if version is None:
        return f"executorch is not installed (optional extra: {_EXTRA})"
    for module, dist in _DEPENDENCIES:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"executorch {version} cannot run: its dependency {dist} is not installed ({_EXTRA})"
    return None


def unsupported(device_type: str, precision: str, channels_last: bool, fold: bool) -> str | None:
    """Missing package, a device other than the CPU, a layout option, precisions other than fp32 and int8."""
    reason = _missing()
    if reason:
        return reason
    if device_type != "cpu":
        return "executorch runs on the CPU here (XNNPACK delegate)"
    if channels_last:
        return "channels_last has no meaning for executorch: XNNPACK picks its own layout (NHWC in the delegate)"
    if precision not in _PRECISIONS:
        return f"executorch runs fp32 and int8 only here, not {precision}"
    return None


def import_reason(error: BaseException) -> str:
    """One line for a failed import of executorch: the missing module named (executorch re-raises a missing
    dependency as "pybindings._C is not found"), or the runtime/torch mismatch, else the root error's first line."""
    version = package_version("executorch") or "?"
    chain: list[BaseException] = []
    cur: BaseException | None = error
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for e in chain:
        name = getattr(e, "name", None)
        if isinstance(e, ModuleNotFoundError) and name and not str(name).startswith("executorch"):
            return f"executorch {version} cannot be imported: module {name!r} is missing ({_EXTRA})"
    root = chain[-1]
    line = (str(root).strip().splitlines() or [""])[0][:200]
    if "undefined symbol" in line or "torch" in line.lower():
        return f"executorch {version} cannot share torch {torch.__version__}: {type(root).__name__}: {line}"
    return f"executorch {version} cannot be imported with torch {torch.__version__}: {type(root).__name__}: {line}"


@functools.lru_cache(maxsize=1)
def _load() -> tuple[SimpleNamespace | None, str | None]:
    try:
        import executorch.extension.pybindings.portable_lib as portable
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        from executorch.runtime import Runtime
    except Exception as e:  # noqa: BLE001 - ImportError, OSError (undefined symbol), RuntimeError: all one reason
        return None, import_reason(e)
    return SimpleNamespace(portable=portable, XnnpackPartitioner=XnnpackPartitioner, Runtime=Runtime,
                           to_edge_transform_and_lower=to_edge_transform_and_lower), None


def executorch_api() -> SimpleNamespace:
    """The executorch entry points this backend uses; Unsupported(reason) when they cannot be imported."""
    reason = _missing()
    api, import_error = _load() if reason is None else (None, reason)
    if api is None:
        raise Unsupported(import_error or "executorch cannot be imported")
    return api


def set_threads(threads: int) -> int:
    """Resize ExecuTorch's threadpool (XNNPACK and the portable kernels use it) and read the size back."""
    portable = executorch_api().portable
    portable._unsafe_reset_threadpool(int(threads))  # "unsafe" only while a method runs: none does here
    return int(portable._threadpool_get_thread_count())


def quantize(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """pt2e static int8 for XNNPACK: per-channel symmetric weights, per-tensor activations calibrated on the
    shared calibration set. What the quantizer does not annotate (division, softmax, the attention matmuls of
    the mixers' fp32 region) stays float: nothing is excluded by hand, the graph says what was left."""
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                              get_symmetric_quantization_config)
    except Exception as e:  # noqa: BLE001 - see import_reason
        raise Unsupported(import_reason(e)) from e
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    return pt2e_quantize(model, x, quantizer, "executorch int8")


@dataclass
class Lowered:
    """A lowered program: the .pte bytes, what the lowered edge graph says (read before to_executorch) and, for
    int8, what the converted pt2e graph says."""
    pte: bytes
    delegation: Delegation
    mac_nodes: list[list[graph_counts.MacNode]]  # per delegate call, its MAC-carrying nodes in order
    int8: dict | None
    times: dict = field(default_factory=dict)


def lower(model: nn.Module, x: torch.Tensor, precision: str) -> Lowered:
    """export (-> quantize -> export) -> to_edge_transform_and_lower(XNNPACK) -> to_executorch, timed."""
    api = executorch_api()
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    int8 = None
    if precision == "int8":
        model = quantize(model, x)
        times["quantize_s"] = round(time.perf_counter() - t0, 3)  # export + prepare + calibrate + convert
        int8 = graph_counts.int8_record(model, x)
    t1 = time.perf_counter()
    program = torch.export.export(model, (x,))
    times["export_s"] = round(time.perf_counter() - t1, 3)
    t2 = time.perf_counter()
    edge = api.to_edge_transform_and_lower(program, partitioner=[api.XnnpackPartitioner()])
    graph = edge.exported_program().graph_module
    delegation = graph_counts.delegation(graph)
    mac_nodes = graph_counts.delegate_mac_nodes(graph)
    pte = edge.to_executorch().buffer  # rewrites `graph` in place (memory planning): counted above, before
    times["lower_s"] = round(time.perf_counter() - t2, 3)
    return Lowered(pte, delegation, mac_nodes, int8, times)


def load(path: pathlib.Path, *, etdump: bool = False) -> tuple[Any, Any]:
    """(program, its "forward" method) from a .pte file; `etdump` records ETDump events (profiling only)."""
    program = executorch_api().Runtime.get().load_program(str(path), enable_etdump=etdump)
    return program, program.load_method("forward")


def _int8_info(lowered: Lowered) -> dict:
    record = dict(lowered.int8 or {})
    return {"scheme": INT8_SCHEME, "weights": "per-channel symmetric int8",
            "activations": "per-tensor affine int8, static ranges from the calibration set (histogram observer)",
            **record,
            "float_policy": "nothing excluded by hand: what the XNNPACK quantizer leaves unannotated runs in "
                            "float ('excluded' is read from the converted graph)"}


def prepare(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, info: dict,
            options: Mapping[str, Any], workdir: pathlib.Path) -> tuple[Runner, float]:
    """Lower, write the .pte, load it; build time = (quantize +) export + lower + load.

    The runner passes the fixed input and returns the first output (`options["all_outputs"]`: a tuple of every
    output, in the model's order). executorch.runtime copies the input into the program's planned buffer and
    returns cloned outputs, so each call pays one input and one output copy, as ONNX Runtime's does.
    """
    threads = set_threads(torch.get_num_threads())
    x = x.detach().contiguous()
    lowered = lower(model.eval(), x, precision)
    path = pathlib.Path(workdir) / f"executorch_{precision}.pte"
    path.write_bytes(lowered.pte)
    t0 = time.perf_counter()
    _, method = load(path)
    load_s = time.perf_counter() - t0
    info.update({"executorch": package_version("executorch"), "torchao": package_version("torchao"),
                 "executorch_threads": threads, "partitioner": "XnnpackPartitioner (default configs)",
                 "pte_bytes": len(lowered.pte), **lowered.times, "load_s": round(load_s, 3),
                 "delegation": lowered.delegation.as_info(),
                 "io": "input copied into the planned buffer, outputs cloned per call (executorch.runtime)"})
    if precision == "int8":
        info["calibration"] = calibration_info(x)
        info["int8"] = _int8_info(lowered)
    every = bool(options.get("all_outputs"))

    def fn() -> Any:
        outs = method.execute([x])
        return tuple(outs) if every else outs[0]

    build = sum(v for k, v in lowered.times.items() if k.endswith("_s")) + load_s
    return fn, build
