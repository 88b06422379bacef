"""Deployment form: eval-time conv+BN folding and channels_last, applied to every model alike.

Folding works on structure, not on names: inside every nn.Sequential, a Conv2d immediately followed by a
BatchNorm2d is replaced by one conv with the BN folded in (torch's own `fuse_conv_bn_eval`), and the BN by an
Identity. The model files build every conv+BN pair as such a Sequential (models.layers.ConvNormAct), so the
same folding serves EfficientViT, SegFormer and SegNeXt, and all mixer variants are folded alike.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_conv_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every (Conv2d, BatchNorm2d) pair that follows each other in an nn.Sequential. Eval mode only."""
    if model.training:
        raise ValueError("conv+BN folding is an eval-time transform: call model.eval() first")
    model = model if inplace else copy.deepcopy(model)
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    return model


def count_unfolded_bn(model: nn.Module) -> int:
    """BatchNorm2d layers left in a model (after folding: those with no conv right before them)."""
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def to_deploy(model: nn.Module, channels_last: bool = False, fold: bool = True) -> nn.Module:
    """The model as it would be deployed: eval mode, conv+BN folded, optionally channels_last weights."""
    model = model.eval()
    if fold:
        model = fold_conv_bn(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
