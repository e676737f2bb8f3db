"""RepVGG (Ding et al., CVPR 2021): kxk conv+BN, 1x1 conv+BN and identity BN branches, then ReLU.

Deploy form: one `reparam` conv (kxk, bias) + `act`. The paper's families A0-A2, B0-B3 and the grouped
B variants are registered, plus `repvgg_tiny` for tests.
"""
from __future__ import annotations

from typing import Any

import torch
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


class RepVGGBlock(ReparamBlock):
    """kxk conv+BN + 1x1 conv+BN + identity BN (in == out, stride 1), summed, then ReLU.

    Padding need not be dilation*(k-1)/2: the 1x1 and identity branches are aligned to the kxk kernel's
    centre tap (padding offset by the difference, cropping when it is negative), so fusion stays exact.
    """

    branches = ("conv_kxk", "conv_1x1", "identity")

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
        padding: IntOr2 | None = None, dilation: int = 1, groups: int = 1, act: bool = True,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        centre = same_padding(kernel_size, dilation)
        pad = centre if padding is None else pair(padding)
        if min(pad) < 0:
            raise ValueError(f"padding {padding}: must be >= 0")
        off = (pad[0] - centre[0], pad[1] - centre[1])  # where a 1x1 tap sits relative to the input
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, pad, dilation
        self.act = nn.ReLU() if act else nn.Identity()
        has_identity = in_channels == out_channels and stride == 1
        # An identity on a differently padded input: F.pad with signed sizes pads or crops.
        self.id_pad = None if off == (0, 0) else [off[1], off[1], off[0], off[0]]
        if deploy:
            self.reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad, dilation, groups,
                                     bias=True)
            self.conv_kxk = self.conv_1x1 = self.identity = None
        else:
            self.reparam = None
            self.conv_kxk = ConvBN(in_channels, out_channels, kernel_size, stride, pad, dilation, groups)
            self.conv_1x1 = ConvBN(in_channels, out_channels, 1, stride, off, 1, groups)
            self.identity = nn.BatchNorm2d(in_channels) if has_identity else None

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam is not None:
            return self.act(self.reparam(x))
        assert self.conv_kxk is not None and self.conv_1x1 is not None  # the training form has its branches
        out = self.conv_kxk(x) + self.conv_1x1(x)
        if self.identity is not None:
            out = out + self.identity(x if self.id_pad is None else F.pad(x, self.id_pad))
        return self.act(out)

    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        assert self.conv_kxk is not None and self.conv_1x1 is not None  # the training form has its branches
        k, b = self.conv_kxk.fused_kernel_bias()
        kh, kw = k.shape[2:]
        k1, b1 = self.conv_1x1.fused_kernel_bias()
        k, b = k + pad_kernel(k1, kh, kw), b + b1
        if self.identity is not None:
            kid = identity_kernel(self.in_channels, self.groups, kh, kw)
            kid, bid = fold_bn(kid, kid.new_zeros(self.in_channels), self.identity)
            k, b = k + kid, b + bid
        return k, b


@torch.no_grad()
def scale_block_channel(producer: RepVGGBlock, consumer: RepVGGBlock, *, channel: int = 0,
                        factor: float = 100.0) -> None:
    """Blow up one activation channel between two RepVGG blocks without changing the function, in place.

    The block-level counterpart of edgerep.quant.stress.scale_channel_pair, for either form of a block:
    `producer`'s output channel is scaled by `factor` (every branch: its BN's weight and bias, or the deploy
    conv's weight and bias; the ReLU after the sum is positively homogeneous), and `consumer` takes it back:
    its conv branches' input channel divided by `factor`, and its identity BN's running mean scaled by
    `factor` and weight divided by it (w/f * (f x - f m) / s = w (x - m) / s). The producer's output must
    feed only the consumer. Fusing either form gives the same deploy pair: one fused conv whose output
    channel is `factor` times larger, then a conv that divides it back.
    """
    if not isinstance(producer.act, nn.ReLU) and not isinstance(producer.act, nn.Identity):
        raise ValueError("producer: the activation after the block must be positively homogeneous (ReLU)")
    if producer.out_channels != consumer.in_channels or consumer.groups != 1:
        raise ValueError(f"producer has {producer.out_channels} outputs, consumer takes {consumer.in_channels} "
                         f"(groups {consumer.groups}); expected equal, ungrouped")
    if producer.reparam is not None:
        assert producer.reparam.bias is not None  # deploy convs have one
        producer.reparam.weight[channel] *= factor
        producer.reparam.bias[channel] *= factor
    else:
        assert producer.conv_kxk is not None and producer.conv_1x1 is not None  # the training form
        bns = [producer.conv_kxk.bn, producer.conv_1x1.bn] + ([producer.identity] if producer.identity else [])
        for bn in bns:
            assert bn is not None, "producer: a branch's ConvBN was re-parameterized on its own"
            bn.weight[channel] *= factor
            bn.bias[channel] *= factor
    if consumer.reparam is not None:
        consumer.reparam.weight[:, channel] /= factor
        return
    assert consumer.conv_kxk is not None and consumer.conv_1x1 is not None  # the training form
    for branch in (consumer.conv_kxk, consumer.conv_1x1):
        branch.conv.weight[:, channel] /= factor
    if consumer.identity is not None:
        assert consumer.identity.running_mean is not None, "consumer: its identity BN has no running statistics"
        consumer.identity.running_mean[channel] *= factor
        consumer.identity.weight[channel] /= factor


class RepVGG(nn.Module):
    """stem block (stride 2) + 4 stages (first block stride 2) + classifier head.

    `group_layers` are the 1-based indices of the blocks after the stem that use `groups` (the paper's
    g2/g4 variants group layers 2, 4, ..., 26).
    """

    def __init__(
        self, depths: tuple[int, ...], widths: tuple[int, ...], stem_width: int, num_classes: int = 1000,
        groups: int = 1, group_layers: tuple[int, ...] = (), deploy: bool = False,
    ) -> None:
        super().__init__()
        self.stem = RepVGGBlock(3, stem_width, 3, stride=2, deploy=deploy)
        in_ch, layer_idx, stages = stem_width, 1, []
        for depth, width in zip(depths, widths):
            blocks = []
            for j in range(depth):
                g = groups if layer_idx in group_layers else 1
                blocks.append(RepVGGBlock(in_ch, width, 3, stride=2 if j == 0 else 1, groups=g, deploy=deploy))
                in_ch, layer_idx = width, layer_idx + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


_DEPTHS = {"a": (2, 4, 14, 1), "b": (4, 6, 16, 1)}
_ODD_LAYERS = tuple(range(2, 27, 2))  # the paper's optional grouped layers


def _repvgg(kind: str, a: float, b: float, groups: int, num_classes: int, deploy: bool, **kw: Any) -> RepVGG:
    widths = (int(64 * a), int(128 * a), int(256 * a), int(512 * b))
    return RepVGG(_DEPTHS[kind], widths, min(64, int(64 * a)), num_classes, groups,
                  _ODD_LAYERS if groups > 1 else (), deploy, **kw)


def _define(name: str, kind: str, a: float, b: float, groups: int = 1) -> None:
    def factory(*, num_classes: int = 1000, deploy: bool = False, **kw: Any) -> RepVGG:
        return _repvgg(kind, a, b, groups, num_classes, deploy, **kw)

    factory.__name__ = name
    factory.__doc__ = f"RepVGG-{name[7:].upper()} (a={a}, b={b}, groups={groups}), ImageNet-sized."
    globals()[name] = register_model(name)(factory)


for _name, _kind, _a, _b, _g in [
    ("repvgg_a0", "a", 0.75, 2.5, 1), ("repvgg_a1", "a", 1, 2.5, 1), ("repvgg_a2", "a", 1.5, 2.75, 1),
    ("repvgg_b0", "b", 1, 2.5, 1), ("repvgg_b1", "b", 2, 4, 1), ("repvgg_b2", "b", 2.5, 5, 1),
    ("repvgg_b3", "b", 3, 5, 1),
    ("repvgg_b1g2", "b", 2, 4, 2), ("repvgg_b1g4", "b", 2, 4, 4), ("repvgg_b2g2", "b", 2.5, 5, 2),
    ("repvgg_b2g4", "b", 2.5, 5, 4), ("repvgg_b3g2", "b", 3, 5, 2), ("repvgg_b3g4", "b", 3, 5, 4),
]:
    _define(_name, _kind, _a, _b, _g)


@register_model(input_shape=(1, 3, 64, 64), num_classes=10)
def repvgg_tiny(*, num_classes: int = 10, deploy: bool = False, **kw: Any) -> RepVGG:
    """A narrow RepVGG (stem 16, stages 16-32-64-64, depths 1-2-2-1, groups 2 on layers 2 and 4) for tests."""
    return RepVGG((1, 2, 2, 1), (16, 32, 64, 64), 16, num_classes, groups=2, group_layers=(2, 4),
                  deploy=deploy, **kw)
