"""Fold BatchNorm1d into the Linear beside it: after it (out rows), or before it (input columns).

The algebra is conv+BN's, per feature: BN(Wx + b) = (s * W) x + s * b + t, and W BN(x) + b = (W * s) x + W t + b,
with s = gamma / sqrt(var + eps), t = beta - mean * s. LeViT's `LinearNorm` applies the BN to the tokens
flattened to (B*N, C) and reshapes back (`bn(x.flatten(0, 1)).reshape_as(x)`): a reshape keeps each element's
feature when it keeps the last dimension, so the BN's channel is still the Linear's output feature. A fold is
made only when every op between the two is such a reshape (or an eval dropout / identity) and nothing else reads
the value in between (reading only its shape, as `reshape_as(x)` does, is fine).

The region finder (graph.py) works on 4-D convolution maps; this small pass works on the same fx graph, before it
(graph.fuse_graph calls it).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from edgerep.fuse import algebra
from edgerep.fuse.constants import fetch_attr

_aten = torch.ops.aten
_RESHAPE_METHODS = {"flatten", "reshape", "view", "contiguous", "reshape_as", "view_as"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, _aten.view.default, _aten.reshape.default, _aten.flatten.using_ints,
                      _aten.contiguous.default, _aten.reshape_as.default, _aten.view_as.default, _aten.clone.default}
_SHAPE_READERS = {"size", "reshape_as", "view_as", "expand_as"}


def _last_dim(node: Any) -> int | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return int(shape[-1]) if shape is not None and len(shape) else None


def _ndim(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return len(shape) if shape is not None else None


def _reads_only_shape(user: fx.Node, value: fx.Node) -> bool:
    """`user` reads `value`'s shape only (x.size(), y.reshape_as(value), value.shape)."""
    if user.op == "call_method":
        if user.target == "size" and user.args[0] is value:
            return True
        return user.target in _SHAPE_READERS and len(user.args) > 1 and user.args[1] is value and user.args[0] is not value
    if user.op == "call_function":
        if user.target is getattr and user.args[1] == "shape":
            return True
        if user.target in (_aten.sym_size.int, _aten.sym_size.default):
            return True
        if user.target in (_aten.reshape_as.default, _aten.view_as.default, _aten.expand_as.default):
            return len(user.args) > 1 and user.args[1] is value and user.args[0] is not value
    return False


def _value_users(node: fx.Node) -> list[fx.Node]:
    return [u for u in node.users if not _reads_only_shape(u, node)]


def _passthrough_input(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The input of `node` when it only reshapes (keeping the last dimension) or passes its input on; else None."""
    src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if src is None:
        return None
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        ok = isinstance(mod, (nn.Identity, nn.Flatten)) or (isinstance(mod, nn.Dropout) and not mod.training)
    elif node.op == "call_method":
        ok = node.target in _RESHAPE_METHODS
    elif node.op == "call_function":
        ok = node.target in _RESHAPE_FUNCTIONS or (node.target in (F.dropout, _aten.dropout.default)
                                                    and not _arg(node, 2, "training", True))
    else:
        ok = False
    if not ok or _last_dim(src) is None or _last_dim(src) != _last_dim(node):
        return None
    return src


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _linear(gm: fx.GraphModule, node: fx.Node) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) of a Linear node with constant parameters; None for anything else."""
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if type(mod) is nn.Linear:
            return mod.weight.detach(), None if mod.bias is None else mod.bias.detach()
        return None
    if node.op == "call_function" and node.target in (F.linear, _aten.linear.default):
        weight, bias = _arg(node, 1, "weight", None), _arg(node, 2, "bias", None)
        if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
            return None
        if bias is not None and not (isinstance(bias, fx.Node) and bias.op == "get_attr"):
            return None
        return fetch_attr(gm, str(weight.target)), None if bias is None else fetch_attr(gm, str(bias.target))
    return None


def _batch_norm(gm: fx.GraphModule, node: fx.Node) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) of an eval-mode BatchNorm over (N, C) with running statistics; None for anything else."""
    if _ndim(node) != 2:
        return None
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if type(mod) is not nn.BatchNorm1d or mod.training or mod.running_mean is None or mod.running_var is None:
            return None
        return algebra.bn_scale_shift(mod.running_mean, mod.running_var, mod.weight, mod.bias, mod.eps)
    if node.op == "call_function" and node.target is F.batch_norm:
        names = ["input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"]
        a: dict[str, Any] = dict({"weight": None, "bias": None, "training": False, "eps": 1e-5},
                                 **dict(zip(names, node.args)), **node.kwargs)
        if a["training"] or not all(isinstance(a[k], fx.Node) and a[k].op == "get_attr"
                                    for k in ("running_mean", "running_var")):
            return None
        values: dict[str, Any] = {}
        for k in ("running_mean", "running_var", "weight", "bias"):
            v = a.get(k)
            if v is not None and not (isinstance(v, fx.Node) and v.op == "get_attr"):
                return None
            values[k] = None if v is None else fetch_attr(gm, str(v.target))
        return algebra.bn_scale_shift(values["running_mean"], values["running_var"], values["weight"],
                                      values["bias"], float(a["eps"]))
    return None


def _walk_back(gm: fx.GraphModule, start: Any) -> tuple[fx.Node, list[fx.Node]] | None:
    """From `start` back through passthrough ops, each read (for its value) by one op only: (first non-passthrough
    node, the passthrough chain); None when something else reads a value on the way."""
    chain: list[fx.Node] = []
    node = start
    while isinstance(node, fx.Node):
        src = _passthrough_input(gm, node)
        if src is None:
            return node, chain
        if len(_value_users(src)) != 1:
            return None
        chain.append(node)
        node = src
    return None


def _path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        return path[0] if isinstance(path, tuple) else str(path)
    return node.name


def _replace_linear(gm: fx.GraphModule, node: fx.Node, weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype
                    ) -> str:
    """Make `node` call a new nn.Linear holding (weight, bias); the old parameters stay untouched (shared)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    with torch.no_grad():
        lin.weight.copy_(weight.to(dtype))
        lin.bias.copy_(bias.to(dtype))
    name, i = f"edgerep_linear_{node.name}", 1
    while hasattr(gm, name):
        name, i = f"edgerep_linear_{node.name}_{i}", i + 1
    gm.add_submodule(name, lin.to(dtype))
    x = node.args[0] if node.args else node.kwargs["input"]
    node.op, node.target, node.args, node.kwargs = "call_module", name, (x,), {}
    return name


def fold_linear_batch_norms(gm: fx.GraphModule) -> list[tuple[str, list[str]]]:
    """Fold, in place, every BatchNorm1d that directly follows or precedes a Linear (see the module docstring).
    Needs ShapeProp's tensor_meta on the nodes. Returns (the folded Linear's name, [what it absorbed]) per fold."""
    regions: list[list[Any]] = []
    placed: list[tuple[fx.Node, str, str]] = []  # (node, its temporary module name, the Linear it replaces)
    for bn in list(gm.graph.nodes):
        affine = _batch_norm(gm, bn)
        if affine is None:
            continue
        scale, shift = affine
        # After a Linear: BN(linear(x)) with only reshapes between.
        found = _walk_back(gm, bn.args[0])
        params = _linear(gm, found[0]) if found is not None else None
        if found is not None and params is not None and len(_value_users(found[0])) == 1 \
                and params[0].shape[0] == scale.numel():
            lin = found[0]
            weight, bias = params
            b = bias.double() if bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
            where = _path(lin)
            placed.append((lin, _replace_linear(gm, lin, weight.double() * scale[:, None], b * scale + shift,
                                                weight.dtype), where))
            regions.append([where, [where, _path(bn)]])
            bn.replace_all_uses_with(bn.args[0])
            gm.graph.erase_node(bn)
            continue
        # Before a Linear: linear(BN(x)) with only reshapes / eval dropout between, BN read by nothing else.
        users = _value_users(bn)
        node, chain = bn, []
        while len(users) == 1 and _passthrough_input(gm, users[0]) is node:
            node = users[0]
            chain.append(node)
            users = _value_users(node)
        if len(users) != 1:
            continue
        lin = users[0]
        params = _linear(gm, lin)
        first = lin.args[0] if lin.args else lin.kwargs.get("input")
        if params is None or first is not node or params[0].shape[1] != scale.numel():
            continue
        weight, bias = params
        b = bias.double() if bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
        where = _path(lin)
        placed.append((lin, _replace_linear(gm, lin, weight.double() * scale[None, :], b + weight.double() @ shift,
                                            weight.dtype), where))
        regions.append([where, [_path(bn), where]])
        bn.replace_all_uses_with(bn.args[0])
        gm.graph.erase_node(bn)
    if regions:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        # the folded Linear takes the replaced one's name, so a fused checkpoint reads like the model's own
        for (node, temp, where), region in zip(placed, regions):
            if where in dict(gm.named_modules()):
                continue  # still in use elsewhere (a shared Linear): keep the temporary name
            gm.add_submodule(where, gm.get_submodule(temp))
            gm.delete_submodule(temp)
            node.target = where
            region[0] = where
        gm.graph.lint()
        gm.recompile()
    return [(str(name), list(parts)) for name, parts in regions]

