"""Fold a BN that follows an input-dependent switch between two convolutions (SAConv) into both convolutions.

SAConv computes out = s * conv1(x) + (1 - s) * conv2(x) with s computed from the input. A following eval-mode
BN is y -> a*y + c per channel. Both moves pass through the switch exactly:
  * the scale: a * (s*u + (1-s)*v) = s*(a*u) + (1-s)*(a*v), since per-channel a and the elementwise s commute;
  * the shift: c = s*c + (1-s)*c, because the two switch weights sum to 1,
so scaling both kernels by a and setting both biases to a*b + c is the same function. SAConv (DetectoRS) adds
a post-context between the switch and the BN: y = out + P(mean(out)) + p with P a 1x1 conv. With out' = a*out + c
(the branches as above), mean(out') = a*mean(out) + c, so P' = diag(a) P diag(1/a) and p' = a*p - P'c give
a*y + c exactly; this needs every a != 0 (a BN whose gamma is 0 somewhere is left as it is).

The region finder cannot see this: the product with s is not linear in the input. This pass rewrites the graph
before regions are found; it never changes a module in place (a fused submodule may share its leaves with the
original), it adds new constants and modules instead.
"""
from __future__ import annotations

import copy
import operator
from typing import Any, Callable, TypeGuard

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from edgerep.fuse.constants import fetch_attr

_ADD = (operator.add, torch.add)
_MUL = (operator.mul, torch.mul)
_SUB = (operator.sub, torch.sub, torch.rsub)
_CONV = (F.conv2d, torch.conv2d)
_POOL = (F.adaptive_avg_pool2d, getattr(torch._C._nn, "adaptive_avg_pool2d", F.adaptive_avg_pool2d))


def fold_bn_through_switches(gm: fx.GraphModule) -> list[str]:
    """Remove every BN that follows a switch-weighted pair of convs (optionally through a post-context) by
    folding it into them; returns the folded BN nodes' names."""
    modules = dict(gm.named_modules())
    folded: list[str] = []
    for bn_node in list(gm.graph.nodes):
        bn = modules.get(str(bn_node.target)) if bn_node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or bn.training or bn.running_mean is None:
            continue
        pattern = _match(bn_node, modules)
        if pattern is None:
            continue
        a, c = _scale_shift(bn)
        convs, context = pattern
        if context is not None and bool((a.abs() < 1e-12).any()):
            continue  # diag(1/a) does not exist
        for conv in convs:
            _scale_conv(gm, conv, a, c)
        if context is not None:
            _rescale_context(gm, context, a, c)
        bn_node.replace_all_uses_with(bn_node.args[0])
        gm.graph.erase_node(bn_node)
        folded.append(bn_node.name)
    if folded:
        gm.graph.lint()
        gm.recompile()
    return folded


def _match(bn_node: fx.Node, modules: dict[str, nn.Module]) -> tuple[list[fx.Node], fx.Node | None] | None:
    """(the two branch convs, the post-context conv or None) when bn_node reads `switch-sum [+ context]`."""
    y = bn_node.args[0] if bn_node.args else None
    if not isinstance(y, fx.Node) or len(y.users) != 1:
        return None
    out, context = y, None
    reads: set[object] = {y}
    if _is(y, _ADD) and len(y.args) == 2:
        for u, e in (y.args, y.args[::-1]):
            ctx = _context_of(e, u, modules)
            if ctx is not None and isinstance(u, fx.Node) and isinstance(e, fx.Node):  # _context_of checked both
                out, context = u, ctx
                reads = {y, ctx.args[0], e}  # the sum, the global pool, and the expand (expand_as reads out)
                break
    if context is not None and not set(out.users) <= reads:
        return None
    if context is None and len(out.users) != 1:
        return None
    convs = _switch_pair(out, modules)
    return (convs, context) if convs is not None else None


def _context_of(e: object, u: object, modules: dict[str, nn.Module]) -> fx.Node | None:
    """The 1x1 conv P when e is P(adaptive_avg_pool2d(u, 1)), possibly expanded to u's shape."""
    if not isinstance(e, fx.Node) or not isinstance(u, fx.Node) or len(e.users) != 1:
        return None
    if e.op == "call_method" and e.target in ("expand_as", "expand"):
        e = e.args[0]
        if not isinstance(e, fx.Node) or len(e.users) != 1:
            return None
    conv = modules.get(str(e.target)) if e.op == "call_module" else None
    if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (1, 1) or conv.groups != 1:
        return None
    pool = e.args[0] if e.args else None
    if not isinstance(pool, fx.Node) or not pool.args or pool.args[0] is not u or len(pool.users) != 1:
        return None
    is_pool = (pool.op == "call_function" and pool.target in _POOL and pool.args[1:2] in ((1,), ((1, 1),))) or \
        (pool.op == "call_module" and isinstance(modules.get(str(pool.target)), nn.AdaptiveAvgPool2d)
         and modules[str(pool.target)].output_size in (1, (1, 1)))
    return e if is_pool else None


def _switch_pair(out: fx.Node, modules: dict[str, nn.Module]) -> list[fx.Node] | None:
    """[conv_a, conv_b] when out = s * conv_a + (1 - s) * conv_b (any operand order)."""
    if not _is(out, _ADD) or len(out.args) != 2 or out.kwargs:
        return None
    terms = []
    for m in out.args:
        if not _is(m, _MUL) or len(m.users) != 1 or len(m.args) != 2:
            return None
        terms.append(m.args)
    for (p, q), (r, t) in ((terms[0], terms[1]), (terms[1], terms[0])):
        for s, u in ((p, q), (q, p)):
            for one_minus, v in ((r, t), (t, r)):
                if _is_one_minus(one_minus, s) and _is_conv(u, modules) and _is_conv(v, modules) and u is not v:
                    return [u, v]
    return None


def _is_one_minus(node: object, s: object) -> bool:
    if not _is(node, _SUB):
        return False
    if node.target is torch.rsub:
        return node.args[0] is s and bool(node.args[1] == 1)
    return bool(node.args[0] == 1) and node.args[1] is s and not isinstance(node.args[0], fx.Node)


def _is_conv(node: object, modules: dict[str, nn.Module]) -> TypeGuard[fx.Node]:
    if not isinstance(node, fx.Node) or len(node.users) != 1:
        return False
    if node.op == "call_module":
        conv = modules.get(str(node.target))
        return type(conv) is nn.Conv2d and conv.padding_mode == "zeros"
    if node.op == "call_function" and node.target in _CONV:
        weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        return _is_const(weight) and (bias is None or _is_const(bias)) and not node.kwargs
    return False


def _is_const(arg: object) -> TypeGuard[fx.Node]:
    return isinstance(arg, fx.Node) and arg.op == "get_attr"


def _is(node: object, targets: tuple[Callable[..., Any], ...]) -> TypeGuard[fx.Node]:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def _scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    mean, var = bn.running_mean, bn.running_var
    assert mean is not None and var is not None  # fold_bn_through_switches skips BNs without running statistics
    std = torch.sqrt(var.detach().double() + bn.eps)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(std)
    a = gamma / std
    return a, beta - mean.detach().double() * a


def _scale_conv(gm: fx.GraphModule, node: fx.Node, a: torch.Tensor, c: torch.Tensor) -> None:
    """Kernel * a per output channel, bias -> a*b + c; as a new module or new constants."""
    if node.op == "call_module":
        conv = _conv_copy(gm, node)
        weight, bias = conv.weight.detach(), conv.bias.detach() if conv.bias is not None else None
        new_w, new_b = _scaled(weight, bias, a, c)
        conv.weight = nn.Parameter(new_w)
        conv.bias = nn.Parameter(new_b)
        gm.add_submodule(str(node.target), conv)  # gm's own copy of the path: the original module is untouched
        return
    args = list(node.args) + [None] * (3 - len(node.args))
    weight_node, bias_node = args[1], args[2]
    # _is_conv: a functional conv here takes its weight (and bias, if any) positionally, as get_attr constants
    assert isinstance(weight_node, fx.Node) and (bias_node is None or isinstance(bias_node, fx.Node))
    weight = fetch_attr(gm, str(weight_node.target))
    bias = fetch_attr(gm, str(bias_node.target)) if bias_node is not None else None
    new_w, new_b = _scaled(weight, bias, a, c)
    with gm.graph.inserting_before(node):
        args[1] = _constant(gm, f"{node.name}_weight", new_w)
        args[2] = _constant(gm, f"{node.name}_bias", new_b)
    node.args = tuple(args)


def _scaled(weight: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor, c: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = weight.dtype
    b = bias.double() if bias is not None else torch.zeros_like(a)
    return ((weight.double() * a.reshape(-1, 1, 1, 1)).to(dtype), (b * a + c).to(dtype))


def _rescale_context(gm: fx.GraphModule, node: fx.Node, a: torch.Tensor, c: torch.Tensor) -> None:
    """P' = diag(a) P diag(1/a), p' = a*p - P'c (see the module docstring)."""
    conv = _conv_copy(gm, node)
    dtype = conv.weight.dtype
    p = conv.weight.detach().double()[:, :, 0, 0]
    new_p = a.reshape(-1, 1) * p / a.reshape(1, -1)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(a)
    conv.weight = nn.Parameter(new_p.reshape(conv.weight.shape).to(dtype))
    conv.bias = nn.Parameter((a * bias - new_p @ c).to(dtype))
    gm.add_submodule(str(node.target), conv)


def _conv_copy(gm: fx.GraphModule, node: fx.Node) -> nn.Conv2d:
    """A copy of the Conv2d a call_module node runs (_is_conv and _context_of matched only those)."""
    conv = gm.get_submodule(str(node.target))
    assert isinstance(conv, nn.Conv2d)
    return copy.deepcopy(conv)


def _constant(gm: fx.GraphModule, wanted: str, value: torch.Tensor) -> fx.Node:
    name, i = f"_edgerep_{wanted}", 1
    while hasattr(gm, name):
        name, i = f"_edgerep_{wanted}_{i}", i + 1
    gm.register_buffer(name, value)
    return gm.graph.get_attr(name)
