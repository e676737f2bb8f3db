"""Small pieces shared by the zoo: kernel algebra for our own deploy code, ConvBN, a classifier head,
a tiny residual skeleton, and `reparameterize_model`.

The kernel algebra here is deliberately the zoo's own (not edgerep.fuse): a block's own deploy code and
the generic fx fuser are two independent routes, and their agreement is the strongest test we have.
All fusion arithmetic runs in float64 and is cast back at the end, so fused models match to ~1e-7.

Deploy-form convention (so checkpoints written by the generic fuser load into `deploy=True` models):
  * a multi-branch block keeps ONE `nn.Conv2d(bias=True)` named `reparam` plus its nonlinear parts;
  * a ConvBN keeps only `conv` (now with a bias), no `bn`.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

IntOr2 = int | tuple[int, int]


def pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def same_padding(kernel_size: IntOr2, dilation: IntOr2 = 1) -> tuple[int, int]:
    """The padding that keeps a stride-1 conv's size: dilation*(k-1)/2 per dimension (k must be odd)."""
    (kh, kw), (dh, dw) = pair(kernel_size), pair(dilation)
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel {kh}x{kw}: re-parameterizable branches need odd kernel sizes to share a centre")
    return dh * (kh - 1) // 2, dw * (kw - 1) // 2


def crop_and_pad(padding: IntOr2) -> tuple[list[int] | None, tuple[int, int]]:
    """Split a possibly negative padding into an input crop (F.pad with negative sizes) and a conv padding.

    Negative padding arises when a small branch is aligned to the centre of a kxk conv that uses less
    than 'same' padding (e.g. padding 0): the 1x1 branch must then skip the outer rows/columns.
    """
    ph, pw = pair(padding)
    crop = None if ph >= 0 and pw >= 0 else [min(pw, 0), min(pw, 0), min(ph, 0), min(ph, 0)]
    return crop, (max(ph, 0), max(pw, 0))


# --- kernel algebra (float64 in, float64 out) ------------------------------------------------------------


def conv_kernel_bias(conv: nn.Conv2d) -> tuple[Tensor, Tensor]:
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else w.new_zeros(w.shape[0])
    return w, b


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BN as y = x*scale + shift per channel, from running statistics (never batch statistics)."""
    if bn.running_mean is None or bn.running_var is None:
        raise RuntimeError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    std = torch.sqrt(bn.running_var.detach().double() + bn.eps)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    return scale, beta - bn.running_mean.detach().double() * scale


def fold_bn(kernel: Tensor, bias: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """BN after a conv: W*g/s per output channel, b' = beta + (b - mean)*g/s."""
    scale, shift = bn_scale_shift(bn)
    return kernel * scale.reshape(-1, 1, 1, 1), bias * scale + shift


def pad_kernel(kernel: Tensor, kh: int, kw: int) -> Tensor:
    """Zero-pad a smaller kernel to kh x kw around its centre (F.pad order is W first, then H)."""
    dh, dw = kh - kernel.shape[2], kw - kernel.shape[3]
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(f"cannot centre a {tuple(kernel.shape[2:])} kernel in {kh}x{kw}")
    return F.pad(kernel, [dw // 2, dw // 2, dh // 2, dh // 2])


def identity_kernel(channels: int, groups: int, kh: int, kw: int, value: float = 1.0) -> Tensor:
    """W[i, i % (C/groups), centre] = value: identity (value 1) or a per-channel avg-pool (1/k^2, full kernel)."""
    per_group = channels // groups
    k = torch.zeros(channels, per_group, kh, kw, dtype=torch.float64)
    idx = torch.arange(channels)
    k[idx, idx % per_group, kh // 2, kw // 2] = value
    return k


def avg_pool_kernel(channels: int, groups: int, kh: int, kw: int) -> Tensor:
    """avg_pool2d(k) (count_include_pad=True) as a grouped conv kernel: 1/(kh*kw) on each channel's diagonal."""
    per_group = channels // groups
    k = torch.zeros(channels, per_group, kh, kw, dtype=torch.float64)
    idx = torch.arange(channels)
    k[idx, idx % per_group] = 1.0 / (kh * kw)
    return k


def compose_1x1_kxk(w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """A 1x1 conv (w1, b1) followed by a kxk conv (w2, b2), both with `groups`, as one kxk conv.

    Exact only if the tensor between them is padded with its own per-channel bias b1 (not zeros).
    """
    m, cout = w1.shape[0], w2.shape[0]
    kernels, biases = [], []
    for g in range(groups):
        a = w1[g * m // groups:(g + 1) * m // groups, :, 0, 0]  # (M/g, Cin/g)
        w2g = w2[g * cout // groups:(g + 1) * cout // groups]  # (Cout/g, M/g, kh, kw)
        kernels.append(torch.einsum("omhw,mi->oihw", w2g, a))
        biases.append(torch.einsum("omhw,m->o", w2g, b1[g * m // groups:(g + 1) * m // groups]))
    return torch.cat(kernels, 0), torch.cat(biases, 0) + b2


def bn_zero_response(bn: nn.BatchNorm2d) -> Tensor:
    """What an eval-mode BN outputs for a zero input, shaped (1, C, 1, 1); traceable (used in forward)."""
    if bn.running_mean is None or bn.running_var is None:
        raise RuntimeError("a BatchNorm without running statistics (track_running_stats=False) has no fixed zero response")
    out = -bn.running_mean / torch.sqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        out = out * bn.weight
    if bn.bias is not None:
        out = out + bn.bias
    return out.reshape(1, -1, 1, 1)


def const_pad(y: Tensor, pad: Sequence[int], value: Tensor) -> Tensor:
    """Pad `y` with a per-channel constant (fx-friendly: F.pad only pads with one scalar)."""
    return F.pad(y - value, list(pad)) + value


def new_reparam_conv(
    kernel: Tensor, bias: Tensor, *, stride: IntOr2, padding: IntOr2, dilation: IntOr2, groups: int,
    like: Tensor,
) -> nn.Conv2d:
    """The single deploy conv holding a fused (kernel, bias), on the device and dtype of `like`."""
    out_ch, in_per_group, kh, kw = kernel.shape
    conv = nn.Conv2d(in_per_group * groups, out_ch, (kh, kw), stride=stride, padding=padding,
                     dilation=dilation, groups=groups, bias=True, device=like.device, dtype=like.dtype)
    assert conv.bias is not None  # bias=True
    with torch.no_grad():
        conv.weight.copy_(kernel.to(like.dtype))
        conv.bias.copy_(bias.to(like.dtype))
    return conv


class ReparamBlock(nn.Module):
    """A block whose linear branches fold into one conv, `self.reparam`, in its deploy form.

    Subclasses list their branch attributes in `branches` and compute the folded kernel in
    `fused_kernel_bias()`; they keep `stride`, `padding`, `dilation` and `groups` for the fused conv.
    """

    branches: tuple[str, ...] = ()
    reparam: nn.Conv2d | None
    # the fused conv's geometry, set by each subclass
    stride: IntOr2
    padding: IntOr2
    dilation: IntOr2
    groups: int

    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Switch to the deploy form in place (running BN statistics; a second call does nothing)."""
        if self.reparam is not None:
            return
        like = next(p for name in self.branches if isinstance(getattr(self, name), nn.Module)
                    for p in getattr(self, name).parameters())
        k, b = self.fused_kernel_bias()
        self.reparam = new_reparam_conv(k, b, stride=self.stride, padding=self.padding, dilation=self.dilation,
                                        groups=self.groups, like=like)
        for name in self.branches:
            setattr(self, name, None)


# --- modules ---------------------------------------------------------------------------------------------


class ConvBN(nn.Module):
    """conv (no bias) + BN; deploy form: `conv` with bias, no `bn`.

    `padding` may be negative per dimension (the input is cropped first); default is 'same' padding.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: IntOr2, stride: IntOr2 = 1,
        padding: IntOr2 | None = None, dilation: IntOr2 = 1, groups: int = 1, deploy: bool = False,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = same_padding(kernel_size, dilation)
        self.crop, conv_pad = crop_and_pad(padding)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, conv_pad, dilation, groups,
                              bias=deploy)
        self.bn = None if deploy else nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.crop is not None:
            x = F.pad(x, self.crop)
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return x

    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """(kernel, bias) in float64 of conv+BN; valid in both forms."""
        w, b = conv_kernel_bias(self.conv)
        return (w, b) if self.bn is None else fold_bn(w, b, self.bn)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.bn is None:
            return
        k, b = self.fused_kernel_bias()
        c = self.conv
        assert not isinstance(c.padding, str)  # built with numbers (crop_and_pad)
        self.conv = new_reparam_conv(k, b, stride=pair(c.stride), padding=pair(c.padding),
                                     dilation=pair(c.dilation), groups=c.groups, like=c.weight)
        self.bn = None


class ClassifierHead(nn.Module):
    """adaptive avg pool -> flatten -> Linear."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(x)))


def reparameterize_children(module: nn.Module) -> None:
    """Convert every sub-module that knows how (parents before children), leaving `module` itself alone."""
    for child in list(module.children()):
        _reparameterize_tree(child)


def _reparameterize_tree(module: nn.Module) -> None:
    fn = getattr(module, "reparameterize", None)
    if callable(fn):
        fn()
    # Children are read after the call: a converted block's branches are gone, its deploy parts remain.
    reparameterize_children(module)


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return the deploy form of `model`: every module with `reparameterize()` converted in place.

    Deep-copies unless `inplace`. The result is switched to eval mode, and BNs are folded with their
    running statistics, never batch statistics, so a model passed in train mode fuses to exactly what the
    same model computes in eval mode. With inplace=False the caller's model keeps its mode.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    _reparameterize_tree(model)
    return model


ConvBlockFactory = Callable[..., nn.Module]  # (in_ch, out_ch, *, stride, groups, deploy) -> block


class RepBasicBlock(nn.Module):
    """A ResNet basic block built from a re-parameterizable conv(+BN) block: conv1-ReLU-conv2 (+ shortcut), ReLU."""

    def __init__(self, make_conv: ConvBlockFactory, in_ch: int, out_ch: int, stride: int, groups: int,
                 deploy: bool) -> None:
        super().__init__()
        self.conv1 = make_conv(in_ch, out_ch, stride=stride, groups=1, deploy=deploy)
        self.act1 = nn.ReLU()
        self.conv2 = make_conv(out_ch, out_ch, stride=1, groups=groups, deploy=deploy)
        self.shortcut = None if (in_ch == out_ch and stride == 1) else ConvBN(in_ch, out_ch, 1, stride,
                                                                              deploy=deploy)
        self.act2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.act1(self.conv1(x)))
        s = x if self.shortcut is None else self.shortcut(x)
        return self.act2(y + s)

    def reparameterize(self) -> None:
        reparameterize_children(self)


class TinyRepResNet(nn.Module):
    """stem (block, stride 2) + ReLU, stages of RepBasicBlocks (stride 2 between stages), classifier head."""

    def __init__(self, make_conv: ConvBlockFactory, *, widths: Sequence[int] = (16, 32, 64),
                 depths: Sequence[int] = (1, 1, 1), groups: int = 1, num_classes: int = 10,
                 deploy: bool = False) -> None:
        super().__init__()
        self.stem = make_conv(3, widths[0], stride=2, groups=1, deploy=deploy)
        self.stem_act = nn.ReLU()
        stages, in_ch = [], widths[0]
        for i, (w, d) in enumerate(zip(widths, depths)):
            blocks = []
            for j in range(d):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(RepBasicBlock(make_conv, in_ch, w, stride, groups, deploy))
                in_ch = w
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem_act(self.stem(x))))
