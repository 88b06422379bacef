"""What the user typed -> typed values: comma lists, integers, resolutions, model names by --level.

The one place a run option's text is parsed (`parse_list` is the one list parser); every error is one CaseError
line naming the flag and what is accepted, which bench.plan words as a PlanError. bench.cases expands the matrix
from the values made here, so a case never sees a flag's text.
"""
from __future__ import annotations

import numbers
import re
from typing import Any, Iterable

from bench.cases import CaseError
from bench.errors import refuse, str_items

LEVELS = ("model", "block", "both")
DEFAULT_MODELS = ("evit-b1:msla", "evit-b1:relu-linear", "evit-b1:softmax", "evit-b1:large-kernel")
INT64_MAX = 2**63 - 1

_RES = re.compile(r"^\s*(-?\d+)\s*(?:[xX*]\s*(-?\d+)\s*)?$")
MAX_SIDE = 32768  # pixels per side: 8x the largest published setting; beyond it no tensor index fits a real device


def parse_list(value: Any, what: str) -> list[str]:
    """A comma string or an iterable of strings -> a list of non-empty strings (CaseError for anything else)."""
    if not isinstance(value, str):
        return str_items(what, value, "one value, a comma string or a list of strings", CaseError)
    items = [t.strip() for t in value.split(",")]
    if not any(items):
        raise CaseError(f"{what}: empty list; accepted: one value or a comma list (see --help)")
    if not all(items):
        raise CaseError(f"{what}: an empty item in {value!r}; accepted: a comma list without empty items")
    return items


def parse_ints(text: str, what: str, minimum: int = 1) -> list[int]:
    """A comma string of integers >= minimum -> the integers, each once, in order."""
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


OWN_SIZE = "own"  # --res own: each model at its own input size (a reference model's published one)


RES_ACCEPTED = "N, 'N,HxW', 'own', or a list of N, 'HxW' and (H, W) with integers"


def _int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def parse_resolutions(value: Any) -> list[tuple[int, int]]:
    """--res as [(h, w), ...]; [] for 'own'. CaseError for a float, a bool, an empty list or a malformed item."""
    if isinstance(value, str) and value.strip() == OWN_SIZE:
        return []
    if _int(value) or isinstance(value, str):
        value = [int(value)] if _int(value) else parse_list(value, "--res")
    elif not isinstance(value, (list, tuple)) or not value:
        raise refuse("--res", value, RES_ACCEPTED, CaseError)
    out = []
    for r in value:
        if isinstance(r, (tuple, list)) and len(r) == 2 and all(_int(v) or isinstance(v, str) for v in r):
            out.append(parse_resolution(f"{r[0]}x{r[1]}"))
        elif _int(r) or isinstance(r, str):
            out.append(parse_resolution(str(r)))
        else:
            raise refuse("--res", r, RES_ACCEPTED, CaseError)
    return list(dict.fromkeys(out))


def own_sizes(names: list[str]) -> list[tuple[int, int]]:
    """The input sizes of `names` (registry input_size), in order, each once."""
    from models.registry import get_model_info

    return list(dict.fromkeys(tuple(get_model_info(n).input_size) for n in names))


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


def int_list(value: Any, what: str, minimum: int = 1) -> list[int]:
    """An integer, a comma string or a list of integers (or their strings) -> the integers (CaseError)."""
    accepted = f"an integer >= {minimum}, a comma string or a list of them"
    if _int(value) or isinstance(value, str):
        items: Any = [int(value)] if _int(value) else value
    elif not isinstance(value, (list, tuple, set, frozenset)):
        raise refuse(what, value, accepted, CaseError)
    else:
        items = list(value)
        bad = [v for v in items if not (_int(v) or isinstance(v, str))]
        if bad:
            raise refuse(what, bad[0], accepted, CaseError)
    out = parse_ints(items if isinstance(items, str) else ",".join(str(v) for v in items), what, minimum)
    for v in out:
        if v > INT64_MAX:
            raise CaseError(f"{what}: {v} is beyond int64; accepted: integers from {minimum} to {INT64_MAX}")
    return out
