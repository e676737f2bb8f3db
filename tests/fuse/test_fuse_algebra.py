"""edgerep.fuse.algebra: every move checked against F.conv2d (and friends) on random float64 inputs.

Each test builds the original computation with torch's own ops, builds the same thing with the algebra,
and compares on several input sizes (odd, non-square), because the border is where a wrong move shows.
The refusals (NotExact) are checked too, and each one against a case that really would differ.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgerep.fuse import algebra
from edgerep.fuse.algebra import ConvRep, NotExact

SIZES = [(7, 7), (9, 12), (13, 10), (16, 16)]


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_same(fn_ref, rep: ConvRep, channels: int, sizes=SIZES, batch: int = 2) -> None:
    """rep computes fn_ref on inputs of every size where fn_ref is defined."""
    checked = 0
    for i, (h, w) in enumerate(sizes):
        x = rand(batch, channels, h, w, seed=i)
        try:
            ref = fn_ref(x)
        except RuntimeError:  # the original rejects this size (output would be empty)
            continue
        out = algebra.apply(rep, x)
        assert out.shape == ref.shape, (h, w)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        checked += 1
    assert checked, "no size was checked"


def conv_ref(w, b=None, stride=1, padding=0, dilation=1, groups=1):
    return lambda x: F.conv2d(x, w, b, stride, padding, dilation, groups)


# --- constructors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cin,cout,k,stride,padding,dilation,groups", [
    (4, 6, (3, 3), 1, 1, 1, 1),
    (4, 6, (3, 3), 2, 1, 1, 2),            # stride 2, groups
    (6, 6, (3, 3), 1, 2, 2, 6),            # depthwise, dilated
    (4, 8, (1, 3), 1, (0, 1), 1, 1),       # non-square kernel, non-square padding (H, W order)
    (4, 8, (3, 1), 2, (1, 0), (2, 1), 2),  # non-square dilation
    (4, 4, (5, 3), 1, (1, 2), 1, 1),       # padding not k//2
    (4, 4, (2, 4), 1, "same", 1, 1),       # even kernel: asymmetric 'same' padding
    (4, 4, (3, 3), 2, "valid", 1, 4),
])
def test_conv_matches_conv2d(cin, cout, k, stride, padding, dilation, groups):
    w, b = rand(cout, cin // groups, *k, seed=1), rand(cout, seed=2)
    rep = algebra.conv(w, b, stride, padding, dilation, groups)
    assert rep.weight.dtype == torch.float64
    assert_same(conv_ref(w, b, stride, padding, dilation, groups), rep, cin)


def test_conv_same_padding_with_stride_refused():
    with pytest.raises(NotExact, match="same"):
        algebra.conv(rand(4, 4, 3, 3), None, 2, "same", 1, 1)


def test_identity_is_identity():
    x = rand(2, 5, 9, 7)
    assert torch.equal(algebra.apply(algebra.identity(5), x), x)
    assert algebra.identity(5).is_identity()


@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (3, 2, 1), (2, 2, 0), ((3, 5), 1, (1, 2)), (3, None, 0)])
def test_avg_pool_matches(k, stride, padding):
    rep = algebra.avg_pool(4, k, stride, padding, ceil_mode=False, count_include_pad=True)
    assert_same(lambda x: F.avg_pool2d(x, k, stride, padding, count_include_pad=True), rep, 4)


def test_avg_pool_without_padding_ignores_count_include_pad():
    rep = algebra.avg_pool(3, 3, 2, 0, ceil_mode=False, count_include_pad=False)
    assert_same(lambda x: F.avg_pool2d(x, 3, 2, 0, count_include_pad=False), rep, 3)


def test_avg_pool_count_include_pad_false_with_padding_refused():
    with pytest.raises(NotExact, match="count_include_pad"):
        algebra.avg_pool(4, 3, 1, 1, ceil_mode=False, count_include_pad=False)
    # ...and the refusal is justified: the border pixels really are divided differently.
    x = rand(1, 4, 7, 7)
    a = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    b = F.avg_pool2d(x, 3, 1, 1, count_include_pad=True)
    assert not torch.allclose(a[..., 0, 0], b[..., 0, 0]) and torch.allclose(a[..., 3, 3], b[..., 3, 3])


@pytest.mark.parametrize("kwargs", [{"ceil_mode": True, "count_include_pad": True},
                                    {"ceil_mode": False, "count_include_pad": True, "divisor_override": 2}])
def test_avg_pool_other_refusals(kwargs):
    with pytest.raises(NotExact):
        algebra.avg_pool(4, 3, 2, 0, **kwargs)


# --- groups ---------------------------------------------------------------------------------------


def test_regroup_and_compact_groups_round_trip():
    w, b = rand(8, 2, 3, 3, seed=3), rand(8, seed=4)
    rep = algebra.conv(w, b, 1, 1, 1, 4)
    dense = algebra.regroup(rep, 1)
    assert dense.groups == 1 and dense.weight.shape == (8, 8, 3, 3)
    assert_same(conv_ref(w, b, 1, 1, 1, 4), dense, 8)
    back = algebra.compact_groups(dense)
    assert back.groups == 4 and torch.equal(back.weight, rep.weight)
    # A dense kernel with one off-block entry cannot be grouped.
    full = algebra.regroup(rep, 1)
    full.weight[0, 7, 1, 1] = 0.5
    assert algebra.compact_groups(full).groups == 1


# --- per-channel moves ----------------------------------------------------------------------------


def test_batch_norm_fold_matches_eval_bn():
    w, b = rand(6, 3, 3, 3, seed=5), rand(6, seed=6)
    mean, var = rand(6, seed=7), rand(6, seed=8).abs() + 0.5
    gamma, beta = rand(6, seed=9), rand(6, seed=10)
    rep = algebra.batch_norm(algebra.conv(w, b, 2, 1, 1, 1), mean, var, gamma, beta, 1e-3)
    assert_same(lambda x: F.batch_norm(F.conv2d(x, w, b, 2, 1), mean, var, gamma, beta, False, 0.0, 1e-3), rep, 3)
    # BN without affine parameters
    rep = algebra.batch_norm(algebra.conv(w, None, 1, 1, 1, 1), mean, var, None, None, 1e-5)
    assert_same(lambda x: F.batch_norm(F.conv2d(x, w, None, 1, 1), mean, var, None, None, False), rep, 3)


def test_affine_scale_and_shift():
    w = rand(4, 4, 3, 3, seed=11)
    s, t = rand(4, seed=12), rand(4, seed=13)
    rep = algebra.affine(algebra.conv(w, None, 1, 1, 1, 1), s, t)
    assert_same(lambda x: F.conv2d(x, w, None, 1, 1) * s.view(1, -1, 1, 1) + t.view(1, -1, 1, 1), rep, 4)
    with pytest.raises(NotExact):
        algebra.affine(algebra.conv(w, None, 1, 1, 1, 1), rand(3), 0.0)


# --- compose ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("inner,outer", [
    # 1x1 (zero bias) then a padded kxk, with groups on both sides
    (dict(cin=4, cout=6, k=(1, 1), stride=1, padding=0, groups=2, bias=False),
     dict(cout=6, k=(3, 3), stride=1, padding=1, groups=3, bias=True)),
    # 1x1 stride 2 (zero bias) then a padded non-square kernel
    (dict(cin=4, cout=4, k=(1, 1), stride=2, padding=0, groups=1, bias=False),
     dict(cout=5, k=(3, 1), stride=1, padding=(1, 0), groups=1, bias=True)),
    # padded kxk (with bias) then an unpadded kxk stride 2: the outer conv reads only real outputs
    (dict(cin=3, cout=4, k=(3, 3), stride=1, padding=1, groups=1, bias=True),
     dict(cout=6, k=(3, 3), stride=2, padding=0, groups=2, bias=True)),
    # both strided, non-square
    (dict(cin=3, cout=4, k=(2, 3), stride=2, padding=(0, 1), groups=1, bias=True),
     dict(cout=4, k=(3, 2), stride=2, padding=0, groups=4, bias=False)),
])
def test_compose_matches_two_convs(inner, outer):
    wi = rand(inner["cout"], inner["cin"] // inner["groups"], *inner["k"], seed=14)
    bi = rand(inner["cout"], seed=15) if inner["bias"] else None
    wo = rand(outer["cout"], inner["cout"] // outer["groups"], *outer["k"], seed=16)
    bo = rand(outer["cout"], seed=17) if outer["bias"] else None
    rep = algebra.compose(algebra.conv(wo, bo, outer["stride"], outer["padding"], 1, outer["groups"]),
                          algebra.conv(wi, bi, inner["stride"], inner["padding"], 1, inner["groups"]))

    def ref(x):
        y = F.conv2d(x, wi, bi, inner["stride"], inner["padding"], 1, inner["groups"])
        return F.conv2d(y, wo, bo, outer["stride"], outer["padding"], 1, outer["groups"])

    sizes = [(h, w) for h in range(5, 14, 3) for w in range(6, 15, 4)]
    assert_same(ref, rep, inner["cin"], sizes=sizes)


def test_compose_refuses_zero_padding_after_a_bias():
    w1, b1 = rand(4, 4, 1, 1, seed=18), rand(4, seed=19)
    w2 = rand(4, 4, 3, 3, seed=20)
    inner, outer = algebra.conv(w1, b1, 1, 0, 1, 1), algebra.conv(w2, None, 1, 1, 1, 1)
    with pytest.raises(NotExact, match="zero-pads"):
        algebra.compose(outer, inner)
    # The naive composition (ignoring the padding) is wrong exactly at the border.
    naive = algebra.compose(algebra.conv(w2, None, 1, 0, 1, 1), inner)
    naive = algebra.ConvRep(naive.weight, naive.bias, (1, 1), (1, 1, 1, 1), 1)
    x = rand(1, 4, 9, 9)
    ref = F.conv2d(F.conv2d(x, w1, b1), w2, None, 1, 1)
    diff = (algebra.apply(naive, x) - ref).abs()
    assert diff[..., 1:-1, 1:-1].max() < 1e-10 and diff[..., 0, :].max() > 1e-3
    # A kxk inner conv (even without bias) has a non-zero border too.
    with pytest.raises(NotExact):
        algebra.compose(outer, algebra.conv(rand(4, 4, 3, 3), None, 1, 1, 1, 1))


def test_compose_with_identity_is_a_no_op():
    rep = algebra.conv(rand(4, 4, 3, 3), rand(4), 2, 1, 1, 1)
    assert algebra.compose(rep, algebra.identity(4)) is rep


# --- parallel branches ----------------------------------------------------------------------------


def test_add_branches_of_different_kernels_groups_and_dilations():
    """RepVGG/ACNet/DBB-style sum: 3x3 (groups 2) + 1x3 + 3x1 + 1x1 + identity + dilated 3x3 (padding 2)."""
    c = 4
    parts = [
        (rand(c, 2, 3, 3, seed=21), 1, 1, 1, 2),
        (rand(c, c, 1, 3, seed=22), 1, (0, 1), 1, 1),
        (rand(c, c, 3, 1, seed=23), 1, (1, 0), 1, 1),
        (rand(c, c, 1, 1, seed=24), 1, 0, 1, 1),
        (rand(c, 1, 3, 3, seed=25), 1, 2, 2, c),
    ]
    biases = [rand(c, seed=30 + i) for i in range(len(parts))]
    rep = algebra.identity(c)
    ref_fns = [lambda x: x]
    for (w, s, p, d, g), b in zip(parts, biases):
        rep = algebra.add(rep, algebra.conv(w, b, s, p, d, g))
        ref_fns.append(conv_ref(w, b, s, p, d, g))
    assert rep.kernel == (5, 5)  # the dilated 3x3 spans 5x5; everything centred in it
    assert_same(lambda x: sum(f(x) for f in ref_fns), rep, c)
    # Subtraction too
    a, b = algebra.conv(parts[0][0], None, 1, 1, 1, 2), algebra.conv(parts[3][0], None, 1, 0, 1, 1)
    assert_same(lambda x: conv_ref(parts[0][0], None, 1, 1, 1, 2)(x) - conv_ref(parts[3][0])(x),
                algebra.add(a, b, sign=-1.0), c)


def test_add_stride_2_with_padding_not_k_over_2():
    """3x3 padding 2 + 1x1 padding 1 (both stride 2): same centre, so exact."""
    w3, w1 = rand(4, 4, 3, 3, seed=40), rand(4, 4, 1, 1, seed=41)
    rep = algebra.add(algebra.conv(w3, None, 2, 2, 1, 1), algebra.conv(w1, None, 2, 1, 1, 1))
    assert_same(lambda x: F.conv2d(x, w3, None, 2, 2) + F.conv2d(x, w1, None, 2, 1), rep, 4)


def test_add_refuses_branches_that_do_not_fit_one_conv():
    w3, w1 = rand(4, 4, 3, 3), rand(4, 4, 1, 1)
    # Different strides.
    with pytest.raises(NotExact, match="strides"):
        algebra.add(algebra.conv(w3, None, 2, 1, 1, 1), algebra.conv(w1, None, 1, 0, 1, 1))
    # Padding assumed to be k//2: a 3x3 with padding 0 and a 1x1 with padding 0 give different sizes.
    with pytest.raises(NotExact, match="output sizes"):
        algebra.add(algebra.conv(w3, None, 1, 0, 1, 1), algebra.conv(w1, None, 1, 0, 1, 1))
    # Different channel counts.
    with pytest.raises(NotExact):
        algebra.add(algebra.conv(w3, None, 1, 1, 1, 1), algebra.conv(rand(5, 4, 1, 1), None, 1, 0, 1, 1))


def test_concat_and_channel_slice():
    wa, wb = rand(3, 4, 3, 3, seed=42), rand(5, 4, 1, 1, seed=43)
    ba, bb = rand(3, seed=44), rand(5, seed=45)
    cat = algebra.concat([algebra.conv(wa, ba, 1, 1, 1, 1), algebra.conv(wb, bb, 1, 0, 1, 1)])
    ref = lambda x: torch.cat([F.conv2d(x, wa, ba, 1, 1), F.conv2d(x, wb, bb)], 1)  # noqa: E731
    assert_same(ref, cat, 4)
    assert_same(lambda x: ref(x)[:, 2:6], algebra.channel_slice(cat, 2, 6), 4)


# --- explicit padding -----------------------------------------------------------------------------


def test_zero_pad_asymmetric_in_f_pad_order():
    """F.pad takes (left, right, top, bottom): a trap for H/W swaps. A 1x1 with zero bias pads exactly."""
    w = rand(4, 4, 1, 1, seed=46)
    rep = algebra.zero_pad(algebra.conv(w, None, 1, 0, 1, 1), (1, 0, 2, 3))
    assert_same(lambda x: F.pad(F.conv2d(x, w), (1, 0, 2, 3)), rep, 4)


def test_zero_pad_with_the_bias_value_is_exact():
    """DBB's trick: padding the output of a 1x1 conv with its own bias equals padding its input with zeros."""
    w, b = rand(4, 4, 1, 1, seed=47), rand(4, seed=48)
    # F.pad only pads with a scalar: use one bias value for all channels.
    b = torch.full_like(b, 0.7)
    rep = algebra.zero_pad(algebra.conv(w, b, 1, 0, 1, 1), (1, 1, 1, 1), fill=0.7)
    assert_same(lambda x: F.pad(F.conv2d(x, w, b), (1, 1, 1, 1), value=0.7), rep, 4)


def test_zero_pad_after_a_bias_refused():
    w, b = rand(4, 4, 1, 1), rand(4)
    with pytest.raises(NotExact, match="bias"):
        algebra.zero_pad(algebra.conv(w, b, 1, 0, 1, 1), (1, 1, 1, 1))
    with pytest.raises(NotExact, match="larger than 1x1"):
        algebra.zero_pad(algebra.conv(rand(4, 4, 3, 3), None, 1, 1, 1, 1), (1, 1, 1, 1))
    with pytest.raises(NotExact, match="crop"):
        algebra.zero_pad(algebra.conv(w, None, 1, 0, 1, 1), (-1, -1, 0, 0))


def test_trim_zero_border_keeps_function():
    """A 1x1 padded into a 3x3 (padding 1) goes back to a 1x1 with no padding."""
    w = rand(4, 4, 1, 1, seed=49)
    big = algebra.add(algebra.conv(w, None, 1, 0, 1, 1), algebra.conv(torch.zeros(4, 4, 3, 3), None, 1, 1, 1, 1))
    assert big.kernel == (3, 3)
    small = algebra.trim_zero_border(big)
    assert small.kernel == (1, 1) and small.pad == (0, 0, 0, 0)
    assert_same(conv_ref(w), small, 4)


def test_lattice_finds_the_dilation_of_a_spread_kernel():
    rep = algebra.conv(rand(4, 4, 3, 3), None, 1, (3, 2), (3, 2), 1)
    assert rep.kernel == (7, 5)
    assert algebra.lattice(rep.weight) == (3, 2)
    # Its cost is that of the 3x3 it came from, not of the dense 7x5.
    assert rep.macs(10) == 4 * 4 * 9 * 10
    assert algebra.lattice(rand(4, 4, 3, 3)) == (1, 1)
