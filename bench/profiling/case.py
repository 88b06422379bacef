"""Profiling a model, a registry model or a Case: the profile source of its backend + the counted forward.

`Profile` holds the attributed times of one source (torch, onnxruntime, tensorrt) and the MACs / bytes of one
forward of the same model in the same form (folded where the source folds); its tables come from
bench.profiling.attribute. Each entry point prepares the model the way the suite's backend does (to_device,
autocast for fp16/bf16, inference_mode), so the profile explains the latency the suite measures.
"""
from __future__ import annotations

import pathlib
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.backends.base import Unsupported, autocast_context, set_fp32_math, to_device
from bench.backends.ort_int8 import quantize as ort_quantize
from bench.backends.trt import import_torch_tensorrt, tensorrt_compile_kwargs, tensorrt_model_dtype
from bench.profiling.bandwidth import add_roofline
from bench.profiling.et_events import profile_executorch
from bench.profiling.macs import OpCost, count_costs
from bench.profiling.modules import Group, module_groups
from bench.profiling.ort_events import NodeInfo, graph_nodes, parse_ort_profile, profiled_session
from bench.profiling.ov_events import profile_openvino
from bench.profiling.torch_events import OpTime, profile_torch
from bench.profiling.trt_events import profile_trt
from models.deploy import fold_conv_bn
from models.onnx_export import export_onnx
from models.registry import build_model, example_input

SOURCES = ("torch", "onnxruntime", "tensorrt", "executorch", "openvino")


@dataclass
class Profile:
    """Attributed times (`ops`, summed over `iters` iterations) and one forward's costs; tables on demand."""
    source: str
    device: str
    iters: int
    ops: list[OpTime]
    costs: list[OpCost]
    groups: dict[str, Group]
    profiled_ms: float  # host time per profiled iteration (torch) / summed node or layer time (ORT, TensorRT)
    unprofiled_ms: float | None = None  # rough: median of the warm-up calls, profiler off
    trace_path: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def time_ms(self) -> float:
        """Attributed time per iteration (the device's: kernel time on CUDA); the kinds' time_ms sum to it."""
        return sum(o.time_us for o in self.ops) / 1e3 / max(1, self.iters)

    def by_kind(self, roofline: Any = None) -> Any:
        """One row per op kind (bench.profiling.attribute.KIND_COLUMNS), with roofline columns if given one."""
        from bench.profiling.attribute import kind_table

        df = kind_table(self.ops, self.costs, self.iters)
        if roofline is not None:
            df = add_roofline(df, roofline)
        return df

    def by_module(self) -> Any:
        from bench.profiling.attribute import module_table

        return module_table(self.ops, self.costs, self.iters, self.groups)

    def by_stage(self) -> Any:
        from bench.profiling.attribute import stage_table

        return stage_table(self.by_module())

    def top_ops(self, n: int = 15) -> Any:
        from bench.profiling.attribute import top_ops

        return top_ops(self.ops, self.costs, self.iters, n)

    def kinds(self, min_share: float = 0.0) -> set[str]:
        """The kinds with time, "framework" left out (it exists in torch profiles only)."""
        df = self.by_kind()
        return set(df.loc[(df["time_ms"] > 0) & (df["time_share"] >= min_share), "op_kind"]) - {"framework"}


def _setup(device: str, precision: str, threads: int) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cpu" and threads > 0:
        torch.set_num_threads(threads)
    set_fp32_math(dev.type, precision)
    return dev


def profile_model(model: nn.Module, example: torch.Tensor, *, device: str = "cpu", precision: str = "fp32",
                  threads: int = 0, iters: int = 5, warmup: int = 3, trace_path: str | pathlib.Path | None = None,
                  channels_last: bool = False, fold: bool = False, count: bool = True) -> Profile:
    """Profile eager PyTorch (as the eager backend runs it) and count one forward's MACs and bytes."""
    dev = _setup(device, precision, threads)
    model, x = to_device(model, example, dev, channels_last, fold)
    groups = module_groups(model)

    def fn() -> torch.Tensor:
        with torch.inference_mode(), autocast_context(dev.type, precision):
            return model(x)

    tp = profile_torch(fn, model=model, groups=groups, device_type=dev.type, iters=iters, warmup=warmup,
                       trace_path=trace_path)
    costs = count_costs(model, x, groups, lambda: autocast_context(dev.type, precision)) if count else []
    info = {**tp.info, "precision": precision, "threads": torch.get_num_threads() if dev.type == "cpu" else 0,
            "channels_last": channels_last, "folded": fold}
    return Profile("torch", str(dev), tp.iters, tp.ops, costs, groups, tp.profiled_ms, tp.unprofiled_ms,
                   tp.trace_path, info)


def _ort_run(sess: Any, x: Any, warmup: int, iters: int) -> float | None:
    name = sess.get_inputs()[0].name
    feed = {name: x.detach().cpu().contiguous().numpy()}
    times = []
    for _ in range(warmup + iters):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[1:warmup]) if warmup > 1 else None


def _ort_nodes(workdir: pathlib.Path, exported: pathlib.Path) -> dict:
    """Nodes of the graph ORT ran (groups, weights), with module paths from the exported graph."""
    original = graph_nodes(exported)
    optimized = workdir / "ort_optimized.onnx"
    if not optimized.exists():
        return original
    ran = graph_nodes(optimized)
    return {k: NodeInfo(v.op_type, v.group, v.weight_shape, v.module or getattr(original.get(k), "module", ""))
            for k, v in ran.items()}


def profile_onnxruntime_model(model: nn.Module, example: torch.Tensor, *, workdir: str | pathlib.Path | None = None,
                              threads: int = 0, iters: int = 5, warmup: int = 3, opt_level: str = "basic",
                              exporter: str = "torchscript", count: bool = True, precision: str = "fp32") -> Profile:
    """Export to ONNX, profile an ORT CPU session (bench.profiling.ort_events), count the folded model's costs
    (the exporter folds BatchNorm into convs). exporter "dynamo" is the backend's default but ~10x slower.
    precision "int8": the exported graph is quantized as the backend does (bench.backends.ort_int8) and profiled
    at level "all", where the integer kernels the timed session runs are fused."""
    import onnxruntime as ort  # the optional extra

    work = pathlib.Path(workdir or tempfile.mkdtemp(prefix="densebench-ort-profile-"))
    work.mkdir(parents=True, exist_ok=True)
    threads = threads or torch.get_num_threads()
    model = fold_conv_bn(model.eval()).eval()
    groups = module_groups(model)
    onnx_path = export_onnx(model, example, work / "model.onnx", exporter=exporter)
    if precision == "int8":
        ort_quantize(onnx_path, work / "model_int8.onnx", example, {})
        onnx_path, opt_level = work / "model_int8.onnx", "all"
    sess = profiled_session(ort, onnx_path, work, threads=threads, opt_level=opt_level)
    unprofiled = _ort_run(sess, example, warmup, iters)
    trace = sess.end_profiling()
    ops, runs = parse_ort_profile(trace, skip_runs=warmup, nodes=_ort_nodes(work, onnx_path), groups=groups)
    costs = count_costs(model, example, groups) if count else []
    per_iter = sum(o.time_us for o in ops) / 1e3 / max(1, runs)
    info = {"onnxruntime": ort.__version__, "opt_level": opt_level, "exporter": exporter, "threads": threads,
            "runs": runs, "folded": True, "precision": precision}
    return Profile("onnxruntime", "cpu", runs, ops, costs, groups, per_iter, unprofiled, str(trace), info)


def profile_tensorrt_model(model: nn.Module, example: torch.Tensor, *, workdir: str | pathlib.Path,
                           precision: str = "fp16", iters: int = 5, warmup: int = 3, count: bool = True) -> Profile:
    """Compile with torch-tensorrt as the tensorrt backend does and profile the engines (GPU only)."""
    torch_tensorrt, version = import_torch_tensorrt()
    dev = _setup("cuda", precision, 0)
    model, x = to_device(model, example, dev, False, False)
    mdt = tensorrt_model_dtype(version, precision)
    model, x = model.to(mdt), x.to(mdt)
    with torch.no_grad():
        trt_mod = torch_tensorrt.compile(model, ir="dynamo", inputs=[x], **tensorrt_compile_kwargs(version, precision))

    def fn() -> torch.Tensor:
        with torch.no_grad():
            return trt_mod(x)

    ops, runs = profile_trt(trt_mod, fn, pathlib.Path(workdir) / "trt_profile", iters=iters, warmup=warmup)
    costs = count_costs(model, x) if count else []
    per_iter = sum(o.time_us for o in ops) / 1e3 / max(1, runs)
    return Profile("tensorrt", str(dev), runs, ops, costs, {}, per_iter, None, None,
                   {"torch_tensorrt": version, "precision": precision})


def profile_executorch_model(model: nn.Module, example: torch.Tensor, *, workdir: str | pathlib.Path | None = None,
                              precision: str = "fp32", threads: int = 0, iters: int = 5, warmup: int = 3,
                              fold: bool = False, count: bool = True) -> Profile:
    """Lower as the executorch backend does (folded only with `fold`) and read its ETDump
    (bench.profiling.et_events); costs are counted on a conv+BN folded copy (XNNPACK fuses BatchNorm into the
    conv, as ONNX Runtime's exporter does)."""
    work = pathlib.Path(workdir or tempfile.mkdtemp(prefix="densebench-et-profile-"))
    threads = threads or torch.get_num_threads()
    model = model.eval()
    model = fold_conv_bn(model).eval() if fold else model
    groups = module_groups(model)
    ops, runs, info = profile_executorch(model, example, precision=precision, workdir=work, threads=threads,
                                         iters=iters, warmup=warmup, groups=groups)
    costs = count_costs(fold_conv_bn(model).eval(), example, groups) if count else []
    return Profile("executorch", "cpu", runs, ops, costs, groups, info["execute_ms_per_run"], None,
                   info.get("etdump"), info)


def profile_openvino_model(model: nn.Module, example: torch.Tensor, *, precision: str = "fp32", threads: int = 0,
                           iters: int = 5, warmup: int = 3, fold: bool = False, count: bool = True) -> Profile:
    """Build as the openvino backend does (folded only with `fold`) and read the CPU plugin's per-node profile
    (bench.profiling.ov_events); costs are counted on a conv+BN folded copy (the plugin fuses BatchNorm into the
    conv). profiled_ms is the summed node time per inference; info["wall_ms"] is the wall time beside it."""
    _setup("cpu", "fp32", threads)
    model = fold_conv_bn(model.eval()).eval() if fold else model.eval()
    groups = module_groups(model)
    ops, runs, info = profile_openvino(model, example, precision=precision, iters=iters, warmup=warmup,
                                       groups=groups)
    costs = count_costs(fold_conv_bn(model).eval(), example, groups) if count else []
    return Profile("openvino", "cpu", runs, ops, costs, groups, info["node_sum_ms"], None, None, info)


def profile_registry_model(name: str, height: int, width: int, *, batch: int = 1, source: str = "torch",
                           **options: Any) -> Profile:
    """Build registry model `name` (models.registry) with its deterministic input and profile it with `source`."""
    model, x = build_model(name), example_input(name, height, width, batch)
    if source == "torch":
        return profile_model(model, x, **options)
    if source == "onnxruntime":
        return profile_onnxruntime_model(model, x, **options)
    if source == "executorch":
        return profile_executorch_model(model, x, **options)
    if source == "openvino":
        return profile_openvino_model(model, x, **options)
    if source == "tensorrt":
        return profile_tensorrt_model(model, x, **options)
    raise ValueError(f"unknown profile source {source!r}; valid: {', '.join(SOURCES)}")


def profile_case(case: Any, *, workdir: str | pathlib.Path | None = None, trace_path: str | None = None,
                 iters: int = 5, warmup: int = 3) -> Profile:
    """Profile one bench.cases.Case with the source of its backend (eager -> torch; onnxruntime; tensorrt)."""
    common = {"iters": iters, "warmup": warmup}
    if case.backend == "eager":
        return profile_registry_model(case.model, case.height, case.width, batch=case.batch, device=case.device,
                                      precision=case.precision, threads=case.threads, trace_path=trace_path,
                                      channels_last=case.channels_last, fold=case.folded, **common)
    if case.backend == "onnxruntime" and case.device_type == "cpu" and case.precision in ("fp32", "int8"):
        return profile_registry_model(case.model, case.height, case.width, batch=case.batch, source="onnxruntime",
                                      workdir=workdir, threads=case.threads, precision=case.precision, **common)
    if case.backend == "openvino" and case.device_type == "cpu" and case.precision in ("fp32", "bf16", "int8"):
        return profile_registry_model(case.model, case.height, case.width, batch=case.batch, source="openvino",
                                      precision=case.precision, threads=case.threads, fold=case.folded, **common)
    if case.backend == "tensorrt" and case.device_type == "cuda":
        return profile_registry_model(case.model, case.height, case.width, batch=case.batch, source="tensorrt",
                                      workdir=workdir or tempfile.mkdtemp(), precision=case.precision, **common)
    if case.backend == "executorch" and case.device_type == "cpu" and case.precision in ("fp32", "int8"):
        return profile_registry_model(case.model, case.height, case.width, batch=case.batch, source="executorch",
                                      workdir=workdir, precision=case.precision, threads=case.threads,
                                      fold=case.folded, **common)
    raise Unsupported(f"profiling covers eager (any device), onnxruntime (cpu fp32/int8), executorch (cpu "
                      f"fp32/int8), openvino (cpu fp32/bf16/int8) and tensorrt (cuda); "
                      f"not {case.backend} on {case.device} {case.precision}")
