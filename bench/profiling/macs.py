"""MACs and bytes per op kind: one forward under a TorchDispatchMode that mirrors FlopCounterMode.

MACs: the formulas FlopCounterMode uses (torch.utils.flop_counter's registry plus models.complexity's rule for
the CPU flash-attention kernel), applied the way FlopCounterMode applies them (every call is first offered to
its CompositeImplicit decomposition; a call that does not decompose is run and counted by its op), so the MACs
of every kind sum to `models.complexity.count_model_macs` exactly. MACs = FLOPs / 2.

Attribution (the same rule as the profiler's, bench.profiling.torch_events): the calls a call decomposes into
belong to the *unit* of their outermost classifiable ancestor (the outermost call whose kind is not "other"):
conv2d -> convolution, matmul -> reshape + bmm, scaled_dot_product_attention -> its math path on the meta
device. A unit's kind is its outermost call's kind; its MACs are the sum of its leaves'.

Bytes (a lower bound, "compulsory traffic"): per unit, the tensors its outermost non-view call reads plus the
tensors it writes, each counted once at its full size (numel x element size), so intermediates inside a fused
kernel, cache misses and re-reads (a conv reading its input once per output-channel block) are not counted. View
calls (reshape that aliases, transpose, chunk, to without a cast) move nothing; a view that copies (reshape of a
non-contiguous tensor) is charged through the copy it decomposes into. An argument the op only writes (copy_'s
destination, fill_, out=) is not also counted as read. An "other" unit that holds classified units inside is
charged nothing itself (its traffic is theirs).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from bench.profiling.modules import ROOT, Group, hooked
from bench.profiling.opkinds import classify_aten, op_base
from models.complexity import EXTRA_FLOP_RULES

_WRITE_ONLY = {"copy", "fill", "zero", "resize", "set", "normal", "uniform", "random", "bernoulli", "exponential"}


@dataclass
class OpCost:
    """One unit of the counted forward: its op (outermost call), kind, module group, MACs and bytes."""
    op: str
    kind: str
    module: str
    shapes: str
    macs: int = 0
    bytes: int = 0


def shapes_key(shapes: list[list[int]]) -> str:
    """The tensor shapes of a call as one string, non-tensor arguments left out: the join key between a profiler
    event (`input_shapes`) and a counted call, which list their non-tensor arguments differently."""
    return ", ".join(str(list(s)) for s in shapes if s)


def _arg_shapes(args: tuple) -> list[list[int]]:
    return [list(a.shape) if isinstance(a, torch.Tensor) else [] for a in args]


def _nbytes(values: Any) -> int:
    flat, _ = tree_flatten(values)
    return sum(t.numel() * t.element_size() for t in flat if isinstance(t, torch.Tensor))


def _call_bytes(func: Any, args: tuple, kwargs: dict, out: Any) -> int:
    """Inputs read + outputs written of one call (see the module docstring)."""
    written = set()
    for i, a in enumerate(func._schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            written.add(a.name if a.kwarg_only else i)
    write_only = op_base(func.name()) in _WRITE_ONLY
    reads = [a for i, a in enumerate(args) if not (i in written and (write_only or i > 0))]
    reads += [v for k, v in kwargs.items() if k not in written]
    return _nbytes(reads) + _nbytes(out)


@dataclass
class _Frame:
    unit: OpCost  # the unit this call belongs to
    owns_bytes: bool  # this call is its unit's outermost non-view call
    nested_units: int = 0


class KindCounter(TorchDispatchMode):
    """Counts MACs and bytes per unit (see the module docstring); `costs` is the list of units in call order."""

    def __init__(self, module_of: Callable[[], str] = lambda: ROOT) -> None:
        super().__init__()
        self.registry = FlopCounterMode(display=False, custom_mapping=_extra_rules()).flop_registry
        self.module_of = module_of
        self.costs: list[OpCost] = []
        self._stack: list[_Frame] = []

    def _frame(self, func: Any, args: tuple) -> _Frame:
        shapes = _arg_shapes(args)
        kind = classify_aten(func.name(), shapes)
        inherited = self._stack[-1].unit if self._stack else None
        if inherited is not None and (inherited.kind != "other" or kind == "other"):
            unit = inherited  # inside a classified unit, or "other" inside "other"
        else:
            unit = OpCost(op_base(func.name()), kind, self.module_of(), shapes_key(shapes))
            self.costs.append(unit)
            for f in self._stack:
                f.nested_units += 1
        taken = any(f.unit is unit and f.owns_bytes for f in self._stack)
        return _Frame(unit, owns_bytes=not taken and not func.is_view)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        frame = self._frame(func, args)
        self._stack.append(frame)
        try:
            out = NotImplemented
            if func is not torch.ops.prim.device.default:
                with self:
                    out = func.decompose(*args, **kwargs)
            if out is NotImplemented:
                out = func(*args, **kwargs)
                count = self.registry.get(func._overloadpacket)
                if count is not None:
                    frame.unit.macs += count(*args, **kwargs, out_val=out) // 2
        finally:
            self._stack.pop()
        if frame.owns_bytes and not (frame.unit.kind == "other" and frame.nested_units):
            frame.unit.bytes += _call_bytes(func, args, kwargs, out)
        return out


def _extra_rules() -> dict:
    # the rule the suite's MAC count adds (CPU flash attention): one source of truth with models.complexity
    return dict(EXTRA_FLOP_RULES)


def count_costs(model: nn.Module, example: torch.Tensor, groups: dict[str, Group] | None = None,
                context: Callable[[], Any] | None = None) -> list[OpCost]:
    """The units of one forward of `model` on `example` (any device, meta included), with module groups.

    `context` (a zero-argument factory of a context manager, e.g. autocast) wraps the forward, so dtypes and
    kernels are those of the profiled run. Runs under inference_mode, as the eager backend does.
    """
    stack: list[str] = []
    counter = KindCounter(lambda: stack[-1] if stack else ROOT)
    ctx = context() if context else contextlib.nullcontext()
    with hooked(model, groups or {}, stack.append, lambda p: stack.pop()), torch.inference_mode(), ctx, counter:
        model(example)
    return counter.costs


def total_macs(costs: list[OpCost]) -> int:
    return sum(c.macs for c in costs)


@dataclass
class KindTotals:
    """MACs, bytes and units of one kind (a small summary without pandas)."""
    macs: int = 0
    bytes: int = 0
    units: int = 0
    ops: set[str] = field(default_factory=set)


def totals_by_kind(costs: list[OpCost]) -> dict[str, KindTotals]:
    out: dict[str, KindTotals] = {}
    for c in costs:
        t = out.setdefault(c.kind, KindTotals())
        t.macs += c.macs
        t.bytes += c.bytes
        t.units += 1
        t.ops.add(c.op)
    return out
