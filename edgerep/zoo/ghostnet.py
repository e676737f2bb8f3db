"""GhostNet (Han et al., CVPR 2020): Ghost modules and Ghost bottlenecks.

Deploy form: every conv+BN pair becomes its conv with a bias (`...conv.weight`, `...conv.bias`). The
primary and cheap convs of a Ghost module are NOT merged (a dense conv would cost more FLOPs than the
depthwise cheap one it replaces) and SE stays as is (its gate depends on the input).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from edgerep.zoo.common import ConvBN, reparameterize_children
from edgerep.zoo.registry import register_model


def make_divisible(v: float, divisor: int = 4, min_value: int | None = None) -> int:
    """Round to a multiple of `divisor`, never going below 90% of v (GhostNet/MobileNet rounding)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class SqueezeExcite(nn.Module):
    """x * hard_sigmoid(expand(relu(reduce(avgpool(x))))): input dependent, stays unfused."""

    def __init__(self, channels: int, se_ratio: float = 0.25) -> None:
        super().__init__()
        reduced = make_divisible(channels * se_ratio, 4)
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = nn.ReLU()
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        s = self.conv_expand(self.act(self.conv_reduce(F.adaptive_avg_pool2d(x, 1))))
        return x * F.hardsigmoid(s)


class GhostModule(nn.Module):
    """primary conv+BN(+ReLU) makes ceil(out/ratio) maps, a cheap depthwise conv+BN(+ReLU) the rest; concat, slice."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, ratio: int = 2, dw_size: int = 3,
                 stride: int = 1, relu: bool = True, deploy: bool = False) -> None:
        super().__init__()
        self.out_ch = out_ch
        init_ch = math.ceil(out_ch / ratio)
        self.primary_conv = ConvBN(in_ch, init_ch, kernel_size, stride, kernel_size // 2, deploy=deploy)
        self.primary_act = nn.ReLU() if relu else nn.Identity()
        self.cheap = ConvBN(init_ch, init_ch * (ratio - 1), dw_size, 1, dw_size // 2, groups=init_ch, deploy=deploy)
        self.cheap_act = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.primary_act(self.primary_conv(x))
        x2 = self.cheap_act(self.cheap(x1))
        return torch.cat([x1, x2], dim=1)[:, :self.out_ch]

    def reparameterize(self) -> None:
        reparameterize_children(self)


class GhostBottleneck(nn.Module):
    """ghost1 (ReLU) -> [dw conv+BN, stride] -> [SE] -> ghost2 (no ReLU) + shortcut (identity or dw+1x1 conv+BN)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, dw_kernel_size: int = 3, stride: int = 1,
                 se_ratio: float = 0.0, deploy: bool = False) -> None:
        super().__init__()
        self.ghost1 = GhostModule(in_ch, mid_ch, relu=True, deploy=deploy)
        self.conv_dw = (ConvBN(mid_ch, mid_ch, dw_kernel_size, stride, (dw_kernel_size - 1) // 2, groups=mid_ch,
                               deploy=deploy) if stride > 1 else None)
        self.se = SqueezeExcite(mid_ch, se_ratio) if se_ratio > 0 else None
        self.ghost2 = GhostModule(mid_ch, out_ch, relu=False, deploy=deploy)
        if in_ch == out_ch and stride == 1:
            self.shortcut = None
        else:
            self.shortcut = nn.Sequential(
                ConvBN(in_ch, in_ch, dw_kernel_size, stride, (dw_kernel_size - 1) // 2, groups=in_ch, deploy=deploy),
                ConvBN(in_ch, out_ch, 1, deploy=deploy),
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.ghost1(x)
        if self.conv_dw is not None:
            y = self.conv_dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.ghost2(y)
        return y + (x if self.shortcut is None else self.shortcut(x))

    def reparameterize(self) -> None:
        reparameterize_children(self)


# (kernel, expansion, out, se_ratio, stride) per block, grouped in stages (GhostNet paper, Table 1).
GHOSTNET_CFG = (
    ((3, 16, 16, 0, 1),),
    ((3, 48, 24, 0, 2),),
    ((3, 72, 24, 0, 1),),
    ((5, 72, 40, 0.25, 2),),
    ((5, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0, 2),),
    ((3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 0.25, 1), (3, 672, 112, 0.25, 1)),
    ((5, 672, 160, 0.25, 2),),
    ((5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1)),
)
TINY_CFG = (
    ((3, 16, 16, 0, 1),),
    ((3, 48, 24, 0, 2),),
    ((5, 72, 40, 0.25, 2),),
    ((3, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0, 2),),
)


class GhostNet(nn.Module):
    """stem conv+BN+ReLU (stride 2) -> Ghost bottleneck stages -> 1x1 conv+BN+ReLU -> pool -> conv head+ReLU -> fc."""

    def __init__(self, cfg=GHOSTNET_CFG, width: float = 1.0, head_channels: int = 1280, num_classes: int = 1000,
                 dropout: float = 0.2, deploy: bool = False) -> None:
        super().__init__()
        stem_ch = make_divisible(16 * width, 4)
        self.stem = ConvBN(3, stem_ch, 3, 2, 1, deploy=deploy)
        self.stem_act = nn.ReLU()
        in_ch, stages, exp = stem_ch, [], 16
        for stage_cfg in cfg:
            blocks = []
            for k, exp, c, se, s in stage_cfg:
                out_ch = make_divisible(c * width, 4)
                blocks.append(GhostBottleneck(in_ch, make_divisible(exp * width, 4), out_ch, k, s, se, deploy))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        last_ch = make_divisible(exp * width, 4)
        stages.append(nn.Sequential(ConvBN(in_ch, last_ch, 1, deploy=deploy), nn.ReLU()))
        self.blocks = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = nn.Conv2d(last_ch, head_channels, 1, bias=True)
        self.head_act = nn.ReLU()
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(head_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem_act(self.stem(x)))
        x = self.head_act(self.conv_head(self.pool(x)))
        return self.classifier(self.dropout(self.flatten(x)))


@register_model()
def ghostnet_100(*, num_classes: int = 1000, deploy: bool = False, width: float = 1.0, **kw: Any) -> GhostNet:
    """GhostNet 1.0x (paper configuration, ~5.2M parameters)."""
    return GhostNet(GHOSTNET_CFG, width, 1280, num_classes, deploy=deploy, **kw)


@register_model(input_shape=(1, 3, 64, 64), num_classes=10)
def ghostnet_tiny(*, num_classes: int = 10, deploy: bool = False, width: float = 0.5, **kw: Any) -> GhostNet:
    """A 5-bottleneck GhostNet at width 0.5 (with SE, stride-2 and identity shortcuts) for tests."""
    return GhostNet(TINY_CFG, width, 256, num_classes, deploy=deploy, **kw)
