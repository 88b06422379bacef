"""The case matrix: model x resolution x device x backend x precision x batch x threads (+ layout flags).

A `Case` is a plain dataclass that travels to the child process as JSON (`to_spec` / `from_spec`). Its identity
columns match `bench.schema.IDENTITY`, so `case_id` (= `schema.case_key`) is what `--resume` and `compare` match on.
Nothing here imports torch or pandas.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Iterable

from bench.schema import case_key

VARIANT_MIXERS = ("msla", "relu-linear", "softmax", "large-kernel")
DEFAULT_MODELS = tuple(f"evit-b1:{m}" for m in VARIANT_MIXERS)
LEVELS = ("model", "block", "both")


class CaseError(ValueError):
    """Bad matrix input; the message is one line for users."""


@dataclass
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
    macs: int | None = None  # filled by the runner (meta-device count, cached across cases)
    extra: dict = field(default_factory=dict)  # calibration, workdir, fault injection... (not identity)

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    @property
    def case_id(self) -> str:
        return case_key(self.identity())

    def identity(self) -> dict:
        return {"model": self.model, "level": self.level, "height": self.height, "width": self.width,
                "device_name": self.device_name, "backend": self.backend, "precision": self.precision,
                "batch": self.batch, "threads": self.threads, "channels_last": self.channels_last,
                "folded": self.folded}

    def label(self) -> str:
        """Short human label for the progress bar."""
        lay = ("+cl" if self.channels_last else "") + ("+fold" if self.folded else "")
        thr = f" t{self.threads}" if self.device_type == "cpu" else ""
        return (f"{self.model} {self.height}x{self.width} {self.device}{thr} {self.backend}{lay} "
                f"{self.precision} b{self.batch}")

    def row_base(self) -> dict:
        """The descriptive columns of this case's results row."""
        d = {k: getattr(self, k) for k in ("model", "family", "variant", "level", "device", "device_name", "backend",
                                           "precision", "batch", "threads", "height", "width", "tokens",
                                           "channels_last", "seed")}
        d["folded"] = self.folded
        d["case_id"] = self.case_id
        if self.macs is not None:
            d["macs"] = self.macs
        return d

    def to_spec(self) -> dict:
        return asdict(self)

    @classmethod
    def from_spec(cls, spec: dict) -> "Case":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in spec.items() if k in names})


_RES = re.compile(r"^\s*(-?\d+)\s*(?:[xX*]\s*(-?\d+)\s*)?$")


def parse_resolution(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '1024x2048' -> (height 1024, width 2048)."""
    m = _RES.match(text)
    if not m:
        raise CaseError(f"--res: malformed resolution {text!r}; accepted: N (square) or HxW, e.g. 512,1024,1024x2048")
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) is not None else h
    if h <= 0 or w <= 0:
        raise CaseError(f"--res: resolution {text!r} is not positive; accepted: N or HxW with N, H, W > 0")
    return h, w


def parse_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise CaseError(f"{what}: empty list")
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
        is_block = info.family == "block"
        if is_block:
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
           max_time_s: float = 5.0, timeout_s: float = 600.0) -> list[Case]:
    """All cases, ordered so that the mixers of one resolution run back to back (A/B pairs close in time).

    devices: (device, device_name); precisions: device type -> precisions; threads apply to CPU (CUDA rows: 0).
    """
    from models.registry import get_model_info

    cases: list[Case] = []
    for dev, dev_name in devices:
        dtype = dev.split(":")[0]
        thr_list = threads if dtype == "cpu" else [0]
        for thr in thr_list:
            for backend in backends:
                for prec in precisions[dtype]:
                    for batch in batches:
                        for h, w in resolutions:
                            for name in models:
                                info = get_model_info(name)
                                cases.append(Case(
                                    model=name, family=info.family, variant=info.mixer,
                                    level="block" if info.family == "block" else "model", device=dev,
                                    device_name=dev_name, backend=backend, precision=prec, batch=batch,
                                    threads=thr, height=h, width=w, tokens=info.tokens(h, w),
                                    channels_last=channels_last, folded=fold, seed=seed, min_time_s=min_time_s,
                                    max_time_s=max_time_s, timeout_s=timeout_s))
    seen: set[str] = set()
    out = []
    for c in cases:
        if c.case_id not in seen:
            seen.add(c.case_id)
            out.append(c)
    return out
