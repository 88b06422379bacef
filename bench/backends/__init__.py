"""Backends: turn a model + a fixed example input into a zero-argument function that runs one inference.

    prepare(model, example, backend=..., device=..., precision=..., channels_last=..., fold=..., workdir=...)
        -> Prepared(fn, build_s, info)

`fn()` runs ONE inference on the fixed example input and returns the output on the device (the caller
synchronises). `build_s` is compile / export / engine-build time, kept apart from latency. `info` goes to the
`backend_info` column as JSON: versions, provider, settings and notes. prepare() takes ownership of the model: it
may fold, move and cast it in place, so compute the fp32 reference first (`reference_output`).

Supported matrix (anything else raises `Unsupported` with the reason; `unsupported_reason` says so up front):

| backend      | cpu                        | cuda                                               |
|--------------|----------------------------|----------------------------------------------------|
| eager        | fp32, bf16, fp16 (autocast)| fp32 (TF32 off), tf32, fp16, bf16 (autocast)       |
| compile      | fp32, bf16, fp16 (autocast)| fp32, tf32, fp16, bf16 (autocast inside the graph) |
| cudagraphs   | -                          | fp32, tf32, fp16, bf16 (autocast captured)         |
| onnxruntime  | fp32 (CPU EP)              | fp32, tf32 (CUDA EP), fp16 (model cast to half)    |
| tensorrt     | -                          | fp32, tf32, fp16, bf16 (torch-tensorrt dynamo)     |

bf16 on CUDA needs compute capability >= 8.0. fp16 on a CPU is native only with AVX512-FP16/AMX-FP16 (x86) or
FP16 arithmetic (ARM); elsewhere oneDNN converts, so it is a numerics check, not a deployment speed (the ISA flags
are in `info["cpu_isa"]`).

Linear attention's fp32 island (the attention matmuls and the division, see models/mixers.py):
- eager / compile / cudagraphs: autocast, so the model's own autocast-disabled region (and its explicit
  `.float()`) keeps it in fp32.
- onnxruntime fp16: the model is cast to half before export, so the island stays fp32 only through the explicit
  `.float()` casts in the mixer (exported as Cast nodes); autocast regions alone would not survive export.
- tensorrt: >= 2.13 rule-based autocast (`enable_autocast=True`), which respects torch.autocast regions of the
  model; 2.10-2.12 strong typing of a half model, island kept by the mixer's explicit casts; <= 2.9 weak typing
  (`enabled_precisions`): TensorRT may pick fp16 kernels inside the island: not kept, the numerics columns catch
  it.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import json
import pathlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

BACKENDS = ("eager", "compile", "cudagraphs", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ONNX_OPSET = 18  # ai.onnx opset for export: supported by ONNX Runtime >= 1.14 and TensorRT 8.6+/10
DEVICE_TYPES = ("cpu", "cuda")


class Unsupported(Exception):
    """A backend x device x precision (x option) combination that is not supported; str(e) is the reason."""


@dataclass
class Prepared:
    fn: Callable[[], torch.Tensor]
    build_s: float
    info: dict = field(default_factory=dict)

    def info_json(self) -> str:
        return json.dumps(self.info, default=str, sort_keys=True)


# ---------------------------------------------------------------------------------------------------------------
# versions and static checks


def package_version(*dists: str) -> str | None:
    """Installed version of the first of these distributions that is installed, else None."""
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def tensorrt_version() -> str | None:
    return package_version("torch-tensorrt", "torch_tensorrt")


def _ort():
    try:
        import onnxruntime
        return onnxruntime
    except ImportError:
        return None


def _device_type(device: Any) -> str:
    if isinstance(device, torch.device):
        return device.type
    return str(device).split(":", 1)[0]


def fold_available() -> str | None:
    """None when models.deploy.fold_conv_bn can be imported, else the reason."""
    try:
        mod = importlib.import_module("models.deploy")
        getattr(mod, "fold_conv_bn")
        return None
    except Exception as e:
        return f"conv+BN folding needs models.deploy.fold_conv_bn, which is not available ({type(e).__name__}: {e})"


def unsupported_reason(backend: str, device_type: str, precision: str, *, channels_last: bool = False,
                       fold: bool = False) -> str | None:
    """Why this combination cannot run here (None when it can, as far as a static check can tell).

    Called by the engine before spawning a child. `device_type` is "cpu" or "cuda" (an index is ignored).
    """
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}"
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}"
    dt = _device_type(device_type)
    if dt not in DEVICE_TYPES:
        return f"unknown device type {dt!r}; valid: {', '.join(DEVICE_TYPES)}"
    if dt == "cuda" and not torch.cuda.is_available():
        return "CUDA not available on this machine"
    if dt == "cpu" and precision == "tf32":
        return "tf32 is a CUDA tensor-core math mode (Ampere and newer); there is no tf32 on cpu"
    if dt == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "bf16 needs a CUDA GPU of compute capability >= 8.0 (Ampere)"
    if fold and (r := fold_available()):
        return r
    if backend == "cudagraphs" and dt != "cuda":
        return "cudagraphs replays captured CUDA graphs: CUDA only"
    if backend == "onnxruntime":
        ort = _ort()
        if ort is None:
            return "onnxruntime is not installed (optional extra: pip install densebench[onnx])"
        if package_version("onnxscript") is None or package_version("onnx") is None:
            return "ONNX export needs the onnx and onnxscript packages (optional extra: densebench[onnx])"
        if channels_last:
            return "channels_last has no meaning for onnxruntime: the exported ONNX graph is NCHW"
        if dt == "cpu" and precision != "fp32":
            return (f"onnxruntime on cpu runs fp32 only here ({precision} would need an fp16/bf16 ONNX model, "
                    "which the CPU execution provider mostly runs by casting back to fp32)")
        if dt == "cuda":
            provs = ort.get_available_providers()
            if not {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(provs):
                return (f"onnxruntime has no CUDA execution provider (available: {', '.join(provs)}); "
                        "install onnxruntime-gpu")
            if precision == "bf16":
                return "onnxruntime bf16 on CUDA is not supported here (few CUDA EP kernels take bfloat16)"
    if backend == "tensorrt":
        if dt != "cuda":
            return "tensorrt runs on NVIDIA GPUs (CUDA) only"
        if tensorrt_version() is None:
            return "torch-tensorrt is not installed (optional extra: pip install densebench[tensorrt])"
        if channels_last:
            return "channels_last has no meaning for tensorrt: TensorRT chooses its own tensor formats"
    return None


# ---------------------------------------------------------------------------------------------------------------
# precision helpers


def set_fp32_math(device_type: str, precision: str) -> dict:
    """Set CUDA's TF32 switches for this precision: on for tf32, off otherwise. Returns what was set.

    Uses the legacy `allow_tf32` flags on purpose. torch 2.9+ also has the `fp32_precision` API, but the two must
    not be mixed, and after the new API is used the legacy getters (and torch.get_float32_matmul_precision(),
    which inductor's max-autotune reads) raise in torch 2.14; after the legacy setters every getter, old and new,
    is consistent. Process-wide: the engine runs one case per process.
    """
    if device_type != "cuda":
        return {}
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return {"allow_tf32": tf32, "float32_matmul_precision": torch.get_float32_matmul_precision()}


def autocast_context(device_type: str, precision: str, cache_enabled: bool | None = None):
    """torch.autocast for fp16/bf16, a null context for fp32/tf32."""
    if precision in ("fp16", "bf16"):
        kw = {} if cache_enabled is None else {"cache_enabled": cache_enabled}
        return torch.autocast(device_type=device_type, dtype=DTYPES[precision], **kw)
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _base_info(backend: str, device: torch.device, precision: str, channels_last: bool, fold: bool) -> dict:
    info: dict[str, Any] = {"backend": backend, "device": str(device), "precision": precision,
                            "torch": torch.__version__, "channels_last": channels_last, "folded": fold}
    if device.type == "cpu":
        from bench.gpuinfo import cpu_isa
        info["threads"] = torch.get_num_threads()
        if precision in ("fp16", "bf16"):
            info["cpu_isa"] = cpu_isa()
    return info


def _to_device(model: nn.Module, example: torch.Tensor, device: torch.device, channels_last: bool,
               fold: bool) -> tuple[nn.Module, torch.Tensor]:
    model = model.eval()
    if fold:
        reason = fold_available()
        if reason:
            raise Unsupported(reason)
        from models.deploy import fold_conv_bn
        model = fold_conv_bn(model).eval()
    model = model.to(device)
    x = example.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
    return model, x


def reference_output(model: nn.Module, example: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Eager fp32 output on `device` (TF32 off), returned on the CPU in fp32: the reference for rel_err.

    Leaves the model in fp32 on `device`; call before prepare(), which may cast the model.
    """
    device = torch.device(device)
    set_fp32_math(device.type, "fp32")
    model = model.eval().to(device)
    with torch.inference_mode():
        y = model(example.to(device))
    return y.float().cpu()


# ---------------------------------------------------------------------------------------------------------------
# the backends


def _prepare_eager(model, x, device, precision, info, options):
    info["amp"] = "torch.autocast" if precision in ("fp16", "bf16") else "none"
    if options.get("cast_model") and precision in ("fp16", "bf16"):
        model = model.to(DTYPES[precision])
        x = x.to(DTYPES[precision])
        info["amp"] = "model and input cast to " + precision + ", under torch.autocast"
    dt = device.type

    def fn() -> torch.Tensor:
        with torch.inference_mode(), autocast_context(dt, precision):
            return model(x)

    return fn, 0.0


def _prepare_compile(model, x, device, precision, info, options):
    mode = options.get("compile_mode") or None  # None == "default"
    max_autotune = bool(options.get("max_autotune", False))
    if max_autotune and mode is None:
        mode = "max-autotune"
    compiler = options.get("compile_backend", "inductor")  # "aot_eager"/"eager": tracing only (tests)
    torch._dynamo.reset()  # fresh caches: no recompile limit carried over from an earlier case in this process
    if compiler == "inductor":
        compiled = torch.compile(model, backend="inductor", mode=mode, dynamic=False)
    else:
        compiled = torch.compile(model, backend=compiler, dynamic=False)
    info.update({"compiler": compiler, "mode": mode or "default", "dynamic": False,
                 "amp": "torch.autocast (traced into the graph)" if precision in ("fp16", "bf16") else "none"})
    dt = device.type

    def fn() -> torch.Tensor:
        with torch.inference_mode(), autocast_context(dt, precision):
            return compiled(x)

    t0 = time.perf_counter()
    fn()
    _sync(device)
    build = time.perf_counter() - t0
    info["build"] = "first call: dynamo trace + inductor codegen + one run"
    return fn, build


def _prepare_cudagraphs(model, x, device, precision, info, options):
    warmup = int(options.get("cudagraph_warmup", 3))
    static_x = x.clone()
    dt = device.type
    t0 = time.perf_counter()
    # Warm up on a side stream (cuDNN/cuBLAS autotuning, lazy init), as CUDA graph capture requires.
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s), torch.no_grad(), autocast_context(dt, precision, cache_enabled=False):
        for _ in range(warmup):
            model(static_x)
    torch.cuda.current_stream(device).wait_stream(s)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    # autocast caching must be off inside capture (its cache would hold tensors freed after capture).
    with torch.cuda.graph(graph), torch.no_grad(), autocast_context(dt, precision, cache_enabled=False):
        static_y = model(static_x)
    graph.replay()
    torch.cuda.synchronize(device)
    build = time.perf_counter() - t0
    info.update({"warmup_iters": warmup, "capture": "torch.cuda.graph on a static input after side-stream warm-up",
                 "amp": "torch.autocast(cache_enabled=False) captured" if precision in ("fp16", "bf16") else "none",
                 "note": "fn returns the static output buffer, overwritten by the next replay"})

    def fn() -> torch.Tensor:
        graph.replay()
        return static_y

    return fn, build


def _export_onnx(model: nn.Module, x: torch.Tensor, path: pathlib.Path, opset: int, exporter: str = "dynamo") -> str:
    """Export to ONNX; returns which exporter ran.

    exporter "dynamo" (default): the lead's models.onnx_export.export_onnx when present, else
    torch.onnx.export(dynamo=True) (torch.export + onnxscript, the supported path; ~10-20 s for a small model on a
    slow CPU). "torchscript": torch.onnx.export(dynamo=False), the legacy tracer (~1-2 s; used by the tests for
    speed). Both give a static-shape NCHW graph with one input and one output.
    """
    import warnings
    if exporter not in ("dynamo", "torchscript"):
        raise ValueError(f"unknown onnx exporter {exporter!r}; valid: dynamo, torchscript")
    if exporter == "dynamo":
        try:
            from models.onnx_export import export_onnx  # type: ignore
        except ImportError:
            export_onnx = None
        if export_onnx is not None:
            export_onnx(model, x, path, opset=opset)
            return "models.onnx_export.export_onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {"dynamo": True, "external_data": False, "verbose": False} if exporter == "dynamo" else {"dynamo": False}
        with contextlib.redirect_stdout(io.StringIO()):  # the dynamo exporter prints progress lines
            torch.onnx.export(model, (x,), str(path), opset_version=opset, input_names=["input"],
                              output_names=["output"], **kw)
    return f"torch.onnx.export(dynamo={exporter == 'dynamo'})"


_ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}


def _ort_element_type(dtype: torch.dtype):
    import numpy as np
    return {torch.float32: np.float32, torch.float16: np.float16}[dtype]


def _prepare_onnxruntime(model, x, device, precision, info, options, workdir: pathlib.Path):
    ort = _ort()
    opset = int(options.get("opset", ONNX_OPSET))
    dtype = DTYPES[precision]
    if device.type == "cuda" and precision == "fp16":
        model, x = model.half(), x.half()
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="ort-", dir=workdir))  # private: cases may share a workdir
    path = tmp / "model.onnx"
    t0 = time.perf_counter()
    with torch.no_grad():  # not inference_mode: torch.export traces the model
        exporter = _export_onnx(model, x, path, opset, options.get("onnx_exporter", "dynamo"))
    export_s = time.perf_counter() - t0

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    available = ort.get_available_providers()
    if device.type == "cpu":
        providers: list = ["CPUExecutionProvider"]
    else:
        idx = device.index if device.index is not None else torch.cuda.current_device()
        wanted = options.get("ort_providers") or ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
        providers = []
        for p in wanted:
            if p not in available:
                continue
            if p == "CUDAExecutionProvider":
                providers.append((p, {"device_id": idx, "use_tf32": int(precision == "tf32"),
                                      "cudnn_conv_algo_search": "EXHAUSTIVE"}))
            elif p == "TensorrtExecutionProvider":
                cache = tmp / "ort_trt_cache"
                providers.append((p, {"device_id": idx, "trt_fp16_enable": precision == "fp16",
                                      "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                                      "trt_timing_cache_enable": True}))
            else:
                providers.append(p)
        if not providers:
            raise Unsupported(f"onnxruntime has no CUDA execution provider (available: {', '.join(available)})")
        providers.append("CPUExecutionProvider")
    t1 = time.perf_counter()
    sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    session_s = time.perf_counter() - t1
    in_name = sess.get_inputs()[0].name
    out_meta = sess.get_outputs()[0]
    info.update({"onnxruntime": ort.__version__, "onnx": package_version("onnx"), "opset": opset,
                 "exporter": exporter, "providers": sess.get_providers(), "requested_providers":
                 [p if isinstance(p, str) else p[0] for p in providers], "intra_op_threads": threads,
                 "export_s": round(export_s, 3), "session_s": round(session_s, 3),
                 "model_dtype": str(dtype).replace("torch.", "")})
    if device.type == "cpu":
        x_np = x.detach().cpu().contiguous().numpy()
        info["io"] = "numpy arrays in host memory (no device copies on cpu)"

        def fn() -> torch.Tensor:
            return torch.from_numpy(sess.run(None, {in_name: x_np})[0])
    else:
        # IO binding on device buffers owned by torch: no host copies inside the timed call.
        shape = out_meta.shape
        if not all(isinstance(d, int) for d in shape):
            with torch.inference_mode():
                shape = tuple(model(x).shape)
        out_dtype = _ORT_TYPES.get(out_meta.type, x.dtype)
        y = torch.empty(tuple(shape), dtype=out_dtype, device=device)
        x_c = x.contiguous()
        torch.cuda.synchronize(device)  # the input written on torch's stream is complete before ORT reads it
        binding = sess.io_binding()
        binding.bind_input(in_name, "cuda", idx, _ort_element_type(x_c.dtype), tuple(x_c.shape), x_c.data_ptr())
        binding.bind_output(out_meta.name, "cuda", idx, _ort_element_type(out_dtype), tuple(y.shape), y.data_ptr())
        info["io"] = ("IO binding to torch CUDA buffers: no host transfers in the latency; ORT runs on its own "
                      "stream and Run() returns after synchronising it, so CUDA events on torch's stream "
                      "measure the blocking Run (host overhead included)")

        def fn() -> torch.Tensor:
            sess.run_with_iobinding(binding)  # ORT synchronises its stream at the end of run (default)
            return y
    build = export_s + session_s
    if "TensorrtExecutionProvider" in sess.get_providers():
        t2 = time.perf_counter()
        fn()  # the TensorRT EP builds its engine on the first run: count it as build time
        _sync(device)
        info["trt_ep_first_run_s"] = round(time.perf_counter() - t2, 3)
        build += info["trt_ep_first_run_s"]
    info["onnx_bytes"] = path.stat().st_size
    if options.get("keep_onnx"):
        info["onnx_path"] = str(path)
    else:  # the session holds the model in memory; the file and engine cache are not needed any more
        shutil.rmtree(tmp, ignore_errors=True)
    return fn, build


# --- TensorRT --------------------------------------------------------------------------------------------------


def _version_tuple(version: str) -> tuple[int, int]:
    import re
    m = re.match(r"\s*(\d+)\.(\d+)", version)
    if not m:
        raise ValueError(f"cannot parse torch-tensorrt version {version!r}")
    return int(m.group(1)), int(m.group(2))


def tensorrt_api(version: str) -> str:
    """Which precision API this torch-tensorrt version has:

    "enabled_precisions" (<= 2.9: weak typing, the builder picks kernels among the enabled precisions),
    "explicit_typing" (2.10-2.12: strong typing on by default; precision comes from the model's and inputs'
    dtypes), "autocast" (>= 2.13: enabled_precisions removed; rule-based autocast or model dtypes).
    """
    v = _version_tuple(version)
    if v <= (2, 9):
        return "enabled_precisions"
    if v <= (2, 12):
        return "explicit_typing"
    return "autocast"


def tensorrt_model_dtype(version: str, precision: str) -> torch.dtype:
    """dtype to cast the model and input to before compiling: the low dtype under explicit typing (2.10-2.12),
    fp32 otherwise (enabled_precisions picks kernels; autocast inserts the casts itself)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision in ("fp16", "bf16") and tensorrt_api(version) == "explicit_typing":
        return DTYPES[precision]
    return torch.float32


def tensorrt_compile_kwargs(version: str, precision: str) -> dict:
    """Keyword arguments for torch_tensorrt.compile(ir="dynamo") for this version and precision (pure function).

    fp32 disables TF32 (`disable_tf32=True`), tf32 allows it; fp16/bf16 per `tensorrt_api(version)`:
    - enabled_precisions: {fp32, low}; TensorRT may run any layer in low precision (fp32 island not kept).
    - explicit_typing: `use_explicit_typing=True`, no precision kwarg: the model is cast (tensorrt_model_dtype)
      and explicit casts in the model (the island's `.float()`) are honoured.
    - autocast: `use_explicit_typing=True, enable_autocast=True, autocast_low_precision_type=low`; the model stays
      fp32 and its torch.autocast-disabled regions stay fp32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    api = tensorrt_api(version)
    kw: dict[str, Any] = {"disable_tf32": precision != "tf32", "truncate_double": True}
    low = DTYPES[precision] if precision in ("fp16", "bf16") else None
    if api == "enabled_precisions":
        kw["enabled_precisions"] = {torch.float32} | ({low} if low is not None else set())
    elif api == "explicit_typing":
        kw["use_explicit_typing"] = True
    else:
        kw["use_explicit_typing"] = True
        if low is not None:
            kw["enable_autocast"] = True
            kw["autocast_low_precision_type"] = low
    return kw


def tensorrt_island_note(version: str, precision: str) -> str:
    if precision in ("fp32", "tf32"):
        return "fp32 network: no low-precision island to keep"
    api = tensorrt_api(version)
    if api == "enabled_precisions":
        return ("weak typing (enabled_precisions): TensorRT may choose low-precision kernels inside linear "
                "attention's fp32 island; not kept, rel_err/numerics_ok are the check")
    if api == "explicit_typing":
        return "strong typing of a low-precision model: the island stays fp32 through the mixer's explicit casts"
    return "rule-based autocast: torch.autocast-disabled regions (the island) stay fp32"


def _prepare_tensorrt(model, x, device, precision, info, options, workdir):
    version = tensorrt_version()
    if version is None:
        raise Unsupported("torch-tensorrt is not installed (optional extra: pip install densebench[tensorrt])")
    try:
        import torch_tensorrt
    except Exception as e:
        raise Unsupported(f"torch-tensorrt {version} is installed but does not import: {type(e).__name__}: {e}")
    kwargs = tensorrt_compile_kwargs(version, precision)
    kwargs.update(options.get("tensorrt_kwargs", {}))
    mdt = tensorrt_model_dtype(version, precision)
    model, x = model.to(mdt), x.to(mdt)
    from bench.gpuinfo import jetson_info
    info.update({"torch_tensorrt": version, "tensorrt": package_version("tensorrt", "tensorrt-cu12", "tensorrt_cu12",
                                                                        "tensorrt-cu13", "tensorrt_cu13"),
                 "api": tensorrt_api(version), "model_dtype": str(mdt).replace("torch.", ""),
                 "compile_kwargs": {k: (sorted(str(d) for d in v) if isinstance(v, set) else str(v))
                                    for k, v in kwargs.items()},
                 "fp32_island": tensorrt_island_note(version, precision)})
    info.update(jetson_info())
    t0 = time.perf_counter()
    # no_grad rather than inference_mode: torch.export (inside torch_tensorrt.compile) traces the model and
    # inference-mode tensors are not meant to enter an exported graph.
    with torch.no_grad():
        trt_mod = torch_tensorrt.compile(model, ir="dynamo", inputs=[x], **kwargs)
        trt_mod(x)  # deserialisation / lazy engine init happen on the first call: count them as build
    _sync(device)
    build = time.perf_counter() - t0

    def fn() -> torch.Tensor:
        with torch.no_grad():
            return trt_mod(x)

    return fn, build


# ---------------------------------------------------------------------------------------------------------------


def prepare(model: nn.Module, example: torch.Tensor, *, backend: str, device: torch.device | str, precision: str,
            channels_last: bool = False, fold: bool = False, workdir: pathlib.Path | str = "/tmp",
            options: Mapping[str, Any] | None = None) -> Prepared:
    """Build the backend's runner for one case. Raises Unsupported(reason) for combinations that cannot run.

    `options` (all optional): compile_mode, max_autotune (compile); cudagraph_warmup; opset, ort_providers,
    onnx_exporter ("dynamo" | "torchscript"), keep_onnx (onnxruntime); tensorrt_kwargs (merged over
    tensorrt_compile_kwargs); cast_model (eager: cast weights); compile_backend ("inductor"; "eager"/"aot_eager"
    trace only).
    """
    device = torch.device(device)
    options = dict(options or {})
    reason = unsupported_reason(backend, device.type, precision, channels_last=channels_last, fold=fold)
    if reason:
        raise Unsupported(reason)
    if device.type == "cuda":
        if device.index is None:  # "cuda" -> the current device, with its index (set_device needs one)
            device = torch.device("cuda", torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise Unsupported(f"no CUDA device {device}: {torch.cuda.device_count()} visible")
        torch.cuda.set_device(device)
    workdir = pathlib.Path(workdir)
    info = _base_info(backend, device, precision, channels_last, fold)
    info.update(set_fp32_math(device.type, precision))
    if device.type == "cuda":
        # Fixed shapes: let cuDNN pick the fastest conv algorithm (autotuned in the first calls, which the
        # engine's warm-up and cudagraphs' side-stream warm-up absorb), as deployments do.
        torch.backends.cudnn.benchmark = bool(options.get("cudnn_benchmark", True))
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    t0 = time.perf_counter()
    model, x = _to_device(model, example, device, channels_last, fold)
    info["to_device_s"] = round(time.perf_counter() - t0, 4)
    if backend == "eager":
        fn, build = _prepare_eager(model, x, device, precision, info, options)
    elif backend == "compile":
        fn, build = _prepare_compile(model, x, device, precision, info, options)
    elif backend == "cudagraphs":
        fn, build = _prepare_cudagraphs(model, x, device, precision, info, options)
    elif backend == "onnxruntime":
        fn, build = _prepare_onnxruntime(model, x, device, precision, info, options, workdir)
    else:
        fn, build = _prepare_tensorrt(model, x, device, precision, info, options, workdir)
    return Prepared(fn=fn, build_s=float(build), info=info)


__all__ = ["BACKENDS", "PRECISIONS", "DTYPES", "ONNX_OPSET", "Unsupported", "Prepared", "prepare",
           "unsupported_reason", "reference_output", "set_fp32_math", "autocast_context", "tensorrt_api",
           "tensorrt_compile_kwargs", "tensorrt_model_dtype", "tensorrt_version", "fold_available"]
