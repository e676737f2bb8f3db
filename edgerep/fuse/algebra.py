"""Linear algebra on convolutions: every re-parameterization is a composition of these moves.

A `ConvRep` describes a tensor as one convolution of a source tensor:
    out = conv2d(zero_pad(src, pad), weight, stride, groups) + bias
Each move returns a new ConvRep or raises `NotExact` with the reason the result would differ from the
original somewhere (usually at the border). Kernels are kept in float64 while composing, so a chain
of folds loses nothing before the final cast.

No library does this generically (torch.ao's fuse_modules only folds conv+BN pairs), hence by hand.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F

Pad = tuple[int, int, int, int]  # top, bottom, left, right
Size2 = int | Sequence[int]  # a size as torch takes it: one int, or one per dimension (a single one applies to both)


class NotExact(Exception):
    """The move would not compute the same function everywhere; the message says why."""


@dataclass(frozen=True)
class ConvRep:
    weight: torch.Tensor  # [out, in/groups, kh, kw], float64
    bias: torch.Tensor  # [out], float64
    stride: tuple[int, int]
    pad: Pad
    groups: int

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def kernel(self) -> tuple[int, int]:
        return self.weight.shape[2], self.weight.shape[3]

    def is_identity(self) -> bool:
        return (self.kernel == (1, 1) and self.stride == (1, 1) and not any(self.pad)
                and self.groups == self.out_channels == self.in_channels
                and bool((self.weight == 1).all()) and not bool(self.bias.any()))

    def is_pointwise(self) -> bool:
        return self.kernel == (1, 1) and self.stride == (1, 1)

    def macs(self, out_numel_per_channel: int, batch: int = 1) -> int:
        # A dilated kernel is held dense (mostly zeros); it is emitted dilated again, so only lattice taps cost.
        (kh, kw), (dh, dw) = self.kernel, lattice(self.weight)
        taps = ((kh - 1) // dh + 1) * ((kw - 1) // dw + 1)
        return batch * self.out_channels * (self.in_channels // self.groups) * taps * out_numel_per_channel


# --- constructors -----------------------------------------------------------------------------------


def identity(channels: int) -> ConvRep:
    """x itself, as a depthwise 1x1 conv with weight 1."""
    return ConvRep(torch.ones(channels, 1, 1, 1, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64),
                   (1, 1), (0, 0, 0, 0), channels)


def _pair(v: Size2) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(x) for x in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


def conv(weight: torch.Tensor, bias: torch.Tensor | None, stride: Size2, padding: Size2 | str, dilation: Size2,
         groups: int) -> ConvRep:
    """A Conv2d with zero padding. Dilation is spread into a dense (sparse-valued) kernel."""
    w = weight.detach().to(torch.float64)
    dh, dw = _pair(dilation)
    if (dh, dw) != (1, 1):
        kh, kw = w.shape[2:]
        dense = torch.zeros(w.shape[0], w.shape[1], (kh - 1) * dh + 1, (kw - 1) * dw + 1, dtype=torch.float64)
        dense[:, :, ::dh, ::dw] = w
        w = dense
    kh, kw = w.shape[2:]
    if isinstance(padding, str):
        if padding == "valid":
            pad: Pad = (0, 0, 0, 0)
        elif padding == "same":
            if _pair(stride) != (1, 1):
                raise NotExact("padding='same' with stride > 1")
            # PyTorch puts the odd extra pixel at the end (bottom/right).
            pad = ((kh - 1) // 2, kh - 1 - (kh - 1) // 2, (kw - 1) // 2, kw - 1 - (kw - 1) // 2)
        else:
            raise NotExact(f"padding={padding!r}")
    else:
        ph, pw = _pair(padding)
        pad = (ph, ph, pw, pw)
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.detach().to(torch.float64).clone()
    return ConvRep(w, b, _pair(stride), pad, int(groups))


def avg_pool(channels: int, kernel_size: Size2, stride: Size2 | None, padding: Size2, ceil_mode: bool,
             count_include_pad: bool, divisor_override: int | None = None) -> ConvRep:
    """Average pooling as a depthwise conv with 1/(kh*kw) entries: exact only when padded zeros count."""
    if ceil_mode:
        raise NotExact("avg-pool with ceil_mode=True")
    if divisor_override:
        raise NotExact("avg-pool with divisor_override")
    kh, kw = _pair(kernel_size)
    ph, pw = _pair(padding)
    if (ph or pw) and not count_include_pad:
        raise NotExact("avg-pool with padding and count_include_pad=False divides border pixels differently")
    step = _pair(stride if stride else kernel_size)
    w = torch.full((channels, 1, kh, kw), 1.0 / (kh * kw), dtype=torch.float64)
    return ConvRep(w, torch.zeros(channels, dtype=torch.float64), step, (ph, ph, pw, pw), channels)


def lattice(weight: torch.Tensor) -> tuple[int, int]:
    """The largest dilation (dh, dw) whose grid holds every nonzero tap of a dense kernel (1 if none).

    `conv` spreads a dilated kernel into a dense one; emitting it dense would multiply its cost (a 3x3 with
    dilation 3 is a 7x7), so the fused conv is emitted with this dilation and the kernel's grid taps.
    """
    taps = weight.detach().abs().sum(dim=(0, 1)) != 0  # [kh, kw]

    def best(mask: torch.Tensor) -> int:
        k, idx = mask.numel(), torch.nonzero(mask).flatten().tolist()
        for d in range(k - 1, 1, -1):
            if idx and (k - 1) % d == 0 and all(i % d == 0 for i in idx):
                return d
        return 1

    return best(taps.any(dim=1)), best(taps.any(dim=0))


# --- groups -----------------------------------------------------------------------------------------


def regroup(rep: ConvRep, groups: int) -> ConvRep:
    """The same conv written with fewer groups (`groups` must divide rep.groups): block-diagonal kernel."""
    if groups == rep.groups:
        return rep
    if rep.groups % groups:
        raise ValueError(f"cannot regroup {rep.groups} groups into {groups}")
    g_old, out_c, in_c = rep.groups, rep.out_channels, rep.in_channels
    kh, kw = rep.kernel
    w = torch.zeros(out_c, in_c // groups, kh, kw, dtype=torch.float64)
    out_per, in_per = out_c // g_old, in_c // g_old
    in_per_new = in_c // groups
    for j in range(g_old):
        rows = slice(j * out_per, (j + 1) * out_per)
        col0 = (j * in_per) % in_per_new  # position of group j's inputs inside its new, wider group
        w[rows, col0:col0 + in_per] = rep.weight[rows]
    return replace(rep, weight=w, groups=groups)


def compact_groups(rep: ConvRep) -> ConvRep:
    """Find the most groups the kernel is block-diagonal in (so depthwise stays depthwise)."""
    best = rep.groups
    out_c, in_c = rep.out_channels, rep.in_channels
    g_max = math.gcd(out_c, in_c)
    if g_max == rep.groups:
        return rep
    dense = regroup(rep, 1).weight if rep.groups > 1 else rep.weight
    nonzero = dense.abs().sum(dim=(2, 3)) != 0  # [out, in]
    if bool(nonzero.all()):
        return rep
    # Each output row's nonzero input columns must sit inside its own group's block: compare the first and
    # last nonzero column of every row with the block bounds, once per candidate (O(out) per candidate).
    cols = torch.arange(in_c)
    has_any = nonzero.any(dim=1)
    first = torch.where(nonzero, cols, in_c).min(dim=1).values
    last = torch.where(nonzero, cols, -1).max(dim=1).values
    rows = torch.arange(out_c)
    for g in sorted((d for d in range(rep.groups + 1, g_max + 1) if g_max % d == 0 and d % rep.groups == 0),
                    reverse=True):
        block = rows // (out_c // g)
        lo, hi = block * (in_c // g), (block + 1) * (in_c // g)
        if bool((~has_any | ((first >= lo) & (last < hi))).all()):
            best = g
            break
    if best == rep.groups:
        return rep
    op, ip = out_c // best, in_c // best
    w = torch.stack([dense[j * op:(j + 1) * op, j * ip:(j + 1) * ip] for j in range(best)]).reshape(
        out_c, ip, *rep.kernel)
    return replace(rep, weight=w, groups=best)


# --- moves ------------------------------------------------------------------------------------------


def affine(rep: ConvRep, scale: torch.Tensor | float, shift: torch.Tensor | float) -> ConvRep:
    """scale * rep + shift, per output channel (BN fold, per-channel scale, bias add)."""
    s = torch.as_tensor(scale, dtype=torch.float64).reshape(-1)
    t = torch.as_tensor(shift, dtype=torch.float64).reshape(-1)
    c = rep.out_channels
    if s.numel() not in (1, c) or t.numel() not in (1, c):
        raise NotExact("the constant is not per-channel")
    s = s.expand(c) if s.numel() == 1 else s
    t = t.expand(c) if t.numel() == 1 else t
    return replace(rep, weight=rep.weight * s.view(-1, 1, 1, 1), bias=rep.bias * s + t)


def batch_norm(rep: ConvRep, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None,
               bias: torch.Tensor | None, eps: float) -> ConvRep:
    """Fold an eval-mode BN (running statistics) that follows rep."""
    return affine(rep, *bn_scale_shift(mean, var, weight, bias, eps))


def bn_scale_shift(mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BN as y = x * scale + shift per channel (float64)."""
    mean = torch.as_tensor(mean, dtype=torch.float64)
    std = torch.sqrt(torch.as_tensor(var, dtype=torch.float64) + eps)
    gamma = torch.ones_like(std) if weight is None else torch.as_tensor(weight, dtype=torch.float64)
    beta = torch.zeros_like(std) if bias is None else torch.as_tensor(bias, dtype=torch.float64)
    scale = gamma / std
    return scale, beta - mean * scale


def _out_size(n: int, k: int, s: int, lo: int, hi: int) -> int:
    return (n + lo + hi - k) // s + 1


def _same_sizes(f, g, start: int = 1, stop: int = 97) -> bool:
    """Two output-size functions agree at every input size where the original is defined."""
    for n in range(start, stop):
        a = f(n)
        if a is None or a < 1:
            continue
        if g(n) != a:
            return False
    return True


def compose(outer: ConvRep, inner: ConvRep) -> ConvRep:
    """outer(inner(x)) as one conv.

    Exact when the outer conv reads only real outputs of the inner one (outer has no padding), or when the
    inner conv at a padded position would itself give zero (a 1x1 with zero bias).
    """
    if outer.in_channels != inner.out_channels:
        raise ValueError("channel mismatch in compose")
    if inner.is_identity():
        return outer
    if any(outer.pad) and not (inner.kernel == (1, 1) and not inner.bias.abs().max().item() > 0):
        raise NotExact("the second conv zero-pads the first one's output, whose border is not zero (a bias or a "
                       "kernel larger than 1x1 sits between them)")
    s1h, s1w = inner.stride
    s2h, s2w = outer.stride
    k1h, k1w = inner.kernel
    k2h, k2w = outer.kernel
    t1, b1, l1, r1 = inner.pad
    t2, b2, l2, r2 = outer.pad
    kh, kw = (k2h - 1) * s1h + k1h, (k2w - 1) * s1w + k1w
    pad = (t1 + t2 * s1h, b1 + b2 * s1h, l1 + l2 * s1w, r1 + r2 * s1w)
    stride = (s1h * s2h, s1w * s2w)
    for (k1, s1, lo1, hi1, k2, s2, lo2, hi2, k, s, lo, hi) in (
        (k1h, s1h, t1, b1, k2h, s2h, t2, b2, kh, stride[0], pad[0], pad[1]),
        (k1w, s1w, l1, r1, k2w, s2w, l2, r2, kw, stride[1], pad[2], pad[3]),
    ):
        def two_step(n, k1=k1, s1=s1, lo1=lo1, hi1=hi1, k2=k2, s2=s2, lo2=lo2, hi2=hi2):
            m = _out_size(n, k1, s1, lo1, hi1)
            return None if m < 1 else _out_size(m, k2, s2, lo2, hi2)

        if not _same_sizes(two_step, lambda n, k=k, s=s, lo=lo, hi=hi: _out_size(n, k, s, lo, hi)):
            raise NotExact("the strides and paddings do not compose to one conv at every input size")

    g = math.gcd(outer.groups, inner.groups)
    o, i = regroup(outer, g), regroup(inner, g)
    out_per, mid_per, in_per = o.out_channels // g, i.out_channels // g, i.in_channels // g
    w = torch.zeros(g, out_per, in_per, kh, kw, dtype=torch.float64)
    w2 = o.weight.reshape(g, out_per, mid_per, k2h, k2w)
    w1 = i.weight.reshape(g, mid_per, in_per, k1h, k1w)
    # out[y] = sum_a W2[a] sum_c W1[c] x[(y*s2 + a)*s1 + c - p]: tap a of the outer kernel lands at a*s1.
    for a in range(k2h):
        for b in range(k2w):
            w[:, :, :, a * s1h:a * s1h + k1h, b * s1w:b * s1w + k1w] += torch.einsum(
                "gom,gmihw->goihw", w2[:, :, :, a, b], w1)
    w = w.reshape(o.out_channels, in_per, kh, kw)
    bias = o.bias + torch.einsum("omhw,m->o", regroup(o, 1).weight, i.bias)
    return ConvRep(w, bias, stride, pad, g)


def _offsets(rep: ConvRep) -> tuple[int, int, int, int]:
    """Kernel extent relative to y*stride: rows [-top, kh-1-top], cols [-left, kw-1-left]."""
    kh, kw = rep.kernel
    top, _, left, _ = rep.pad
    return -top, kh - 1 - top, -left, kw - 1 - left


def _align(reps: list[ConvRep]) -> tuple[list[ConvRep], int]:
    """Pad every kernel to one common window (same centre) and groups; checks they fit one conv."""
    if len({r.stride for r in reps}) != 1:
        raise NotExact("branches with different strides")
    offs = [_offsets(r) for r in reps]
    lo_h, hi_h = min(o[0] for o in offs), max(o[1] for o in offs)
    lo_w, hi_w = min(o[2] for o in offs), max(o[3] for o in offs)
    # Output size is (n - 1 + bottom - hi)//s + 1: every branch must give the same size for every n.
    tails_h = {r.pad[1] - o[1] for r, o in zip(reps, offs)}
    tails_w = {r.pad[3] - o[3] for r, o in zip(reps, offs)}
    if len(tails_h) != 1 or len(tails_w) != 1:
        raise NotExact("branches whose output sizes differ at some input size (not centred alike)")
    bottom, right = hi_h + tails_h.pop(), hi_w + tails_w.pop()
    if bottom < 0 or right < 0:
        raise NotExact("negative padding (a crop)")
    kh, kw = hi_h - lo_h + 1, hi_w - lo_w + 1
    pad = (-lo_h, bottom, -lo_w, right)
    g = 0
    for r in reps:
        g = math.gcd(g, r.groups)
    out = []
    for r, o in zip(reps, offs):
        r = regroup(r, g)
        w = torch.zeros(r.out_channels, r.weight.shape[1], kh, kw, dtype=torch.float64)
        top, left = o[0] - lo_h, o[2] - lo_w
        w[:, :, top:top + r.kernel[0], left:left + r.kernel[1]] = r.weight
        out.append(replace(r, weight=w, pad=pad))
    return out, g


def add(a: ConvRep, b: ConvRep, sign: float = 1.0) -> ConvRep:
    """a + sign*b: parallel branches on the same input."""
    if a.in_channels != b.in_channels or a.out_channels != b.out_channels:
        raise NotExact("branches with different channel counts")
    (a2, b2), _ = _align([a, b])
    return replace(a2, weight=a2.weight + sign * b2.weight, bias=a2.bias + sign * b2.bias)


def concat(reps: list[ConvRep]) -> ConvRep:
    """Channel concatenation of branches on the same input: kernels stacked along output channels."""
    aligned, _ = _align(reps)
    dense = [regroup(r, 1) for r in aligned]
    return replace(dense[0], weight=torch.cat([r.weight for r in dense]), bias=torch.cat([r.bias for r in dense]),
                   groups=1)


def channel_slice(rep: ConvRep, start: int, stop: int) -> ConvRep:
    dense = regroup(rep, 1)
    return replace(dense, weight=dense.weight[start:stop].clone(), bias=dense.bias[start:stop].clone())


def zero_pad(rep: ConvRep, pads: tuple[int, int, int, int], fill: float | torch.Tensor = 0.0) -> ConvRep:
    """F.pad(rep, (left, right, top, bottom), value=fill) as part of the conv.

    Exact when rep is a stride-1 1x1 conv whose bias equals the fill value: a 1x1 conv at a padded
    position reads only zeros and yields its bias (DBB's "pad with the BN bias" trick is this case).
    """
    left, right, top, bottom = pads
    if min(pads) < 0:
        raise NotExact("negative padding (a crop)")
    if not rep.is_pointwise():
        raise NotExact("padding after a kernel larger than 1x1 (the border would read real pixels)")
    fill_t = torch.as_tensor(fill, dtype=torch.float64).reshape(-1)
    # The model computes its fill value in float32 (e.g. `F.pad(y - c) + c`), we compose in float64:
    # allow float32 rounding relative to the magnitudes involved, not more.
    scale = max(1.0, rep.weight.abs().max().item(), rep.bias.abs().max().item(), fill_t.abs().max().item())
    if (rep.bias - fill_t).abs().max().item() > 1e-5 * scale:
        raise NotExact("padding with a value that differs from the bias before it")
    pad_top, pad_bottom, pad_left, pad_right = rep.pad
    return replace(rep, pad=(pad_top + top, pad_bottom + bottom, pad_left + left, pad_right + right))


def trim_zero_border(rep: ConvRep) -> ConvRep:
    """Drop all-zero kernel rows/columns at the edges where padding allows it (keeps 1x1 a 1x1)."""
    w, (top, bottom, left, right) = rep.weight, rep.pad
    while w.shape[2] > 1 and top > 0 and bottom > 0 and not w[:, :, 0].any() and not w[:, :, -1].any():
        w, top, bottom = w[:, :, 1:-1], top - 1, bottom - 1
    while w.shape[3] > 1 and left > 0 and right > 0 and not w[:, :, :, 0].any() and not w[:, :, :, -1].any():
        w, left, right = w[:, :, :, 1:-1], left - 1, right - 1
    if w is rep.weight:
        return rep
    return replace(rep, weight=w.contiguous(), pad=(top, bottom, left, right))


def apply(rep: ConvRep, x: torch.Tensor) -> torch.Tensor:
    """Run the rep (float64) on x: for tests and checks."""
    top, bottom, left, right = rep.pad
    y = F.pad(x.to(torch.float64), (left, right, top, bottom))
    return F.conv2d(y, rep.weight, rep.bias, rep.stride, 0, 1, rep.groups)
