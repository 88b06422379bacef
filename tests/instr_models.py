"""Models for tests/test_instructions.py, loaded in the valgrind child through DENSEBENCH_MODELS_FROM or named as
builders ("tests/instr_models.py:block_msla").

instr:conv+K is a 3x3 stem conv followed by K identical 1x1 convs, so each extra conv adds a known number of MACs
(EXTRA_MACS at 64x64) and nothing else; instr:fails raises in its second counted forward, inside a dump.
"""
from __future__ import annotations

import gc

import torch
from torch import nn

from models.registry import build_model, register_model

WIDTH = 32
SIZE = 64
EXTRA_MACS = SIZE * SIZE * WIDTH * WIDTH  # one 1x1 WIDTH -> WIDTH conv at SIZE x SIZE


class ConvStack(nn.Module):
    def __init__(self, extra: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, WIDTH, 3, padding=1)
        self.extra = nn.Sequential(*[nn.Conv2d(WIDTH, WIDTH, 1) for _ in range(extra)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extra(self.stem(x))


class FailsLater(nn.Module):
    """Raises in its second counted forward, inside a dump (the counted forwards are the ones run with Python's gc
    disabled)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.counted = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.counted += not gc.isenabled()
        if self.counted == 2:
            raise RuntimeError("fails on purpose in a counted forward")
        return self.conv(x)


for _k in range(3):
    register_model(f"instr:conv+{_k}", num_classes=WIDTH, out_stride=1)(lambda k=_k: ConvStack(k))
register_model("instr:fails", num_classes=4, out_stride=1)(FailsLater)


def block_msla() -> nn.Module:
    """The registry's block:msla, through the builder hook (to compare with the registry path)."""
    return build_model("block:msla")


def broken() -> nn.Module:
    raise RuntimeError("broken on purpose")
