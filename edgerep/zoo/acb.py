"""ACNet's Asymmetric Convolution Block (Ding et al., ICCV 2019): kxk + 1xk + kx1, each with BN, summed.

The 1xk branch has padding (ph - centre, pw) and the kx1 branch (ph, pw - centre): the trap is to swap
them (PyTorch's Conv2d padding is (H, W), F.pad's is (W..., H...)). Deploy form: one `reparam` conv.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn
from torch import Tensor

from edgerep.zoo.common import ConvBN, IntOr2, ReparamBlock, TinyRepResNet, pad_kernel, pair, same_padding
from edgerep.zoo.registry import register_model


class ACBlock(ReparamBlock):
    """Asymmetric conv block: square kxk+BN, horizontal 1xk+BN, vertical kx1+BN, summed (no activation)."""

    branches = ("square", "hor", "ver")

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: IntOr2 = 1,
        padding: IntOr2 | None = None, dilation: IntOr2 = 1, groups: int = 1, deploy: bool = False,
    ) -> None:
        super().__init__()
        k = kernel_size
        dh, dw = pair(dilation)
        ch, cw = same_padding(k, (dh, dw))
        ph, pw = (ch, cw) if padding is None else pair(padding)
        if min(ph, pw) < 0:
            raise ValueError(f"padding {padding}: must be >= 0")
        self.stride, self.padding, self.dilation, self.groups = pair(stride), (ph, pw), (dh, dw), groups
        if deploy:
            self.reparam = nn.Conv2d(in_channels, out_channels, k, stride, (ph, pw), (dh, dw), groups, bias=True)
            self.square = self.hor = self.ver = None
        else:
            self.reparam = None
            self.square = ConvBN(in_channels, out_channels, (k, k), stride, (ph, pw), (dh, dw), groups)
            # 1 x k: its single row is the kxk's centre row -> H padding shifts by the centre offset.
            self.hor = ConvBN(in_channels, out_channels, (1, k), stride, (ph - ch, pw), (1, dw), groups)
            # k x 1: its single column is the centre column -> W padding shifts.
            self.ver = ConvBN(in_channels, out_channels, (k, 1), stride, (ph, pw - cw), (dh, 1), groups)

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam is not None:
            return self.reparam(x)
        assert self.square is not None and self.hor is not None and self.ver is not None  # the training form
        return self.square(x) + self.hor(x) + self.ver(x)

    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        assert self.square is not None and self.hor is not None and self.ver is not None  # the training form
        k, b = self.square.fused_kernel_bias()
        kh, kw = k.shape[2:]
        for branch in (self.hor, self.ver):
            kb, bb = branch.fused_kernel_bias()
            k, b = k + pad_kernel(kb, kh, kw), b + bb
        return k, b



def _acb(in_ch: int, out_ch: int, *, stride: int, groups: int, deploy: bool) -> ACBlock:
    return ACBlock(in_ch, out_ch, 3, stride, groups=groups, deploy=deploy)


@register_model(input_shape=(1, 3, 64, 64), num_classes=10)
def acb_resnet_tiny(*, num_classes: int = 10, deploy: bool = False, groups: int = 1, **kw: Any) -> TinyRepResNet:
    """A tiny ResNet (16-32-64, 3 basic blocks) whose 3x3 convs are ACNet blocks."""
    return TinyRepResNet(_acb, groups=groups, num_classes=num_classes, deploy=deploy, **kw)
