"""Where the time goes in an ExecuTorch program: its ETDump, read through executorch.devtools.Inspector -> OpTime
units in the same kinds as the other sources.

The program is lowered as the executorch backend lowers it (bench.backends.executorch.lower), loaded with ETDump
on, run `warmup + iters` times, and the ETDump written with `Program.write_etdump_result_to_file`. Its "Execute"
block holds one Event per instruction with one duration per run (`perf_data.raw`, milliseconds); the first
`warmup` runs are dropped. The events, in the order the runtime wrote them (an event is written when it ends,
so nested events come before the one that encloses them):

- XNNPACK's own operator events (`is_delegated_op`), e.g. "Convolution (NHWC, F32) IGEMM #1": the pip wheel's
  delegate profiles each XNNPACK operator, so time is per operator, not per delegate call. A name carries the
  operator type and datatype (F32, QS8/QC8 for int8) but no shapes; the MAC-carrying ones (Convolution,
  Fully Connected, Batch Matrix Multiply) are matched IN ORDER with the delegate's MAC-carrying edge nodes
  (bench.backends.graph_counts.delegate_mac_nodes) when their counts agree, which gives them the conv kind of
  their node (a 1x1 conv that XNNPACK runs as Fully Connected is conv-1x1, MSLA's 5x5 depthwise aggregation dw5)
  and its module; otherwise the kind comes from the operator name (conv-unknown for a convolution).
- DELEGATE_CALL: the delegate call enclosing them; its time beyond its operators' is "framework" (op "XNNPACK
  delegate (outside its operators)"). A delegate call without operator events (a runtime built without XNNPACK
  profiling) is one honest unit named for the delegate, kind "other", and the profile info says so.
- native_call_<op>.out: a portable (or optimized) kernel, classified with classify_aten (the edge dialect's
  `_copy` variants as their view op); OPERATOR_CALL encloses it, the difference is "framework" dispatch.
- Method::execute: the whole run; what no instruction covers is "framework" too, so the kinds sum to it.

An ETDump with no execution events (written before any run, or from a runtime built without event tracing) is a
failed profile (`EmptyEtdump`), never zero time.
"""
from __future__ import annotations

import contextlib
import io
import pathlib
import re
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from bench.backends.executorch import load, lower, set_threads
from bench.backends.graph_counts import MacNode
from bench.profiling.modules import ROOT, Group, group_of
from bench.profiling.opkinds import classify_aten
from bench.profiling.torch_events import OpTime

EXECUTE = "Method::execute"
DELEGATE_CALL = "DELEGATE_CALL"
OPERATOR_CALL = "OPERATOR_CALL"
NATIVE = "native_call_"
DELEGATE_REST = "XNNPACK delegate (outside its operators)"
DISPATCH = "ExecuTorch operator dispatch"
BETWEEN = "ExecuTorch method (between instructions)"
_NUMBER = re.compile(r"\s*#\d+$")
_MAC_OPS = ("Convolution", "Deconvolution", "Fully Connected", "Dynamic Fully Connected", "Batch Matrix Multiply")
_XNN_KINDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("Fully Connected", "Dynamic Fully Connected", "Batch Matrix Multiply"), "matmul"),
    (("Convolution", "Deconvolution"), "conv-unknown"),
    (("Softmax",), "softmax"),
    (("Resize",), "resize"),
    (("Mean", "Sum", "Max Pooling", "Average Pooling", "Global Average Pooling", "Global Sum Pooling",
      "ArgMax Pooling", "Reduce"), "reduction"),
    (("Transpose", "Static Reshape", "Copy", "Slice", "Static Slice", "Constant Pad", "Concatenate", "Even Split",
      "Convert", "Depth To Space", "Space To Depth", "Static Transpose"), "layout"),
    (("Add", "Subtract", "Multiply", "Divide", "Clamp", "ReLU", "HardSwish", "Sigmoid", "Tanh", "ELU", "GELU",
      "Leaky ReLU", "Square Root", "Reciprocal Square Root", "Square", "Negate", "Abs", "Exp", "Log", "Maximum",
      "Minimum", "Squared Difference", "Floor", "Ceiling", "Bankers Rounding", "Copysign", "Sine", "Cosine",
      "Power", "PReLU"), "elementwise"),
)


class EmptyEtdump(RuntimeError):
    """The ETDump holds no execution events: the profile failed (it is not zero time)."""


def xnnpack_op(name: str) -> str:
    """'Convolution (NHWC, F32) IGEMM #1' -> 'Convolution (NHWC, F32) IGEMM' (the instance number dropped)."""
    return _NUMBER.sub("", name).strip()


def classify_xnnpack(name: str) -> str:
    """The kind of an XNNPACK operator from its name (convolutions: conv-unknown, the name has no geometry)."""
    for prefixes, kind in _XNN_KINDS:
        if name.startswith(prefixes):
            return kind
    return "other"


def native_op(name: str) -> str:
    """'native_call_expand_copy.out' -> 'expand_copy'; 'native_call_mul.Scalar_out' -> 'mul'."""
    return name[len(NATIVE):].split(".")[0] if name.startswith(NATIVE) else name


def classify_native(op: str) -> str:
    """A portable kernel's kind: the edge dialect's copying views (expand_copy, _clone_dim_order) as their view."""
    if op == "_clone_dim_order":
        return "layout"
    kind = classify_aten(op)
    return classify_aten(op.removesuffix("_copy")) if kind == "other" and op.endswith("_copy") else kind


def read_events(path: str | pathlib.Path) -> list[Any]:
    """The Inspector's events of the Execute block(s) of an ETDump file; EmptyEtdump when there are none."""
    from executorch.devtools import Inspector  # the optional extra

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # "Output Buffer not found": no debug buffer is asked for
            blocks = Inspector(etdump_path=str(path)).event_blocks
    except Exception as e:  # noqa: BLE001 - an unreadable ETDump is a failed profile, said in one line
        raise EmptyEtdump(f"ETDump {pathlib.Path(path).name} could not be read ({type(e).__name__}): no profile") from e
    events = [e for b in blocks if any(ev.name == EXECUTE for ev in b.events) for e in b.events]
    if not any(e.name == EXECUTE and _raw(e) for e in events):
        raise EmptyEtdump(f"ETDump {pathlib.Path(path).name} holds no execution events (no Method::execute): "
                          "an empty profile is a failure, not zero time")
    return events


def _raw(event: Any) -> list[float]:
    perf = getattr(event, "perf_data", None)
    return [float(v) for v in (perf.raw if perf is not None else [])]


@dataclass
class _Delegate:
    """One delegate call's operator events (in order) and the MAC-carrying nodes they may be matched with."""
    events: list[Any]
    nodes: list[MacNode]


class _Units:
    """OpTime units keyed by (op, kind, module) (no shapes: XNNPACK names carry none), times summed over the kept runs (microseconds)."""

    def __init__(self, skip: int) -> None:
        self.skip = skip
        self.units: dict[tuple[str, str, str, str], OpTime] = {}

    def us(self, event: Any) -> float:
        return sum(_raw(event)[self.skip:]) * 1e3

    def add(self, op: str, kind: str, us: float, calls: int, module: str = ROOT) -> None:
        unit = self.units.setdefault((op, kind, module, ""), OpTime(op, kind, module, ""))
        unit.time_us += max(0.0, us)
        unit.host_us += max(0.0, us)
        unit.calls += calls


def _delegate_units(units: _Units, d: _Delegate, runs: int, groups: dict[str, Group]) -> tuple[float, bool]:
    """Units of one delegate call's operators; (their summed time, whether MAC events matched their nodes)."""
    mac_events = [e for e in d.events if xnnpack_op(e.name).startswith(_MAC_OPS)]
    matched = bool(mac_events) and len(mac_events) == len(d.nodes)
    nodes = iter(d.nodes)
    total = 0.0
    for e in d.events:
        op, us = xnnpack_op(e.name), units.us(e)
        total += us
        kind, module = classify_xnnpack(op), ROOT
        if matched and op.startswith(_MAC_OPS):
            node = next(nodes)
            kind = node.kind
            module = group_of(node.module, groups) if node.module and groups else (node.module or ROOT)
        units.add(op, kind, us, runs, module)
    return total, matched or not mac_events


def parse_events(events: Sequence[Any], *, skip_runs: int = 0, mac_nodes: Iterable[list[MacNode]] = (),
                 groups: dict[str, Group] | None = None) -> tuple[list[OpTime], int, dict]:
    """(units, runs counted, info) from the Inspector's Execute events; see the module docstring for the rule."""
    runs = max((len(_raw(e)) for e in events if e.name == EXECUTE), default=0) - skip_runs
    if runs <= 0:
        raise EmptyEtdump(f"ETDump holds {runs + skip_runs} run(s), {skip_runs} of them warm-up: nothing to profile")
    units, nodes = _Units(skip_runs), list(mac_nodes)
    pending: list[Any] = []
    native: list[Any] = []
    calls = {"delegate": 0, "delegate_events": 0, "unmatched": 0, "instructions_us": 0.0}
    execute_us = 0.0
    for e in events:
        if e.is_delegated_op:
            pending.append(e)
        elif e.name.startswith(NATIVE):
            native.append(e)
        elif e.name == DELEGATE_CALL:
            _close_delegate(units, e, pending, nodes, calls, runs, groups or {})
            pending = []
        elif e.name == OPERATOR_CALL:
            inner = sum(units.us(n) for n in native)
            for n in native:
                op = native_op(n.name)
                units.add(op, classify_native(op), units.us(n), runs)
            units.add(DISPATCH, "framework", units.us(e) - inner, 0)
            calls["instructions_us"] += units.us(e)
            native = []
        elif e.name == EXECUTE:
            units.add(BETWEEN, "framework", units.us(e) - calls["instructions_us"], 0)
            execute_us = units.us(e)
        elif _raw(e):
            units.add(e.name, "other", units.us(e), runs)
            calls["instructions_us"] += units.us(e)
    info = {"runs": runs, "delegate_calls": calls["delegate"], "delegate_events": calls["delegate_events"],
            "execute_ms_per_run": round(execute_us / 1e3 / runs, 6),
            "delegate_profile": ("per XNNPACK operator" if calls["delegate_events"] else
                                 "one event per delegate call (the runtime does not profile XNNPACK's operators)"),
            "delegates_matched": f"{calls['delegate'] - calls['unmatched']}/{calls['delegate']} delegate calls: "
                                 "MAC-carrying operators matched in order with their edge nodes"}
    return list(units.units.values()), runs, info


def _close_delegate(units: _Units, call: Any, pending: list[Any], nodes: list[list[MacNode]], calls: dict,
                    runs: int, groups: dict[str, Group]) -> None:
    index = calls["delegate"]
    d = _Delegate(pending, nodes[index] if index < len(nodes) else [])
    calls["delegate"] += 1
    calls["delegate_events"] += len(pending)
    call_us = units.us(call)
    calls["instructions_us"] += call_us
    if not pending:
        units.add(f"XNNPACK delegate call {index}", "other", call_us, runs)
        return
    inner, matched = _delegate_units(units, d, runs, groups)
    calls["unmatched"] += 0 if matched else 1
    units.add(DELEGATE_REST, "framework", call_us - inner, 0)


def profile_executorch(model: Any, x: Any, *, precision: str, workdir: pathlib.Path, threads: int, iters: int,
                       warmup: int, groups: dict[str, Group] | None = None) -> tuple[list[OpTime], int, dict]:
    """Lower `model` as the executorch backend does, run it `warmup + iters` times with ETDump on, and read the
    ETDump back: (units summed over `iters` runs, iters, info)."""
    workdir.mkdir(parents=True, exist_ok=True)
    threads = set_threads(threads)
    x = x.detach().contiguous()
    lowered = lower(model.eval(), x, precision)
    pte = workdir / f"executorch_{precision}_profile.pte"
    pte.write_bytes(lowered.pte)
    program, method = load(pte, etdump=True)
    for _ in range(warmup + iters):
        method.execute([x])
    etdump = workdir / f"executorch_{precision}.etdp"
    program.write_etdump_result_to_file(str(etdump), str(workdir / f"executorch_{precision}.debug.bin"))
    ops, runs, info = parse_events(read_events(etdump), skip_runs=warmup, mac_nodes=lowered.mac_nodes,
                                   groups=groups)
    info.update({"threads": threads, "precision": precision, "etdump": str(etdump),
                 "delegation": lowered.delegation.as_info()})
    return ops, runs, info
