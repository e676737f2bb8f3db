"""Switchable Atrous Convolution (DetectoRS, Qiao et al., CVPR 2021; as mmdet/mmcv's SAConv2d, no deform).

out = s * conv(x', Ws, d) + (1 - s) * conv(x', Ws + dW, 3d), with Ws the standardized weight,
x' = x + pre_context(global mean of x), s = switch 1x1 conv of a 5x5 reflect-padded avg-pool of x' (mmdet
applies no sigmoid to it; `sigmoid_switch=True` adds one), then out + post_context(global mean of out).

The switch and the contexts depend on the input: they stay. What fuses: weight standardization (folded into
two constant convs), the avg-pool in front of the switch (a 5x5 conv with one output channel is cheaper than
the pool and the 1x1 together), and the BN that follows in the network: since s and 1 - s sum to 1, BN's
scale and shift go into both branches (see `fold_following_bn`). Deploy form: `reparam` (dilation d) and
`reparam_1` (dilation 3d), both with a bias, `switch` (5x5), `pre_context`, `post_context`: the names the
generic fuser gives them, so its fused checkpoints load here.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from edgerep.zoo.common import ClassifierHead, ConvBN, bn_scale_shift, pair, reparameterize_children
from edgerep.zoo.registry import register_model

WS_EPS = 1e-5
SWITCH_POOL = 5  # the switch reads a 5x5 average (reflect-padded) of its input


def standardize_weight(w: Tensor) -> Tensor:
    """Per output channel: (w - mean) / sqrt(var + eps) over (in, kh, kw); traceable."""
    flat = w.flatten(1)
    mean = flat.mean(dim=1).reshape(-1, 1, 1, 1)
    std = torch.sqrt(flat.var(dim=1) + WS_EPS).reshape(-1, 1, 1, 1)
    return (w - mean) / std


class SAConv2d(nn.Module):
    """SAConv2d; the deploy form holds `reparam`, `reparam_1` (convs with bias) + `switch`, `pre_context`,
    `post_context`."""

    # the deploy form has the two convs, the training form the (standardized) weights
    reparam: nn.Conv2d | None
    reparam_1: nn.Conv2d | None
    weight: nn.Parameter | None
    weight_diff: nn.Parameter | None
    bias: nn.Parameter | None

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int | None = None,
        dilation: int = 1, groups: int = 1, bias: bool = False, sigmoid_switch: bool = False, deploy: bool = False,
    ) -> None:
        super().__init__()
        self.sigmoid_switch = sigmoid_switch
        self.stride, self.dilation, self.groups = pair(stride), pair(dilation), groups
        self.padding = pair(dilation * (kernel_size - 1) // 2 if padding is None else padding)
        self.padding_l = (3 * self.padding[0], 3 * self.padding[1])
        self.dilation_l = (3 * self.dilation[0], 3 * self.dilation[1])
        shape = (out_channels, in_channels // groups, kernel_size, kernel_size)
        self.pre_context = nn.Conv2d(in_channels, in_channels, 1, bias=True)
        self.post_context = nn.Conv2d(out_channels, out_channels, 1, bias=True)
        if deploy:
            self.switch = nn.Conv2d(in_channels, 1, SWITCH_POOL, stride=stride, bias=True)
            self.reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride, self.padding, self.dilation,
                                     groups, bias=True)
            self.reparam_1 = nn.Conv2d(in_channels, out_channels, kernel_size, stride, self.padding_l,
                                       self.dilation_l, groups, bias=True)
            self.weight = self.weight_diff = self.bias = None
            return
        self.switch = nn.Conv2d(in_channels, 1, 1, stride=stride, bias=True)
        # mmdet's init: switch starts at 1 (small dilation only), contexts at 0.
        assert self.switch.bias is not None  # bias=True, as for the contexts
        nn.init.zeros_(self.switch.weight)
        nn.init.ones_(self.switch.bias)
        for m in (self.pre_context, self.post_context):
            assert m.bias is not None
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        self.reparam = self.reparam_1 = None
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.weight_diff = nn.Parameter(torch.zeros(shape))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pre_context(F.adaptive_avg_pool2d(x, 1)).expand_as(x)
        padded = F.pad(x, [SWITCH_POOL // 2] * 4, mode="reflect")
        if self.reparam is not None:
            switch = self.switch(padded)  # the avg-pool is inside its 5x5 kernel
        else:
            switch = self.switch(F.avg_pool2d(padded, SWITCH_POOL, 1, 0))
        if self.sigmoid_switch:
            switch = torch.sigmoid(switch)
        if self.reparam is not None:
            assert self.reparam_1 is not None  # the deploy form has both
            out_s, out_l = self.reparam(x), self.reparam_1(x)
        else:
            assert self.weight is not None and self.weight_diff is not None  # the training form
            w_s = standardize_weight(self.weight)
            w_l = w_s + self.weight_diff
            out_s = F.conv2d(x, w_s, self.bias, self.stride, self.padding, self.dilation, self.groups)
            out_l = F.conv2d(x, w_l, self.bias, self.stride, self.padding_l, self.dilation_l, self.groups)
        out = switch * out_s + (1 - switch) * out_l
        return out + self.post_context(F.adaptive_avg_pool2d(out, 1)).expand_as(out)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold weight standardization into two constant convs and the avg-pool into the switch (idempotent)."""
        if self.reparam is not None:
            return
        assert self.weight is not None and self.weight_diff is not None  # the training form
        like = self.weight
        w_s = standardize_weight(like.detach().double())
        w_l = w_s + self.weight_diff.detach().double()
        bias = self.bias.detach().double() if self.bias is not None else w_s.new_zeros(w_s.shape[0])
        out_ch, in_per_group, k, _ = like.shape
        in_ch = in_per_group * self.groups

        def conv(weight: Tensor, padding: tuple[int, int], dilation: tuple[int, int]) -> nn.Conv2d:
            c = nn.Conv2d(in_ch, out_ch, k, self.stride, padding, dilation, self.groups, bias=True)
            assert c.bias is not None  # bias=True
            c.weight.copy_(weight.to(like.dtype))
            c.bias.copy_(bias.to(like.dtype))
            return c

        old = self.switch
        switch = nn.Conv2d(in_ch, 1, SWITCH_POOL, stride=pair(old.stride), bias=True)
        assert switch.bias is not None and old.bias is not None  # both built with bias=True
        switch.weight.copy_((old.weight.double() / SWITCH_POOL ** 2).expand_as(switch.weight).to(like.dtype))
        switch.bias.copy_(old.bias)
        self.reparam = conv(w_s, self.padding, self.dilation)
        self.reparam_1 = conv(w_l, self.padding_l, self.dilation_l)
        self.switch = switch
        self.weight = self.weight_diff = self.bias = None

    @torch.no_grad()
    def fold_following_bn(self, bn: nn.BatchNorm2d) -> None:
        """Absorb an eval-mode BN applied to this conv's output (deploy form only).

        BN(y) = a*y + c with y = sac + ctx(mean(sac)). Scaling both branches by a gives sac' = a*sac, so the
        post-context must see mean(sac')/a: W'[o, i] = a[o] * W[o, i] / a[i], and b' = a*b + c.
        Needs every a != 0 (a BN with a zero gamma cannot be folded through the context; it raises).
        """
        if self.reparam is None or self.reparam_1 is None:
            raise RuntimeError("fold_following_bn needs the deploy form; call reparameterize() first")
        a, c = bn_scale_shift(bn)
        if bool((a.abs() < 1e-12).any()):
            raise ValueError("BN with a zero scale cannot be folded through SAConv's post-context")
        col = a.reshape(-1, 1, 1, 1)
        for conv in (self.reparam, self.reparam_1):
            assert conv.bias is not None  # the deploy convs have one, as the post-context has
            dtype = conv.weight.dtype
            conv.weight.copy_((conv.weight.double() * col).to(dtype))
            conv.bias.copy_((conv.bias.double() * a).to(dtype))
        assert self.post_context.bias is not None
        dtype = self.post_context.weight.dtype
        pw = self.post_context.weight.double()
        self.post_context.weight.copy_((pw * col / a.reshape(1, -1, 1, 1)).to(dtype))
        self.post_context.bias.copy_((self.post_context.bias.double() * a + c).to(dtype))


class SACBasicBlock(nn.Module):
    """ResNet basic block whose first conv is SAConv: SAC(stride)-BN-ReLU, conv3x3+BN, + shortcut, ReLU.

    Deploy form: `conv1` (SAConv with BN folded, no `bn1`), `conv2.conv`, `shortcut.conv`.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, deploy: bool = False) -> None:
        super().__init__()
        self.conv1 = SAConv2d(in_ch, out_ch, 3, stride, deploy=deploy)
        self.bn1 = None if deploy else nn.BatchNorm2d(out_ch)
        self.act1 = nn.ReLU()
        self.conv2 = ConvBN(out_ch, out_ch, 3, deploy=deploy)
        self.shortcut = None if (in_ch == out_ch and stride == 1) else ConvBN(in_ch, out_ch, 1, stride, deploy=deploy)
        self.act2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(x)
        if self.bn1 is not None:
            y = self.bn1(y)
        y = self.conv2(self.act1(y))
        return self.act2(y + (x if self.shortcut is None else self.shortcut(x)))

    def reparameterize(self) -> None:
        reparameterize_children(self)
        if self.bn1 is not None:
            self.conv1.fold_following_bn(self.bn1)
            self.bn1 = None


class SACResNet(nn.Module):
    """stem conv+BN+ReLU (stride 2) -> SAC basic blocks -> classifier head."""

    def __init__(self, widths=(16, 32, 64), depths=(1, 1, 2), num_classes: int = 10, deploy: bool = False) -> None:
        super().__init__()
        self.stem = ConvBN(3, widths[0], 3, 2, deploy=deploy)
        self.stem_act = nn.ReLU()
        blocks, in_ch = [], widths[0]
        for i, (w, d) in enumerate(zip(widths, depths)):
            for j in range(d):
                blocks.append(SACBasicBlock(in_ch, w, 2 if (i > 0 and j == 0) else 1, deploy))
                in_ch = w
        self.blocks = nn.Sequential(*blocks)
        self.head = ClassifierHead(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem_act(self.stem(x))))


@register_model(input_shape=(1, 3, 64, 64), num_classes=10)
def saconv_resnet_tiny(*, num_classes: int = 10, deploy: bool = False, **kw: Any) -> SACResNet:
    """A tiny ResNet (16-32-64, 4 basic blocks) whose first conv in each block is SAConv."""
    return SACResNet(num_classes=num_classes, deploy=deploy, **kw)
