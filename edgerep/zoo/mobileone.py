"""MobileOne-style blocks (Vasu et al., CVPR 2023): k over-parameterized kxk conv+BN branches, a 1x1 'scale'
conv+BN branch (when k > 1) and an identity BN (in == out, stride 1), summed, then ReLU.

Used in a depthwise flavour (kxk, groups = C) and a pointwise flavour (1x1, groups 1).
Deploy form: one `reparam` conv + `act`.
"""
from __future__ import annotations

from typing import Any, cast

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from edgerep.zoo.common import (
    ClassifierHead,
    ConvBN,
    IntOr2,
    ReparamBlock,
    fold_bn,
    identity_kernel,
    pad_kernel,
    pair,
    same_padding,
)
from edgerep.zoo.registry import register_model


class MobileOneBlock(ReparamBlock):
    """`num_branches` kxk conv+BN + 1x1 conv+BN (if k > 1) + identity BN, summed, then ReLU."""

    branches = ("conv_kxk", "conv_scale", "identity")

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
        padding: IntOr2 | None = None, dilation: int = 1, groups: int = 1, num_branches: int = 3,
        act: bool = True, deploy: bool = False,
    ) -> None:
        super().__init__()
        centre = same_padding(kernel_size, dilation)
        pad = centre if padding is None else pair(padding)
        if min(pad) < 0:
            raise ValueError(f"padding {padding}: must be >= 0")
        off = (pad[0] - centre[0], pad[1] - centre[1])
        self.in_channels, self.groups = in_channels, groups
        self.stride, self.padding, self.dilation = stride, pad, dilation
        self.act = nn.ReLU() if act else nn.Identity()
        self.id_pad = None if off == (0, 0) else [off[1], off[1], off[0], off[0]]
        if deploy:
            self.reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad, dilation, groups,
                                     bias=True)
            self.conv_kxk = self.conv_scale = self.identity = None
            return
        self.reparam = None
        self.conv_kxk = nn.ModuleList(
            ConvBN(in_channels, out_channels, kernel_size, stride, pad, dilation, groups) for _ in range(num_branches)
        )
        self.conv_scale = ConvBN(in_channels, out_channels, 1, stride, off, 1, groups) if kernel_size > 1 else None
        self.identity = nn.BatchNorm2d(in_channels) if in_channels == out_channels and stride == 1 else None

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam is not None:
            return self.act(self.reparam(x))
        assert self.conv_kxk is not None  # the training form has its branches
        out = self.conv_kxk[0](x)
        for branch in self.conv_kxk[1:]:
            out = out + branch(x)
        if self.conv_scale is not None:
            out = out + self.conv_scale(x)
        if self.identity is not None:
            out = out + self.identity(x if self.id_pad is None else F.pad(x, self.id_pad))
        return self.act(out)

    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        assert self.conv_kxk is not None  # the training form has its branches
        kxk = [cast(ConvBN, m) for m in self.conv_kxk]  # a ModuleList of ConvBNs (__init__)
        k, b = kxk[0].fused_kernel_bias()
        kh, kw = k.shape[2:]
        for branch in kxk[1:]:
            kb, bb = branch.fused_kernel_bias()
            k, b = k + kb, b + bb
        if self.conv_scale is not None:
            kb, bb = self.conv_scale.fused_kernel_bias()
            k, b = k + pad_kernel(kb, kh, kw), b + bb
        if self.identity is not None:
            kid = identity_kernel(self.in_channels, self.groups, kh, kw)
            kid, bid = fold_bn(kid, kid.new_zeros(self.in_channels), self.identity)
            k, b = k + kid, b + bid
        return k, b



class MobileOneUnit(nn.Sequential):
    """Depthwise kxk MobileOne block (stride s) followed by a pointwise 1x1 MobileOne block."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, num_branches: int, deploy: bool) -> None:
        super().__init__(
            MobileOneBlock(in_ch, in_ch, 3, stride, groups=in_ch, num_branches=num_branches, deploy=deploy),
            MobileOneBlock(in_ch, out_ch, 1, 1, num_branches=num_branches, deploy=deploy),
        )


class MobileOneNet(nn.Module):
    """stem MobileOne block (3x3, stride 2) + stages of dw/pw units + classifier head."""

    def __init__(self, stem_width: int, stages: tuple[tuple[int, int, int], ...], num_branches: int = 3,
                 num_classes: int = 10, deploy: bool = False) -> None:
        super().__init__()
        self.stem = MobileOneBlock(3, stem_width, 3, 2, num_branches=1, deploy=deploy)
        units, in_ch = [], stem_width
        for width, depth, stride in stages:
            for j in range(depth):
                units.append(MobileOneUnit(in_ch, width, stride if j == 0 else 1, num_branches, deploy))
                in_ch = width
        self.stages = nn.Sequential(*units)
        self.head = ClassifierHead(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


@register_model(input_shape=(1, 3, 64, 64), num_classes=10)
def mobileone_tiny(*, num_classes: int = 10, deploy: bool = False, num_branches: int = 3, **kw: Any) -> MobileOneNet:
    """A tiny MobileOne-style net: stem 16, dw+pw units 16 / 32 (s2) x2 / 64 (s2), 3 branches each."""
    return MobileOneNet(16, ((16, 1, 1), (32, 2, 2), (64, 1, 2)), num_branches, num_classes, deploy, **kw)
