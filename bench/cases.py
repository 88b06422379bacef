"""The case matrix, and the one place a case is named.

A case is model x resolution x device x backend x precision x batch x threads (+ layout flags). `Case` is frozen:
the runner derives the per-process version of a case with `dataclasses.replace`, never by mutation. It crosses the
process boundary as JSON (`to_spec` / `from_spec`, which checks every field's type, its `ProcessSettings`
included), so the child works with the same typed record as the parent.

Naming: `IDENTITY` are the columns that identify a case (two rows with equal identity measure the same thing:
`--resume`, `compare` and the report match on them); `SETTING` is the device setting part of it (everything but
the model and the resolution: one curve of a plot, one gate group). `case_key` (stable id, the `case_id` column),
`case_label` and `setting_label` (human labels) are the only formatters of a case; every table, log line and
report uses them. `expand` makes the matrix from typed values; what the user typed (comma lists, HxW, model
patterns, --level) is parsed into those values by bench.plan. Nothing here imports torch or pandas.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from bench.env.machine import usable_cpus
from bench.errors import BenchInputError

# device_name rather than device, so that cuda:0 on two hosts with different GPUs is not silently compared
IDENTITY = ("model", "level", "height", "width", "device_name", "backend", "precision", "batch", "threads",
            "channels_last", "folded")
SETTING = ("device_name", "backend", "precision", "batch", "threads", "channels_last", "folded")


class CaseError(BenchInputError):
    """Bad matrix input; the message is one line for users."""


# ---------------------------------------------------------------------------------------------------------------
# formatting a case: key and labels


def _value(row: Mapping[str, Any], key: str) -> Any:
    """row[key] with pandas' missing values (None, NaN, NA) as None, without importing pandas."""
    v = row.get(key) if hasattr(row, "get") else None
    if v is None or (isinstance(v, float) and math.isnan(v)) or type(v).__name__ in ("NAType", "NaTType"):
        return None
    return v


def _int(row: Mapping[str, Any], key: str) -> int | None:
    v = _value(row, key)
    return None if v is None else int(v)


def _layout(row: Mapping[str, Any]) -> str:
    return ("+cl" if _value(row, "channels_last") else "") + ("+fold" if _value(row, "folded") else "")


def _res(row: Mapping[str, Any]) -> str:
    h, w = _int(row, "height"), _int(row, "width")
    return f"{'?' if h is None else h}x{'?' if w is None else w}"


def case_key(row: Mapping[str, Any]) -> str:
    """The stable, human-readable id of a case (the `case_id` column) from its identity columns."""
    return (f"{row['model']}|{row['level']}|{_res(row)}|{row['device_name']}|{row['backend']}{_layout(row)}|"
            f"{row['precision']}|b{_int(row, 'batch')}|t{_int(row, 'threads')}")


def setting_label(row: Mapping[str, Any], device: str | None = "device_name") -> str:
    """'<device> eager+cl fp32 b1 t2': a device setting (threads omitted where 0, i.e. CUDA). `device` names the
    column that names the device (device_name, device, or a report's device_key); None leaves it out."""
    parts = [str(_value(row, device) or "?")] if device else []
    parts += [f"{_value(row, 'backend') or '?'}{_layout(row)}", str(_value(row, "precision") or "?")]
    batch, threads = _int(row, "batch"), _int(row, "threads")
    if batch is not None:
        parts.append(f"b{batch}")
    if threads:
        parts.append(f"t{threads}")
    return " ".join(parts)


def case_label(row: Mapping[str, Any], device: str | None = None) -> str:
    """'evit-b1:msla 512x512 eager fp32 b1 t2': model, resolution and setting (device left out by default,
    since tables show it in a column of its own)."""
    return f"{_value(row, 'model') or '?'} {_res(row)} {setting_label(row, device)}"


def base_name(model: Any) -> str:
    """The model size a mixer is swapped in: `evit-b1:msla` -> `evit-b1`, `block:softmax` -> `block`; a name
    without ':' (a reference model, a user's model) is its own."""
    m = "" if model is None else str(model)
    return m.rsplit(":", 1)[0] if ":" in m else m


def group_key(row: Mapping[str, Any]) -> str:
    """The decision group of a case: level, model size (base_name), resolution and device setting. The cases of
    one group are what a design review compares (the four mixers of evit-b1 at 2048 on one setting; users' models
    named `mine:a`, `mine:b` form a group of their own), and the interleaved design measures them in the same
    processes."""
    return (f"{_value(row, 'level')}|{base_name(_value(row, 'model'))}|{_res(row)}|{_value(row, 'device_name')}|"
            f"{_value(row, 'backend')}{_layout(row)}|{_value(row, 'precision')}|b{_int(row, 'batch')}|"
            f"t{_int(row, 'threads')}")


# ---------------------------------------------------------------------------------------------------------------
# the case record


@dataclass(frozen=True)
class ProcessSettings:
    """How one process of a case runs it, besides the case itself (not identity): set per process by the runner
    (bench.runner.Runner.process_case), read by the child; frozen and typed like the case it travels with."""

    device_peak_gmacs_per_s: float | None = None  # the device setting's calibrated peak (frac_of_peak)
    bandwidth_gb_per_s: float | None = None  # its triad bandwidth (the profile's roofline, --profile)
    workdir: str | None = None  # the run's scratch folder (None: the system's temporary folder)
    numerics64: bool = True  # this process also measures eager fp32's numerics against a float64 forward
    profile: bool = False  # a profiled pass after the timed one (--profile, first process)
    trace_path: str | None = None  # where that pass writes its trace
    fault: str | None = None  # test-only fault injection (DENSEBENCH_FAULT, bench.launch.faults)
    min_samples: int = 10  # the timer's fewest samples (tests lower it)
    fleet_class: tuple[str, ...] = ()  # the device class a fleet plan gave the case (bench.fleet.placement)

    def to_spec(self) -> dict[str, Any]:
        return {**asdict(self), "fleet_class": list(self.fleet_class)}

    @classmethod
    def from_spec(cls, spec: Any) -> "ProcessSettings":
        if not isinstance(spec, Mapping):
            raise CaseError(f"case spec: settings = {spec!r} is not a mapping")
        return _typed(cls, spec, "settings.")


@dataclass(frozen=True)
class Case:
    model: str
    family: str
    variant: str
    level: str  # model | block
    device: str  # cpu, cuda:0
    device_name: str
    backend: str
    precision: str
    batch: int
    threads: int  # 0 where not applicable (CUDA)
    height: int
    width: int
    tokens: int
    channels_last: bool = False
    folded: bool = False
    seed: int = 0
    min_time_s: float = 0.5
    max_time_s: float = 5.0
    timeout_s: float = 600.0
    macs: int | None = None  # meta-device count, filled by the runner
    settings: ProcessSettings = field(default_factory=ProcessSettings)  # per process, not identity

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    @property
    def case_id(self) -> str:
        return case_key(self.identity())

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in IDENTITY}

    def label(self) -> str:
        """Progress-bar label: the case with its device as asked (cpu, cuda:0)."""
        return case_label(self.as_row(), device="device")

    def as_row(self) -> dict[str, Any]:
        """The descriptive columns of this case's results row (the parent's word on identity)."""
        keys = ("model", "family", "variant", "level", "device", "device_name", "backend", "precision", "batch",
                "threads", "height", "width", "tokens", "channels_last", "folded", "seed")
        row = {k: getattr(self, k) for k in keys}
        row["case_id"] = self.case_id
        row["cpu_oversubscription"] = self.cpu_oversubscription()
        if self.macs is not None:
            row["macs"] = self.macs
        return row

    def cpu_oversubscription(self) -> float | None:
        """threads / the CPUs this process may use now (children inherit its affinity); above 1 the case times
        contention. None for a device without a thread count (CUDA)."""
        if self.device_type != "cpu" or self.threads <= 0:
            return None
        return self.threads / usable_cpus()

    def to_spec(self) -> dict[str, Any]:
        return {**asdict(self), "settings": self.settings.to_spec()}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "Case":
        """The case from its JSON form; unknown keys are ignored, a wrongly typed field raises CaseError."""
        return _typed(cls, spec)


def _typed(cls: Any, spec: Mapping[str, Any], prefix: str = "") -> Any:
    """A Case or ProcessSettings from its JSON form, every known field's type checked (CaseError)."""
    known = {f.name: f for f in fields(cls)}
    kw = {k: _coerce(prefix + k, str(known[k].type), v) for k, v in spec.items() if k in known}
    try:
        return cls(**kw)
    except TypeError as e:
        raise CaseError(f"case spec: {e}") from None


def _coerce(name: str, type_name: str, value: Any) -> Any:
    if value is None and "None" in type_name:
        return None
    if type_name == "ProcessSettings":
        return ProcessSettings.from_spec(value)
    if type_name.startswith("tuple[str"):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise CaseError(f"case spec: {name} = {value!r} is not a list of str")
        return tuple(value)
    want = {"str": str, "int": int, "float": float, "bool": bool}.get(type_name.split(" ")[0].split("|")[0])
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is not None and not (isinstance(value, want) and (want is not int or not isinstance(value, bool))):
        raise CaseError(f"case spec: {name} = {value!r} is not {want.__name__}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# the matrix


def expand(models: list[str], resolutions: list[tuple[int, int]], devices: list[tuple[str, str]],
           backends: list[str], precisions: dict[str, list[str]], batches: list[int], threads: list[int],
           channels_last: bool = False, fold: bool = False, seed: int = 0, min_time_s: float = 0.5,
           max_time_s: float = 5.0, timeout_s: float = 600.0, own_size: bool = False) -> list[Case]:
    """All cases, ordered so that the mixers of one resolution run back to back (A/B pairs close in time).

    devices: (device, device_name); precisions: device type -> precisions; threads apply to CPU (CUDA rows: 0);
    own_size: each model only at its own input size among `resolutions` (--res own).
    """
    from models.registry import get_model_info  # torch: the parent's planning only, never a case's reader

    cases: dict[str, Case] = {}
    for dev, dev_name in devices:
        dtype = dev.split(":")[0]
        for thr in (threads if dtype == "cpu" else [0]):
            for backend in backends:
                for prec in precisions[dtype]:
                    for batch in batches:
                        for h, w in resolutions:
                            for name in models:
                                info = get_model_info(name)
                                if own_size and (h, w) != tuple(info.input_size):
                                    continue
                                c = Case(model=name, family=info.family, variant=info.mixer,
                                         level="block" if info.family == "block" else "model", device=dev,
                                         device_name=dev_name, backend=backend, precision=prec, batch=batch,
                                         threads=thr, height=h, width=w, tokens=info.tokens(h, w),
                                         channels_last=channels_last, folded=fold, seed=seed,
                                         min_time_s=min_time_s, max_time_s=max_time_s, timeout_s=timeout_s)
                                cases.setdefault(c.case_id, c)
    return list(cases.values())
