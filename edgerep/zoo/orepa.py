"""OREPA-style block (Hu et al., CVPR 2022): linear branches, each scaled per channel, summed, then ONE BN.

Branches: kxk conv; 1x1 conv; 1x1 -> kxk; 1x1 -> avg-pool(k). With no BN or bias between the 1x1 and the
kxk/avg-pool, zero padding of the middle tensor is exact (it equals the 1x1 conv of zero padding).
OREPA proper computes the fused weight online in forward; this block keeps the branches explicit so both
our own deploy code and a graph fuser have something to fuse. Deploy form: one `reparam` conv (+ `act`).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from edgerep.zoo.common import (
    IntOr2,
    ReparamBlock,
    TinyRepResNet,
    avg_pool_kernel,
    compose_1x1_kxk,
    conv_kernel_bias,
    crop_and_pad,
    fold_bn,
    pad_kernel,
    pair,
    same_padding,
)
from edgerep.zoo.registry import register_model

_SCALE_INIT = {"scale_kxk": 1.0, "scale_1x1": 0.5, "scale_1x1_kxk": 1.0, "scale_avg": 0.5}


class OREPABlock(ReparamBlock):
    """sum_i scale_i * branch_i(x) -> BN (-> ReLU if act); scales are (1, C, 1, 1) parameters.

    With dilation > 1 the avg-pool branch is left out (a dense avg-pool does not fit a dilated kernel).
    """

    branches = ("conv_kxk", "conv_1x1", "conv_1x1_kxk_a", "conv_1x1_kxk_b", "conv_avg", "bn", *_SCALE_INIT)
    # the training form's branch scales (set by name from _SCALE_INIT; no scale_avg without the avg branch)
    scale_kxk: nn.Parameter
    scale_1x1: nn.Parameter
    scale_1x1_kxk: nn.Parameter
    scale_avg: nn.Parameter | None

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: IntOr2 = 1,
        padding: IntOr2 | None = None, dilation: int = 1, groups: int = 1, act: bool = False,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        k = kernel_size
        centre = same_padding(k, dilation)
        pad = centre if padding is None else pair(padding)
        if min(pad) < 0:
            raise ValueError(f"padding {padding}: must be >= 0")
        self.kernel_size, self.stride, self.padding = k, pair(stride), pad
        self.dilation, self.groups = dilation, groups
        self.act = nn.ReLU() if act else nn.Identity()
        if deploy:
            self.reparam = nn.Conv2d(in_channels, out_channels, k, stride, pad, dilation, groups, bias=True)
            self._set_branches(None)
            return
        self.reparam = None
        off = (pad[0] - centre[0], pad[1] - centre[1])
        self.crop_1x1, pad_1x1 = crop_and_pad(off)
        self.conv_kxk = nn.Conv2d(in_channels, out_channels, k, stride, pad, dilation, groups, bias=False)
        self.conv_1x1 = nn.Conv2d(in_channels, out_channels, 1, stride, pad_1x1, 1, groups, bias=False)
        self.conv_1x1_kxk_a = nn.Conv2d(in_channels, in_channels, 1, groups=groups, bias=False)
        self.conv_1x1_kxk_b = nn.Conv2d(in_channels, out_channels, k, stride, pad, dilation, groups, bias=False)
        self.conv_avg = nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=False) if dilation == 1 else None
        # avg_pool2d's own padding (count_include_pad=True) only allows pad <= k/2; pad explicitly otherwise.
        self.avg_prepad = None if max(pad) <= k // 2 else [pad[1], pad[1], pad[0], pad[0]]
        for name, v in _SCALE_INIT.items():
            setattr(self, name, nn.Parameter(torch.full((1, out_channels, 1, 1), v)))
        if self.conv_avg is None:
            self.scale_avg = None
        self.bn = nn.BatchNorm2d(out_channels)

    def _set_branches(self, value: None) -> None:
        for name in self.branches:
            setattr(self, name, value)

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam is not None:
            return self.act(self.reparam(x))
        x1 = x if self.crop_1x1 is None else F.pad(x, self.crop_1x1)
        out = self.scale_kxk * self.conv_kxk(x) + self.scale_1x1 * self.conv_1x1(x1)
        out = out + self.scale_1x1_kxk * self.conv_1x1_kxk_b(self.conv_1x1_kxk_a(x))
        if self.conv_avg is not None:
            assert self.scale_avg is not None  # set with conv_avg
            y = self.conv_avg(x)
            if self.avg_prepad is None:
                y = F.avg_pool2d(y, self.kernel_size, self.stride, self.padding, count_include_pad=True)
            else:
                y = F.avg_pool2d(F.pad(y, self.avg_prepad), self.kernel_size, self.stride, 0)
            out = out + self.scale_avg * y
        return self.act(self.bn(out))

    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        def scale(p: nn.Parameter) -> Tensor:
            return p.detach().double().reshape(-1, 1, 1, 1)

        k, _ = conv_kernel_bias(self.conv_kxk)
        kh, kw = k.shape[2:]
        k = k * scale(self.scale_kxk)
        k = k + scale(self.scale_1x1) * pad_kernel(conv_kernel_bias(self.conv_1x1)[0], kh, kw)
        a, b = conv_kernel_bias(self.conv_1x1_kxk_a), conv_kernel_bias(self.conv_1x1_kxk_b)
        k = k + scale(self.scale_1x1_kxk) * compose_1x1_kxk(*a, *b, self.groups)[0]
        if self.conv_avg is not None:
            assert self.scale_avg is not None  # set with conv_avg
            w1, b1 = conv_kernel_bias(self.conv_avg)
            pool = avg_pool_kernel(w1.shape[0], self.groups, self.kernel_size, self.kernel_size)
            k = k + scale(self.scale_avg) * compose_1x1_kxk(w1, b1, pool, torch.zeros_like(b1), self.groups)[0]
        return fold_bn(k, k.new_zeros(k.shape[0]), self.bn)



def _orepa(in_ch: int, out_ch: int, *, stride: int, groups: int, deploy: bool) -> OREPABlock:
    return OREPABlock(in_ch, out_ch, 3, stride, groups=groups, deploy=deploy)


@register_model(input_shape=(1, 3, 64, 64), num_classes=10)
def orepa_resnet_tiny(*, num_classes: int = 10, deploy: bool = False, groups: int = 1, **kw: Any) -> TinyRepResNet:
    """A tiny ResNet (16-32-64, 3 basic blocks) whose 3x3 convs are OREPA-style blocks."""
    return TinyRepResNet(_orepa, groups=groups, num_classes=num_classes, deploy=deploy, **kw)
