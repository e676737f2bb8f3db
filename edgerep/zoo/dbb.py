"""Diverse Branch Block (Ding et al., CVPR 2021).

Branches: kxk+BN; 1x1+BN; 1x1 -> BN -> kxk -> BN; 1x1 -> BN -> avg-pool(k) -> BN. In the two sequential
branches the tensor between the 1x1 and the kxk/avg-pool is padded with the middle BN's response to a
zero input (not zeros), so that the whole branch is exactly one kxk conv on a zero-padded input.
Deploy form: one `reparam` conv.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from edgerep.zoo.common import (
    ConvBN,
    IntOr2,
    ReparamBlock,
    TinyRepResNet,
    avg_pool_kernel,
    bn_zero_response,
    compose_1x1_kxk,
    const_pad,
    conv_kernel_bias,
    fold_bn,
    pad_kernel,
    pair,
    same_padding,
)
from edgerep.zoo.registry import register_model


class OneByOneKxK(nn.Module):
    """1x1 conv -> BN -> pad with the BN's zero response -> kxk conv (padding 0) -> BN."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, kernel_size: int, stride: IntOr2,
                 padding: tuple[int, int], dilation: IntOr2, groups: int) -> None:
        super().__init__()
        self.pad = [padding[1], padding[1], padding[0], padding[0]]
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_ch)
        self.conv2 = nn.Conv2d(mid_ch, out_ch, kernel_size, stride, 0, dilation, groups, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        y = const_pad(self.bn1(self.conv1(x)), self.pad, bn_zero_response(self.bn1))
        return self.bn2(self.conv2(y))

    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        k1, b1 = fold_bn(*conv_kernel_bias(self.conv1), self.bn1)
        k2, b2 = fold_bn(*conv_kernel_bias(self.conv2), self.bn2)
        return compose_1x1_kxk(k1, b1, k2, b2, self.groups)


class OneByOneAvg(nn.Module):
    """1x1 conv -> BN -> pad with the BN's zero response -> avg-pool(k, stride) -> BN."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: IntOr2, padding: tuple[int, int],
                 groups: int) -> None:
        super().__init__()
        self.pad = [padding[1], padding[1], padding[0], padding[0]]
        self.kernel_size, self.stride, self.groups = kernel_size, stride, groups
        self.conv = nn.Conv2d(in_ch, out_ch, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        y = const_pad(self.bn1(self.conv(x)), self.pad, bn_zero_response(self.bn1))
        return self.bn2(F.avg_pool2d(y, self.kernel_size, self.stride, 0))

    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        k1, b1 = fold_bn(*conv_kernel_bias(self.conv), self.bn1)
        out_ch, k = k1.shape[0], self.kernel_size
        ka, ba = fold_bn(avg_pool_kernel(out_ch, self.groups, k, k), k1.new_zeros(out_ch), self.bn2)
        return compose_1x1_kxk(k1, b1, ka, ba, self.groups)


class DiverseBranchBlock(ReparamBlock):
    """DBB: kxk+BN, 1x1+BN, 1x1-BN-kxk-BN and 1x1-BN-avg-BN, summed (no activation); supports groups.

    With dilation > 1 the avg-pool branch is left out (a dense avg-pool does not fit a dilated kernel).
    """

    branches = ("dbb_origin", "dbb_1x1", "dbb_1x1_kxk", "dbb_avg")

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: IntOr2 = 1,
        padding: IntOr2 | None = None, dilation: int = 1, groups: int = 1, internal_channels: int | None = None,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        k = kernel_size
        centre = same_padding(k, dilation)
        pad = centre if padding is None else pair(padding)
        if min(pad) < 0:
            raise ValueError(f"padding {padding}: must be >= 0")
        self.stride, self.padding, self.dilation, self.groups = pair(stride), pad, dilation, groups
        if deploy:
            self.reparam = nn.Conv2d(in_channels, out_channels, k, stride, pad, dilation, groups, bias=True)
            self.dbb_origin = self.dbb_1x1 = self.dbb_1x1_kxk = self.dbb_avg = None
            return
        self.reparam = None
        mid = internal_channels or in_channels
        off = (pad[0] - centre[0], pad[1] - centre[1])
        self.dbb_origin = ConvBN(in_channels, out_channels, k, stride, pad, dilation, groups)
        self.dbb_1x1 = ConvBN(in_channels, out_channels, 1, stride, off, 1, groups)
        self.dbb_1x1_kxk = OneByOneKxK(in_channels, mid, out_channels, k, stride, pad, dilation, groups)
        self.dbb_avg = OneByOneAvg(in_channels, out_channels, k, stride, pad, groups) if dilation == 1 else None

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam is not None:
            return self.reparam(x)
        # the training form has its branches
        assert self.dbb_origin is not None and self.dbb_1x1 is not None and self.dbb_1x1_kxk is not None
        out = self.dbb_origin(x) + self.dbb_1x1(x) + self.dbb_1x1_kxk(x)
        if self.dbb_avg is not None:
            out = out + self.dbb_avg(x)
        return out

    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        # the training form has its branches
        assert self.dbb_origin is not None and self.dbb_1x1 is not None and self.dbb_1x1_kxk is not None
        k, b = self.dbb_origin.fused_kernel_bias()
        kh, kw = k.shape[2:]
        branches: list[ConvBN | OneByOneKxK | OneByOneAvg] = [self.dbb_1x1, self.dbb_1x1_kxk]
        if self.dbb_avg is not None:
            branches.append(self.dbb_avg)
        for branch in branches:
            kb, bb = branch.fused_kernel_bias()
            k, b = k + pad_kernel(kb, kh, kw), b + bb
        return k, b



def _dbb(in_ch: int, out_ch: int, *, stride: int, groups: int, deploy: bool) -> DiverseBranchBlock:
    return DiverseBranchBlock(in_ch, out_ch, 3, stride, groups=groups, deploy=deploy)


@register_model(input_shape=(1, 3, 64, 64), num_classes=10)
def dbb_resnet_tiny(*, num_classes: int = 10, deploy: bool = False, groups: int = 1, **kw: Any) -> TinyRepResNet:
    """A tiny ResNet (16-32-64, 3 basic blocks) whose 3x3 convs are Diverse Branch Blocks."""
    return TinyRepResNet(_dbb, groups=groups, num_classes=num_classes, deploy=deploy, **kw)
