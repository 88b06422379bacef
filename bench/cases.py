"""The case matrix, and the one place a case is named.

A case is model x resolution x device x backend x precision x batch x threads (+ layout flags). `Case` is frozen:
the runner derives the per-process version of a case with `dataclasses.replace`, never by mutation. It crosses the
process boundary as JSON (`to_spec` / `from_spec`, which checks every field's type), so the child works with the
same typed record as the parent.

Naming: `IDENTITY` are the columns that identify a case (two rows with equal identity measure the same thing:
`--resume`, `compare` and the report match on them); `SETTING` is the device setting part of it (everything but
the model and the resolution: one curve of a plot, one gate group). `case_key` (stable id, the `case_id` column),
`case_label` and `setting_label` (human labels) are the only formatters of a case; every table, log line and
report uses them. Nothing here imports torch or pandas.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Mapping

from bench.errors import BenchInputError

# device_name rather than device, so that cuda:0 on two hosts with different GPUs is not silently compared
IDENTITY = ("model", "level", "height", "width", "device_name", "backend", "precision", "batch", "threads",
            "channels_last", "folded")
SETTING = ("device_name", "backend", "precision", "batch", "threads", "channels_last", "folded")
LEVELS = ("model", "block", "both")
DEFAULT_MODELS = ("evit-b1:msla", "evit-b1:relu-linear", "evit-b1:softmax", "evit-b1:large-kernel")


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
    # per-process settings, not identity: calibrated peak, workdir, fault injection, min_samples
    extra: Mapping[str, Any] = field(default_factory=dict)

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
        from bench.env.machine import usable_cpus

        return self.threads / usable_cpus()

    def to_spec(self) -> dict[str, Any]:
        spec = asdict(self)
        spec["extra"] = dict(self.extra)
        return spec

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "Case":
        """The case from its JSON form; unknown keys are ignored, a wrongly typed field raises CaseError."""
        known = {f.name: f for f in fields(cls)}
        kw = {k: v for k, v in spec.items() if k in known}
        for name, value in kw.items():
            kw[name] = _coerce(name, str(known[name].type), value)
        try:
            return cls(**kw)
        except TypeError as e:
            raise CaseError(f"case spec: {e}") from None


def _coerce(name: str, type_name: str, value: Any) -> Any:
    if value is None and "None" in type_name:
        return None
    want = {"str": str, "int": int, "float": float, "bool": bool}.get(type_name.split(" ")[0].split("|")[0])
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is not None and not (isinstance(value, want) and (want is not int or not isinstance(value, bool))):
        raise CaseError(f"case spec: {name} = {value!r} is not {want.__name__}")
    if type_name.startswith("Mapping") and not isinstance(value, Mapping):
        raise CaseError(f"case spec: {name} = {value!r} is not a mapping")
    return value


# ---------------------------------------------------------------------------------------------------------------
# parsing matrix options

_RES = re.compile(r"^\s*(-?\d+)\s*(?:[xX*]\s*(-?\d+)\s*)?$")


MAX_SIDE = 32768  # pixels per side: 8x the largest published setting; beyond it no tensor index fits a real device


def parse_resolution(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '1024x2048' -> (height 1024, width 2048)."""
    m = _RES.match(text)
    if not m:
        raise CaseError(f"--res: malformed resolution {text!r}; accepted: N (square) or HxW, e.g. 512,1024,1024x2048")
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) is not None else h
    if h <= 0 or w <= 0:
        raise CaseError(f"--res: resolution {text!r} is not positive; accepted: N or HxW with N, H, W > 0")
    if max(h, w) > MAX_SIDE:
        raise CaseError(f"--res: resolution {text!r} is too large; accepted: sides up to {MAX_SIDE}")
    return h, w


def parse_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",")]
    if not any(items):
        raise CaseError(f"{what}: empty list; accepted: one value or a comma list (see --help)")
    if not all(items):
        raise CaseError(f"{what}: an empty item in {text!r}; accepted: a comma list without empty items")
    return items


def parse_ints(text: str, what: str, minimum: int = 1) -> list[int]:
    out = []
    for t in parse_list(text, what):
        try:
            v = int(t)
        except ValueError:
            raise CaseError(f"{what}: {t!r} is not an integer; accepted: comma list of integers >= {minimum}") from None
        if v < minimum:
            raise CaseError(f"{what}: {v} is below {minimum}; accepted: comma list of integers >= {minimum}")
        out.append(v)
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------------------------
# the matrix


def select_models(specs: Iterable[str] | None, level: str) -> list[str]:
    """Registry names for --models/--level.

    No --models: the four EfficientViT-B1 variants (level model) and the four mixers alone (level block).
    With --models: names/families/patterns from the registry; `--level block` turns a model into its mixer's block
    (`block:<mixer>`) and `--level both` adds that block after the model where one exists.
    """
    from models.registry import UnknownModelError, get_model_info, list_models, resolve_models

    if level not in LEVELS:
        raise CaseError(f"--level: {level!r} is not accepted; accepted: {', '.join(LEVELS)}")
    try:
        names = resolve_models(list(specs)) if specs else list(DEFAULT_MODELS)
    except UnknownModelError as e:
        raise CaseError(f"--models: {e}") from None
    blocks = set(list_models("block"))
    out: list[str] = []
    for n in names:
        info = get_model_info(n)
        if info.family == "block":
            if level in ("block", "both"):
                out.append(n)
            continue
        if level in ("model", "both"):
            out.append(n)
        if level in ("block", "both") and f"block:{info.mixer}" in blocks:
            out.append(f"block:{info.mixer}")
    out = list(dict.fromkeys(out))
    if not out:
        raise CaseError(f"--models/--level: no model left at level {level!r} from {', '.join(names)}")
    # models first, then blocks, each in the order given
    return [n for n in out if not n.startswith("block:")] + [n for n in out if n.startswith("block:")]


def expand(models: list[str], resolutions: list[tuple[int, int]], devices: list[tuple[str, str]],
           backends: list[str], precisions: dict[str, list[str]], batches: list[int], threads: list[int],
           channels_last: bool = False, fold: bool = False, seed: int = 0, min_time_s: float = 0.5,
           max_time_s: float = 5.0, timeout_s: float = 600.0, own_size: bool = False) -> list[Case]:
    """All cases, ordered so that the mixers of one resolution run back to back (A/B pairs close in time).

    devices: (device, device_name); precisions: device type -> precisions; threads apply to CPU (CUDA rows: 0);
    own_size: each model only at its own input size among `resolutions` (--res own).
    """
    from models.registry import get_model_info

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
