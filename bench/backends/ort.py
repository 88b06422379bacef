"""onnxruntime: export to ONNX (models.onnx_export) and run it in an ONNX Runtime session; on CUDA through IO
binding on torch's buffers, so the latency has no host copies. int8 (CPU): the exported fp32 graph is
QDQ-quantized (bench.backends.ort_int8). On a CPU, what ran where (every node on the CPU EP, the int8 MAC share) is
read from a one-run profiled session before the timed one (`info["delegation"]`, `info["int8"]`); on CUDA it is
not recorded.

Named ort.py, not onnxruntime.py, so the module cannot be mistaken for (or shadow) the onnxruntime package.
onnxruntime is an optional extra, imported only when this backend is checked or prepared.
"""
from __future__ import annotations

import pathlib
import shutil
import tempfile
import time
from types import ModuleType
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from bench.backends import ort_int8
from bench.backends.base import DTYPES, Runner, Unsupported, package_version, sync
from bench.backends.int8 import calibration_info
from models.onnx_export import ONNX_OPSET, export_onnx

NAME = "onnxruntime"
_CUDA_EPS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # preferred first
_ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}
_NUMPY_TYPES = {torch.float32: np.float32, torch.float16: np.float16}


def _onnxruntime() -> ModuleType | None:
    """The onnxruntime module, or None when the optional extra is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def unsupported(device_type: str, precision: str, channels_last: bool, fold: bool) -> str | None:
    """Missing packages or execution providers, and what an exported NCHW fp32/fp16 graph cannot express."""
    ort = _onnxruntime()
    if ort is None:
        return "onnxruntime is not installed (optional extra: pip install densebench[onnx])"
    if package_version("onnxscript") is None or package_version("onnx") is None:
        return "ONNX export needs the onnx and onnxscript packages (optional extra: densebench[onnx])"
    if channels_last:
        return "channels_last has no meaning for onnxruntime: the exported ONNX graph is NCHW"
    if device_type == "cpu" and precision not in ("fp32", "int8"):
        return (f"onnxruntime on cpu runs fp32 only here, and int8 by QDQ quantization ({precision} would need an "
                "fp16/bf16 ONNX model, which the CPU execution provider mostly runs by casting back to fp32)")
    if device_type == "cuda" and precision == "int8":
        return ("onnxruntime int8 runs on cpu only here (the CUDA EP has few QDQ kernels and the TensorRT EP "
                "needs its own calibration; use --backends tensorrt for int8 on a GPU)")
    if device_type == "cuda":
        provs = ort.get_available_providers()
        if not set(_CUDA_EPS) & set(provs):
            return (f"onnxruntime has no CUDA execution provider (available: {', '.join(provs)}); "
                    "install onnxruntime-gpu")
        if precision == "bf16":
            return "onnxruntime bf16 on CUDA is not supported here (few CUDA EP kernels take bfloat16)"
    return None


def _session_options(ort: ModuleType, device: torch.device) -> tuple[Any, int]:
    """Full graph optimisation, sequential execution, quiet logs; on a CPU as many threads as torch uses (so
    backends compare at the same thread count), on CUDA one host thread. Returns the options and that count."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return so, threads


def _provider(name: str, device: torch.device, precision: str, tmp: pathlib.Path) -> str | tuple[str, dict]:
    """One execution provider with the settings that match `precision` on `device`."""
    if name == "CUDAExecutionProvider":
        return name, {"device_id": device.index, "use_tf32": int(precision == "tf32"),
                      "cudnn_conv_algo_search": "EXHAUSTIVE"}
    if name == "TensorrtExecutionProvider":
        return name, {"device_id": device.index, "trt_fp16_enable": precision == "fp16",
                      "trt_engine_cache_enable": True, "trt_engine_cache_path": str(tmp / "ort_trt_cache"),
                      "trt_timing_cache_enable": True}
    return name


def _providers(ort: ModuleType, device: torch.device, precision: str, options: Mapping[str, Any],
               tmp: pathlib.Path) -> list:
    """The CPU EP on a CPU; on CUDA the wanted GPU EPs that are installed (option `ort_providers`, default
    TensorRT then CUDA), with the CPU EP last for the nodes they do not take."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    wanted = options.get("ort_providers") or list(_CUDA_EPS)
    providers = [_provider(p, device, precision, tmp) for p in wanted if p in available]
    if not providers:
        raise Unsupported(f"onnxruntime has no CUDA execution provider (available: {', '.join(available)})")
    return providers + ["CPUExecutionProvider"]


def _cpu_runner(sess: Any, x: torch.Tensor, info: dict) -> Runner:
    """Run on a numpy view of the input: on a CPU there is no device copy to avoid."""
    in_name = sess.get_inputs()[0].name
    x_np = x.detach().cpu().contiguous().numpy()
    info["io"] = "numpy arrays in host memory (no device copies on cpu)"

    def fn() -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {in_name: x_np})[0])

    return fn


def _all_outputs_runner(sess: Any, x: torch.Tensor, info: dict) -> Runner:
    """Option all_outputs (block-level error localisation, not timed): every graph output, in the model's output
    order, as CPU tensors; host copies on any device."""
    in_name = sess.get_inputs()[0].name
    x_np = x.detach().cpu().contiguous().numpy()
    info["io"] = "all outputs, copied to host numpy arrays (option all_outputs)"

    def fn() -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(o) for o in sess.run(None, {in_name: x_np}))

    return fn


def _cuda_runner(sess: Any, model: nn.Module, x: torch.Tensor, device: torch.device, info: dict) -> Runner:
    """IO binding on device buffers owned by torch: no host copies inside the timed call."""
    in_name, out_meta = sess.get_inputs()[0].name, sess.get_outputs()[0]
    shape = out_meta.shape
    if not all(isinstance(d, int) for d in shape):  # a symbolic output dim: ask the model
        with torch.inference_mode():
            shape = tuple(model(x).shape)
    out_dtype = _ORT_TYPES.get(out_meta.type, x.dtype)
    y = torch.empty(tuple(shape), dtype=out_dtype, device=device)
    x_c = x.contiguous()
    torch.cuda.synchronize(device)  # the input written on torch's stream is complete before ORT reads it
    binding = sess.io_binding()
    binding.bind_input(in_name, "cuda", device.index, _NUMPY_TYPES[x_c.dtype], tuple(x_c.shape), x_c.data_ptr())
    binding.bind_output(out_meta.name, "cuda", device.index, _NUMPY_TYPES[out_dtype], tuple(y.shape), y.data_ptr())
    info["io"] = ("IO binding to torch CUDA buffers: no host transfers in the latency; ORT runs on its own "
                  "stream and Run() returns after synchronising it, so CUDA events on torch's stream "
                  "measure the blocking Run (host overhead included)")

    def fn() -> torch.Tensor:
        sess.run_with_iobinding(binding)  # ORT synchronises its stream at the end of run (default)
        return y

    return fn


def _trt_ep_first_run(sess: Any, fn: Runner, device: torch.device, info: dict) -> float:
    """The TensorRT EP builds its engine on the first run: run it once and return that time, to count as build
    (0 without the TensorRT EP)."""
    if "TensorrtExecutionProvider" not in sess.get_providers():
        return 0.0
    t0 = time.perf_counter()
    fn()
    sync(device)
    info["trt_ep_first_run_s"] = round(time.perf_counter() - t0, 3)
    return info["trt_ep_first_run_s"]


def _quantize(path: pathlib.Path, x: torch.Tensor, info: dict,
              options: Mapping[str, Any]) -> tuple[pathlib.Path, float]:
    """int8: QDQ-quantize the exported graph (bench.backends.ort_int8); returns the model to run and the time."""
    t0 = time.perf_counter()
    q_path = path.with_name("model_int8.onnx")
    info["int8"] = ort_int8.quantize(path, q_path, x, dict(options))
    info["calibration"] = calibration_info(x)
    return q_path, time.perf_counter() - t0


def _what_ran(ort: ModuleType, path: pathlib.Path, x: torch.Tensor, device: torch.device, info: dict,
              tmp: pathlib.Path) -> None:
    """On a CPU: the delegation record (every node on the CPU EP) and, for int8, the MAC share on int8 kernels,
    read from a one-run profiled session with the timed session's options (not counted as build)."""
    if device.type != "cpu":
        return
    t0 = time.perf_counter()
    so, _ = _session_options(ort, device)
    nodes = ort_int8.ran_nodes(ort, path, so, ["CPUExecutionProvider"], x, tmp)
    info["delegation"] = ort_int8.delegation(nodes).as_info()
    if "int8" in info:
        info["int8"].update(ort_int8.int8_share(nodes, info["int8"]["excluded"]))
    info["graph_analysis_s"] = round(time.perf_counter() - t0, 3)


def prepare(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, info: dict,
            options: Mapping[str, Any], workdir: pathlib.Path) -> tuple[Runner, float]:
    """Export (and for int8 quantize), open a session, bind the runner; build time = export (+ quantization) +
    session creation (+ TensorRT EP engine).

    Options: opset, onnx_exporter ("dynamo" | "torchscript"), ort_providers, keep_onnx (keep the file, path in
    info), int8_float_ops (bench.backends.ort_int8), all_outputs (fn returns every output as CPU tensors). fp16 on
    CUDA casts the model to half before export (see the package docstring on the fp32 island).
    """
    import onnxruntime as ort  # the optional extra; unsupported() has checked that it is installed

    if device.type == "cuda" and precision == "fp16":
        model, x = model.half(), x.half()
    opset = int(options.get("opset", ONNX_OPSET))
    exporter = options.get("onnx_exporter", "dynamo")
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="ort-", dir=workdir))  # private: cases may share a workdir
    path = tmp / "model.onnx"
    t0 = time.perf_counter()
    export_onnx(model, x, path, opset=opset, exporter=exporter)
    export_s = time.perf_counter() - t0
    run_path, quantize_s = _quantize(path, x, info, options) if precision == "int8" else (path, 0.0)
    _what_ran(ort, run_path, x, device, info, tmp)
    so, threads = _session_options(ort, device)
    providers = _providers(ort, device, precision, options, tmp)
    t1 = time.perf_counter()
    sess = ort.InferenceSession(str(run_path), sess_options=so, providers=providers)
    session_s = time.perf_counter() - t1
    info.update({"onnxruntime": ort.__version__, "onnx": package_version("onnx"), "opset": opset,
                 "exporter": f"torch.onnx.export(dynamo={exporter == 'dynamo'})", "providers": sess.get_providers(),
                 "requested_providers": [p if isinstance(p, str) else p[0] for p in providers],
                 "intra_op_threads": threads, "export_s": round(export_s, 3), "session_s": round(session_s, 3),
                 "model_dtype": str(DTYPES[precision]).replace("torch.", "")})
    if precision == "int8":
        info["quantize_s"] = round(quantize_s, 3)
    if options.get("all_outputs"):
        fn = _all_outputs_runner(sess, x, info)
    else:
        fn = _cpu_runner(sess, x, info) if device.type == "cpu" else _cuda_runner(sess, model, x, device, info)
    build = export_s + quantize_s + session_s + _trt_ep_first_run(sess, fn, device, info)
    info["onnx_bytes"] = run_path.stat().st_size
    if options.get("keep_onnx"):
        info["onnx_path"] = str(run_path)
    else:  # the session holds the model in memory; the files and engine cache are not needed any more
        shutil.rmtree(tmp, ignore_errors=True)
    return fn, build
