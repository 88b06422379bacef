"""Which modules time is attributed to: a rule on module paths that works for every model in the zoo.

The rule (`module_groups`):

1. The root's children are the top-level groups (EfficientViT-Seg: backbone, head; SegFormer: encoder,
   decode_head; a `block:<mixer>` model: context). `nn.ModuleList` / `nn.ModuleDict` are transparent: their items
   take their place (they are never called, so a hook on them would never fire).
2. A top-level group that contains blocks (see 3), is not a block itself and is not an item of a container is
   replaced by its own children, so an encoder splits into its stem and stages (`backbone.stem`,
   `backbone.stages.0` .. `backbone.stages.3`, `encoder.stages.0` .. `3`); a root's own `stages` list stays one
   group per stage. These are the *stages*: every op lands in at most one (else in ROOT).
3. A block is a module with a child named like a token mixer (MIXER_NAMES: EfficientViT's `context`,
   SegFormer's and SegNeXt's `attn`) or like a feed-forward network (FFN_NAMES: EfficientViT's `local`,
   SegFormer's and SegNeXt's `mlp`). Each such child is a group of its own, part "mixer" or "ffn", belonging to its
   stage (`backbone.stages.3.1.context`). Everything else in a stage (downsampling blocks, norms, patch embeds) is
   the stage's part "other". A group is not searched further once it is a mixer or an FFN.

Ops outside every group (the root's own forward) belong to ROOT. The innermost group around an op wins.
Groups are marked by forward pre-hooks and hooks (`hooked`), which the profiler turns into `record_function`
ranges (they show as named ranges in the Chrome trace) and the MAC counter into a stack.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

from torch import nn

MIXER_NAMES = ("context", "attn", "attention", "mixer", "token_mixer", "self_attn")
FFN_NAMES = ("local", "mlp", "ffn", "feed_forward")
ROOT = "(root)"
_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class Group:
    """One annotated module: its path, the stage it belongs to and its part there (mixer, ffn or other)."""
    path: str
    stage: str
    part: str


def _part(name: str) -> str | None:
    if name in MIXER_NAMES:
        return "mixer"
    if name in FFN_NAMES:
        return "ffn"
    return None


def _children(module: nn.Module, prefix: str) -> Iterator[tuple[str, str, nn.Module, bool]]:
    """(name, path, child, from_container) with containers replaced by their items (recursively)."""
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, _CONTAINERS):
            for _, sub_path, sub, _ in _children(child, path):
                yield name, sub_path, sub, True
        else:
            yield name, path, child, False


def _is_block(module: nn.Module) -> bool:
    return any(_part(name) for name, _ in module.named_children())


def _has_blocks(module: nn.Module) -> bool:
    return any(_is_block(m) for m in module.modules())


def _parts_within(module: nn.Module, path: str, stage: str, out: dict[str, Group]) -> None:
    """Mark every mixer / FFN child below `module` (not searching inside one once found)."""
    for name, child_path, child, _ in _children(module, path):
        part = _part(name)
        if part:
            out[child_path] = Group(child_path, stage, part)
        else:
            _parts_within(child, child_path, stage, out)


def module_groups(model: nn.Module) -> dict[str, Group]:
    """The groups of `model` by the rule of this module's docstring, keyed by module path, in model order."""
    out: dict[str, Group] = {}
    for name, path, child, listed in _children(model, ""):
        stages = [(name, path, child)]
        if not listed and not _part(name) and not _is_block(child) and _has_blocks(child):
            stages = [(n, p, c) for n, p, c, _ in _children(child, path)] or stages
        for s_name, s_path, s_mod in stages:
            part = _part(s_name)
            out[s_path] = Group(s_path, s_path, part or "other")
            if not part:
                _parts_within(s_mod, s_path, s_path, out)
    return out


def group_of(path: str, groups: dict[str, Group]) -> str:
    """The innermost group containing module `path` (a dotted module path from an ONNX node), else ROOT."""
    best = ROOT
    for g in groups:
        if (path == g or path.startswith(g + ".")) and (best == ROOT or len(g) > len(best)):
            best = g
    return best


@contextlib.contextmanager
def hooked(model: nn.Module, groups: dict[str, Group], enter: Callable[[str], None],
           leave: Callable[[str], None]) -> Iterator[None]:
    """Calls enter(path) before and leave(path) after every forward of a group's module (also when it raises)."""
    handles = []
    try:
        for path in groups:
            mod = model.get_submodule(path)
            handles.append(mod.register_forward_pre_hook(_pre_hook(enter, path)))
            handles.append(mod.register_forward_hook(_post_hook(leave, path), always_call=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _pre_hook(enter: Callable[[str], None], path: str) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple) -> None:  # returns None: the input is left as it is
        enter(path)

    return hook


def _post_hook(leave: Callable[[str], None], path: str) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple, output: object) -> None:  # returns None: the output is kept
        leave(path)

    return hook
