"""Op kinds: the names a hardware engineer reasons with, and the one classifier every profile source uses.

`OP_KINDS` is the table. Depthwise convolutions are split by kernel because that is the large-kernel question
(a 21x21 or a 1x21 strip depthwise conv does little arithmetic per byte and runs far from a matmul's rate):

    conv-1x1      pointwise conv, groups == 1, kernel 1x1 (any stride)
    conv-dense    dense kxk conv, groups == 1, kernel other than 1x1 (stems, 3x3 ResBlocks, patch embeds)
    conv-grouped  1 < groups < in_channels (MSLA's grouped 1x1 aggregation)
    dw<k>         depthwise (groups == Cin, i.e. weight Cin/groups == 1), square kernel k x k: dw3, dw5, dw7,
                  dw21, ...; any size is named by its size (dw1 for a per-channel 1x1)
    dw-strip-1x<k> / dw-strip-<k>x1   depthwise strip convs (SegNeXt's 7, 11, 21 pairs); other rectangles dw<h>x<w>
    matmul        mm, addmm, bmm, baddbmm, matmul, linear, einsum (ONNX MatMul / Gemm)
    attention     fused scaled-dot-product attention, every backend kernel (CPU flash, flash, efficient, cudnn)
                  and, by the attribution rule, the math path's matmuls and softmax when SDPA falls back to them
    softmax       softmax / log_softmax
    norm          batch / layer / group / instance / RMS norm, with their native_ and _legit variants
    elementwise   activations and pointwise arithmetic: relu, gelu, hardswish, add, mul, div, clamp, fill_, ...
    resize        upsample_* / interpolate, grid_sample (ONNX Resize)
    layout        data movement: permute/transpose/views, contiguous, clone, copy_, to (dtype copies), cat, stack,
                  pad, slicing, allocation (empty*)
    reduction     sum, mean, amax, norm, var, ..., and pooling
    conv-unknown  a convolution whose weight shape the source does not give (a TensorRT trace without layer info)
    framework     time inside a profiled module or iteration but in no op: Python, hooks, dispatch (torch only)
    other         anything else

The classifier is name based (the aten op name without namespace or overload) plus, for convolutions, the input
and weight shapes: input (N, Cin, *spatial), weight (Cout, Cin / groups, *kernel) give groups = Cin / weight[1].
"""
from __future__ import annotations

import re
from typing import Sequence

OP_KINDS: tuple[str, ...] = (
    "conv-1x1", "conv-dense", "conv-grouped",
    "dw3", "dw5", "dw7", "dw-strip-1x7", "dw-strip-7x1", "dw-strip-1x11", "dw-strip-11x1",
    "dw-strip-1x21", "dw-strip-21x1", "dw21",
    "matmul", "attention", "softmax", "norm", "elementwise", "resize", "layout", "reduction",
    "conv-unknown", "framework", "other",
)
_DW = re.compile(r"^dw(\d+|\d+x\d+|-strip-1x\d+|-strip-\d+x1)$")
# When one profiled unit holds several ops (a fused ORT / TensorRT layer), it takes the kind that comes first here.
_FUSED_PRIORITY = ("attention", "conv", "matmul", "softmax", "norm", "resize", "reduction", "elementwise",
                   "layout", "other")

_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "einsum", "addmv", "mv", "dot", "_addmm_activation",
           "_scaled_mm", "mkldnn_linear", "_mkl_linear", "_linear_pointwise", "bilinear", "addbmm", "tensordot"}
_SOFTMAX = {"softmax", "_softmax", "log_softmax", "_log_softmax", "_safe_softmax", "special_softmax"}
_NORM = {"batch_norm", "_batch_norm_impl_index", "native_batch_norm", "_native_batch_norm_legit",
         "_native_batch_norm_legit_no_training", "cudnn_batch_norm", "miopen_batch_norm", "_batch_norm_no_update",
         "_batch_norm_with_update", "layer_norm", "native_layer_norm", "group_norm", "native_group_norm",
         "instance_norm", "rms_norm", "_fused_rms_norm", "mkldnn_layer_norm"}
_ELEMENTWISE = {
    "relu", "relu6", "gelu", "hardswish", "hardsigmoid", "hardtanh", "silu", "mish", "sigmoid", "tanh", "elu",
    "selu", "celu", "leaky_relu", "prelu", "_prelu_kernel", "softplus", "threshold", "glu", "add", "sub", "rsub",
    "mul", "div", "true_divide", "floor_divide", "remainder", "neg", "abs", "exp", "exp2", "log", "log2", "log1p",
    "expm1", "sqrt", "rsqrt", "pow", "square", "reciprocal", "clamp", "clamp_min", "clamp_max", "clip", "minimum",
    "maximum", "where", "erf", "erfc", "sign", "floor", "ceil", "round", "trunc", "fill", "zero", "masked_fill",
    "lerp", "addcmul", "addcdiv", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not",
    "bitwise_and", "bitwise_or", "sin", "cos", "nan_to_num", "dropout", "native_dropout", "alpha_dropout",
}
_LAYOUT = {
    "view", "reshape", "_reshape_alias", "_unsafe_view", "permute", "transpose", "t", "contiguous", "clone",
    "copy", "to", "_to_copy", "type_as", "cat", "stack", "concat", "concatenate", "pad", "constant_pad_nd",
    "reflection_pad1d", "reflection_pad2d", "replication_pad1d", "replication_pad2d", "_pad_enum", "slice",
    "select", "narrow", "split", "split_with_sizes", "chunk", "unbind", "expand", "expand_as", "squeeze",
    "unsqueeze", "flatten", "unflatten", "as_strided", "alias", "detach", "empty", "empty_like", "empty_strided",
    "resize", "new_empty", "new_empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like",
    "new_zeros", "new_ones", "new_full", "index_select", "gather", "index", "roll", "flip", "repeat", "tile",
    "pixel_shuffle", "pixel_unshuffle", "im2col", "col2im", "movedim", "swapaxes", "lift_fresh", "resolve_conj",
    "resolve_neg", "_local_scalar_dense", "item", "scatter", "index_put", "_index_put_impl", "masked_select",
    "repeat_interleave", "channel_shuffle", "native_channel_shuffle", "view_as", "reshape_as", "set",
}
_REDUCTION = {"sum", "mean", "amax", "amin", "max", "min", "argmax", "argmin", "norm", "linalg_vector_norm",
              "var", "std", "var_mean", "std_mean", "prod", "cumsum", "cumprod", "logsumexp", "all", "any",
              "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
              "max_pool2d_with_indices", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d",
              "adaptive_max_pool2d", "mkldnn_max_pool2d", "mkldnn_adaptive_avg_pool2d", "count_nonzero", "topk",
              "sort", "nansum", "mean_dim"}


def op_base(name: str) -> str:
    """'aten::conv2d' / 'aten::add.Tensor' / 'aten.conv2d.default' / 'aten_ops.convolution.default' -> the op
    ('conv2d', 'add', ...); in-place 'relu_' -> 'relu' (an in-place op is the same kind as its functional form)."""
    n = name.strip()
    if "::" in n:  # profiler / schema names: namespace::op[.overload] (aten::, mkldnn::, quantized::)
        n = n.split("::")[-1].split(".")[0]
    elif "." in n:  # dispatcher / FX names: namespace.op.overload
        parts = n.split(".")
        n = parts[1] if parts[0] in ("aten", "aten_ops", "prims", "torch", "ops", "mkldnn") else parts[0]
    if n.endswith("_") and not n.endswith("__") and len(n) > 1:
        n = n[:-1]
    return n


def conv_kind(input_shape: Sequence[int] | None, weight_shape: Sequence[int] | None,
              groups: int | None = None) -> str:
    """The kind of a convolution from its input (N, Cin, *spatial) and weight (Cout, Cin/groups, *kernel).

    `groups` may be given (ONNX attribute); otherwise it is Cin / weight[1]. Without a weight shape: conv-unknown.
    """
    if not weight_shape or len(weight_shape) < 3:
        return "conv-unknown"
    cin_per_group, kernel = int(weight_shape[1]), [int(k) for k in weight_shape[2:]]
    if groups is None:
        if not input_shape or len(input_shape) < 2 or cin_per_group <= 0:
            return "conv-unknown"
        groups = max(1, int(input_shape[1]) // cin_per_group)
    if groups == 1:
        return "conv-1x1" if all(k == 1 for k in kernel) else "conv-dense"
    if cin_per_group == 1:  # groups == Cin: one filter (or a depth multiple) per channel
        return _dw_name(kernel)
    return "conv-grouped"


def _dw_name(kernel: list[int]) -> str:
    if len(set(kernel)) == 1:
        return f"dw{kernel[0]}"
    if len(kernel) == 2 and kernel[0] == 1:
        return f"dw-strip-1x{kernel[1]}"
    if len(kernel) == 2 and kernel[1] == 1:
        return f"dw-strip-{kernel[0]}x1"
    return "dw" + "x".join(str(k) for k in kernel)


def _is_conv(base: str) -> bool:
    if "transpose" in base or "backward" in base or "conv_tbc" in base:
        return False
    return base.startswith(("conv", "_conv", "mkldnn_conv", "cudnn_conv", "miopen_conv", "_slow_conv", "slow_conv",
                            "thnn_conv", "_nnpack_spatial_conv", "_mps_conv")) or base == "_convolution"


def _is_attention(base: str) -> bool:
    return "scaled_dot_product" in base or base in (
        "_flash_attention_forward", "_efficient_attention_forward", "_native_multi_head_attention",
        "multi_head_attention_forward", "_fused_sdp_choice", "_cudnn_attention_forward")


def classify_aten(name: str, shapes: Sequence[Sequence[int]] | None = None) -> str:
    """The kind of one aten op call: `name` as the profiler or dispatcher spells it, `shapes` its inputs' shapes
    (torch.profiler's `input_shapes`: one list per argument, [] for non-tensors). Only convolutions read shapes."""
    base = op_base(name)
    if _is_conv(base):
        shapes = list(shapes or [])
        return conv_kind(shapes[0] if shapes else None, shapes[1] if len(shapes) > 1 else None)
    if _is_attention(base):
        return "attention"
    for table, kind in ((_MATMUL, "matmul"), (_SOFTMAX, "softmax"), (_NORM, "norm"), (_LAYOUT, "layout"),
                        (_ELEMENTWISE, "elementwise"), (_REDUCTION, "reduction")):
        if base in table:
            return kind
    if base.startswith(("upsample", "_upsample", "grid_sampler", "affine_grid", "interpolate")):
        return "resize"
    return "other"


def is_kind(kind: str) -> bool:
    """True for a name of the table or a depthwise kind named by its size."""
    return kind in OP_KINDS or bool(_DW.match(kind))


def is_depthwise(kind: str) -> bool:
    return kind.startswith("dw")


def kind_order(kind: str) -> tuple[int, int, str]:
    """Sort key: the table's order; depthwise sizes not in the table right after dw21, by kernel then name."""
    if kind in OP_KINDS:
        return (OP_KINDS.index(kind), 0, "")
    if _DW.match(kind):
        size = max(int(d) for d in re.findall(r"\d+", kind))
        return (OP_KINDS.index("dw21"), size, kind)
    return (len(OP_KINDS), 0, kind)


def fused_kind(kinds: Sequence[str]) -> str:
    """The kind of a unit that fuses ops of these kinds (first by `_FUSED_PRIORITY`; convs and depthwise convs
    count as "conv", and among several convs the first given wins)."""
    def family(k: str) -> str:
        return "conv" if k.startswith(("conv", "dw")) else k

    for fam in _FUSED_PRIORITY:
        for k in kinds:
            if family(k) == fam:
                return k
    return kinds[0] if kinds else "other"
