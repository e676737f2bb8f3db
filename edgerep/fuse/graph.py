"""Find the linear regions of a traced model and collapse each into one convolution (torch.fx).

Walking the graph in order, every node that is a linear function of a single source tensor gets a
`Region`: the source node, the ConvRep that computes the node from it, the original cost, and the
modules it absorbed. Nonlinear ops (ReLU, SE's input-dependent scaling, ...) are sources. A node whose
value is needed by something outside the linear world (a nonlinearity, the output, a head) is
materialized as one nn.Conv2d reading its source; everything between becomes dead and is removed.
A merge is refused (the inputs are materialized instead) when it is not exact or would cost more MACs.
Before the walk, whatever is computed from parameters alone becomes a constant (constants.py: online OREPA
kernels, weight norm, weight standardization, low-rank updates), a BN after an input-dependent switch
between two convs is folded into both (switch.py: SAConv), and a BatchNorm1d beside a Linear is folded into
it (linear_bn.py: LeViT).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from edgerep.fuse import algebra
from edgerep.fuse.algebra import ConvRep, NotExact
from edgerep.fuse.constants import evaluate, fetch_attr, fold_parameter_computations
from edgerep.fuse.linear_bn import fold_linear_batch_norms
from edgerep.fuse.switch import fold_bn_through_switches

_BN_TYPES = (nn.BatchNorm2d,)
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d)


class NotLinear(Exception):
    """The node is not a linear op of one tensor (it becomes a source)."""


class InputDependent(NotLinear):
    """A product with an input-dependent tensor (SE, a gate, a switch): reported as left unfused, with why."""


@dataclass
class Region:
    src: fx.Node
    rep: ConvRep
    cost: int  # MACs (and element ops) of the original ops it replaces
    modules: tuple[str, ...] = ()
    convs: int = 0  # how many convolutions it absorbed
    conv_owner: str | None = None  # the module calling a functional conv (a kernel computed in forward)

    @property
    def trivial(self) -> bool:
        return self.convs == 0


@dataclass
class Unfused:
    node: str
    op: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"node": self.node, "op": self.op, "reason": self.reason}


@dataclass
class FusedRegion:
    name: str
    modules: list[str]
    kernel: str
    groups: int
    stride: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "from": self.modules, "kernel": self.kernel, "groups": self.groups,
                "stride": list(self.stride)}


@dataclass
class GraphFuseOutcome:
    module: fx.GraphModule
    regions: list[FusedRegion] = field(default_factory=list)
    unfused: list[Unfused] = field(default_factory=list)


def _numel_hw(node: fx.Node) -> tuple[int, int, int]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape") or len(meta.shape) != 4:
        raise NotLinear("not a 4-D tensor")
    n, c, h, w = meta.shape
    return int(n), int(c), int(h) * int(w)


class _RegionFinder:
    def __init__(self, gm: fx.GraphModule, sources: frozenset[fx.Node] = frozenset()) -> None:
        self.gm = gm
        self.sources = sources  # nodes read as they are (materialized), never composed through
        self.modules = dict(gm.named_modules())
        self.consts: dict[fx.Node, Any] = {}
        self.regions: dict[fx.Node, Region] = {}
        self.needed: set[fx.Node] = set()
        self.unfused: list[Unfused] = []

    # --- inputs -----------------------------------------------------------------------------------
    def const(self, arg: Any) -> Any:
        """The value of an argument if it is known without running the model, else raise NotLinear."""
        if isinstance(arg, fx.Node):
            if arg in self.consts:
                return self.consts[arg]
            raise NotLinear("depends on the input")
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.const(a) for a in arg)
        return arg

    def region_of(self, arg: Any) -> Region:
        if not isinstance(arg, fx.Node) or arg in self.consts:
            raise NotLinear("not a tensor of the model")
        if arg in self.regions:
            if arg not in self.sources:
                return self.regions[arg]
            self.needed.add(arg)  # read as it is: it must be materialized
        _, c, _ = _numel_hw(arg)
        return Region(arg, algebra.identity(c), 0)

    # --- the walk ---------------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "get_attr":
                self.consts[node] = fetch_attr(self.gm, str(node.target))
                continue
            if node.op in ("call_function", "call_method") and self._all_const(node):
                try:
                    self.consts[node] = evaluate(node, self.const)
                    continue
                except Exception:
                    pass
            if node.op in ("placeholder", "output"):
                self._mark_needed(node.all_input_nodes)
                continue
            try:
                region = self.linear(node)
            except NotLinear as exc:
                if isinstance(exc, InputDependent):
                    self._note(node, str(exc))
                self._mark_needed(node.all_input_nodes)
                continue
            except NotExact as exc:
                self._note(node, str(exc))
                self._mark_needed(node.all_input_nodes)
                retried = self._retry_from_materialized(node)
                if retried is None:
                    continue
                region = retried
            self.regions[node] = region

    def _retry_from_materialized(self, node: fx.Node) -> Region | None:
        """The merge was refused: treat the inputs as materialized and take this op alone."""
        saved = {n: self.regions.pop(n) for n in node.all_input_nodes if n in self.regions}
        try:
            return self.linear(node)
        except (NotLinear, NotExact):
            return None
        finally:
            self.regions.update(saved)

    def _all_const(self, node: fx.Node) -> bool:
        return all(n in self.consts for n in node.all_input_nodes)

    def _mark_needed(self, nodes) -> None:
        for n in nodes:
            if n in self.regions:
                self.needed.add(n)

    def _note(self, node: fx.Node, reason: str) -> None:
        self.unfused.append(Unfused(node.name, _op_label(self.gm, node), reason))

    # --- one op -----------------------------------------------------------------------------------
    def linear(self, node: fx.Node) -> Region:
        if node.op == "call_module":
            mod = self.modules[node.target]
            return self._module(node, mod)
        if node.op == "call_function":
            assert not isinstance(node.target, str)  # a call_function's target is the function itself
            return self._function(node, node.target, node.args, node.kwargs)
        if node.op == "call_method":
            return self._method(node)
        raise NotLinear(node.op)

    def _module(self, node: fx.Node, mod: nn.Module) -> Region:
        name = str(node.target)
        if isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros":
                raise NotLinear(f"padding_mode={mod.padding_mode}")
            rep = algebra.conv(mod.weight, mod.bias, mod.stride, mod.padding, mod.dilation, mod.groups)
            return self._compose(node, node.args[0], rep, name)
        if isinstance(mod, _BN_TYPES):
            mean, var = mod.running_mean, mod.running_var
            if mod.training or not mod.track_running_stats or mean is None or var is None:
                raise NotExact("batch norm in training mode normalizes with batch statistics")
            return self._per_channel(node, node.args[0], name, lambda r: algebra.batch_norm(
                r, mean, var, _opt(mod.weight), _opt(mod.bias), mod.eps))
        if isinstance(mod, _IDENTITY_MODULES):
            if isinstance(mod, (nn.Dropout, nn.Dropout2d)) and mod.training:
                raise NotLinear("dropout in training mode")
            return self.region_of(node.args[0])
        if isinstance(mod, nn.AvgPool2d):
            _, c, _ = _numel_hw(node)
            rep = algebra.avg_pool(c, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode, mod.count_include_pad,
                                   mod.divisor_override)
            return self._compose(node, node.args[0], rep, name, conv=False)
        if isinstance(mod, nn.ZeroPad2d):
            return self._pad(node, node.args[0], tuple(mod.padding), 0.0, name)
        if isinstance(mod, nn.ConstantPad2d):
            return self._pad(node, node.args[0], tuple(mod.padding), float(mod.value), name)
        raise NotLinear(type(mod).__name__)

    def _function(self, node: fx.Node, fn: Callable, args: tuple, kwargs: dict) -> Region:
        if fn in (F.conv2d, torch.conv2d):
            a = _bind(args, kwargs, ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
                      {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
            weight = self.const(a["weight"])
            bias = self.const(a["bias"])
            rep = algebra.conv(weight, bias, self.const(a["stride"]), self.const(a["padding"]),
                               self.const(a["dilation"]), self.const(a["groups"]))
            return self._compose(node, a["input"], rep, _owner(node))
        if fn in (F.batch_norm, torch.batch_norm):
            a = _bind(args, kwargs, ["input", "running_mean", "running_var", "weight", "bias", "training",
                                     "momentum", "eps"],
                      {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5})
            if self.const(a["training"]) or a["running_mean"] is None:
                raise NotExact("batch norm in training mode normalizes with batch statistics")
            mean, var = self.const(a["running_mean"]), self.const(a["running_var"])
            w, b, eps = self.const(a["weight"]), self.const(a["bias"]), self.const(a["eps"])
            return self._per_channel(node, a["input"], _owner(node),
                                     lambda r: algebra.batch_norm(r, mean, var, w, b, eps))
        if fn in (F.avg_pool2d, torch._C._nn.avg_pool2d):
            a = _bind(args, kwargs, ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                     "divisor_override"],
                      {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                       "divisor_override": None})
            _, c, _ = _numel_hw(node)
            rep = algebra.avg_pool(c, *(self.const(a[k]) for k in ("kernel_size", "stride", "padding", "ceil_mode",
                                                                 "count_include_pad", "divisor_override")))
            return self._compose(node, a["input"], rep, _owner(node), conv=False)
        if fn in (F.pad, torch._C._nn.pad):
            a = _bind(args, kwargs, ["input", "pad", "mode", "value"], {"mode": "constant", "value": None})
            if self.const(a["mode"]) != "constant":
                raise NotLinear(f"{a['mode']} padding")
            pads = tuple(self.const(a["pad"]))
            if len(pads) == 2:
                pads = (*pads, 0, 0)
            if len(pads) != 4:
                raise NotLinear("padding of more than H and W")
            return self._pad(node, a["input"], pads, self.const(a["value"]) or 0.0, _owner(node))
        if fn in (F.dropout, F.dropout2d):
            a = _bind(args, kwargs, ["input", "p", "training", "inplace"], {"p": 0.5, "training": True, "inplace": False})
            if self.const(a["training"]):
                raise NotLinear("dropout in training mode")
            return self.region_of(a["input"])
        if fn in (operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub):
            sign = -1.0 if fn in (operator.sub, operator.isub, torch.sub) else 1.0
            alpha = kwargs.get("alpha", 1)
            return self._add(node, args[0], args[1], sign * self.const(alpha))
        if fn in (operator.mul, operator.imul, torch.mul):
            return self._scale(node, args[0], args[1], invert=False)
        if fn in (operator.truediv, operator.itruediv, torch.div):
            if kwargs.get("rounding_mode") is not None:
                raise NotLinear("rounding division")
            return self._scale(node, args[0], args[1], invert=True, divisor_only=True)
        if fn is torch.cat:
            a = _bind(args, kwargs, ["tensors", "dim"], {"dim": 0})
            if self.const(a["dim"]) not in (1, -3):
                raise NotLinear("concatenation along a dimension other than channels")
            return self._concat(node, list(a["tensors"]))
        if fn is operator.getitem:
            return self._getitem(node, args[0], args[1])
        raise NotLinear(getattr(fn, "__name__", str(fn)))

    def _method(self, node: fx.Node) -> Region:
        name, args, kwargs = node.target, node.args, node.kwargs
        if name in ("contiguous", "clone"):
            return self.region_of(args[0])
        table = {"add": operator.add, "add_": operator.add, "sub": operator.sub, "sub_": operator.sub,
                 "mul": operator.mul, "mul_": operator.mul, "div": operator.truediv, "div_": operator.truediv}
        if name in table:
            return self._function(node, table[name], args, kwargs)
        raise NotLinear(f".{name}()")

    # --- combinators ------------------------------------------------------------------------------
    def _compose(self, node: fx.Node, arg: Any, outer: ConvRep, owner: str, conv: bool = True) -> Region:
        inner = self.region_of(arg)
        n, _, hw = _numel_hw(node)
        own_cost = outer.macs(hw, n)
        cost = inner.cost + own_cost
        rep = algebra.compose(outer, inner.rep)
        conv_owner = owner if conv and inner.convs == 0 and not isinstance(self.modules.get(owner), nn.Conv2d) \
            else inner.conv_owner
        region = Region(inner.src, rep, cost, inner.modules + (owner,), inner.convs + int(conv), conv_owner)
        return self._cost_checked(node, region, own_cost)

    def _per_channel(self, node: fx.Node, arg: Any, owner: str, fn: Callable[[ConvRep], ConvRep]) -> Region:
        inner = self.region_of(arg)
        n, c, hw = _numel_hw(node)
        return Region(inner.src, fn(inner.rep), inner.cost + n * c * hw, inner.modules + (owner,), inner.convs,
                      inner.conv_owner)

    def _pad(self, node: fx.Node, arg: Any, pads: tuple[Any, ...], value: Any, owner: str) -> Region:
        inner = self.region_of(arg)
        n, c, hw = _numel_hw(node)
        left, right, top, bottom = (int(p) for p in pads)
        rep = algebra.zero_pad(inner.rep, (left, right, top, bottom), value)
        return Region(inner.src, rep, inner.cost + n * c * hw, inner.modules + (owner,), inner.convs,
                      inner.conv_owner)

    def _add(self, node: fx.Node, a: Any, b: Any, sign: float) -> Region:
        n, c, hw = _numel_hw(node)
        a_const, b_const = self._is_const(a), self._is_const(b)
        if a_const and b_const:
            raise NotLinear("constant")
        if a_const or b_const:
            tensor_arg, k = (b, self.const(a)) if a_const else (a, self.const(b))
            k = _per_channel_value(k, c)
            r = self.region_of(tensor_arg)
            if a_const:  # k + sign*x
                rep = algebra.affine(r.rep, sign, k)
            else:  # x + sign*k
                rep = algebra.affine(r.rep, 1.0, sign * k)
            return Region(r.src, rep, r.cost + n * c * hw, r.modules, r.convs, r.conv_owner)
        ra, rb = self.region_of(a), self.region_of(b)
        if ra.src is not rb.src:
            raise NotLinear("sum of two different inputs")
        rep = algebra.add(ra.rep, rb.rep, sign)
        region = Region(ra.src, rep, ra.cost + rb.cost + n * c * hw, _merge(ra.modules, rb.modules),
                        ra.convs + rb.convs, ra.conv_owner if ra.conv_owner is not None else rb.conv_owner)
        return self._cost_checked(node, region, n * c * hw)

    def _scale(self, node: fx.Node, a: Any, b: Any, invert: bool, divisor_only: bool = False) -> Region:
        n, c, hw = _numel_hw(node)
        a_const, b_const = self._is_const(a), self._is_const(b)
        if a_const == b_const or (divisor_only and not b_const):
            owner = _owner(node)
            raise InputDependent(f"scales by an input-dependent tensor{' in ' + owner if owner else ''} (SE, a gate, "
                                 "a switch): there is no constant weight to fold it into")
        tensor_arg, k = (b, self.const(a)) if a_const else (a, self.const(b))
        k = _per_channel_value(k, c)
        if invert:
            k = 1.0 / k
        r = self.region_of(tensor_arg)
        return Region(r.src, algebra.affine(r.rep, k, 0.0), r.cost + n * c * hw,
                      r.modules + (_owner(node),) if _owner(node) else r.modules, r.convs, r.conv_owner)

    def _concat(self, node: fx.Node, parts: list) -> Region:
        regions = [self.region_of(p) for p in parts]
        if len({id(r.src) for r in regions}) != 1:
            raise NotLinear("concatenation of different inputs")
        rep = algebra.concat([r.rep for r in regions])
        n, c, hw = _numel_hw(node)
        mods: tuple[str, ...] = ()
        for r in regions:
            mods = _merge(mods, r.modules)
        region = Region(regions[0].src, rep, sum(r.cost for r in regions) + n * c * hw, mods,
                        sum(r.convs for r in regions), next((r.conv_owner for r in regions if r.conv_owner is not None), None))
        return self._cost_checked(node, region, n * c * hw)

    def _getitem(self, node: fx.Node, arg: Any, index: Any) -> Region:
        if not isinstance(index, tuple) or len(index) < 2:
            raise NotLinear("indexing")
        if not (isinstance(index[0], slice) and index[0] == slice(None)):
            raise NotLinear("indexing the batch")
        ch = index[1]
        if not isinstance(ch, slice) or ch.step not in (None, 1):
            raise NotLinear("channel indexing other than a slice")
        if any(not (isinstance(i, slice) and i == slice(None)) and i is not Ellipsis for i in index[2:]):
            raise NotLinear("spatial indexing")
        r = self.region_of(arg)
        start, stop, _ = ch.indices(r.rep.out_channels)
        return Region(r.src, algebra.channel_slice(r.rep, start, stop), r.cost, r.modules, r.convs, r.conv_owner)

    def _cost_checked(self, node: fx.Node, region: Region, own_cost: int) -> Region:
        """Refuse a merge that costs more MACs than the ops it replaces (e.g. a depthwise branch into a dense one)."""
        if region.convs <= 1:
            return region
        n, _, hw = _numel_hw(node)
        merged = algebra.compact_groups(algebra.trim_zero_border(region.rep)).macs(hw, n)
        if merged > region.cost:
            raise NotExact(f"merging would raise the cost from {region.cost:,} to {merged:,} MACs")
        return region

    def _is_const(self, arg: Any) -> bool:
        return not isinstance(arg, fx.Node) or arg in self.consts


# --- helpers ----------------------------------------------------------------------------------------


def _opt(t):
    return None if t is None else t.detach()


def _merge(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return a + tuple(x for x in b if x not in a)


def _owner(node: fx.Node) -> str:
    """The module a functional call came from (fx records it in the stack metadata)."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        return path[0] if isinstance(path, tuple) else str(path)
    return ""


def _per_channel_value(k: Any, channels: int) -> torch.Tensor:
    t = torch.as_tensor(k, dtype=torch.float64)
    if t.numel() == 1:
        return t.reshape(1)
    if t.numel() == channels and (t.dim() <= 1 or t.shape[-1] == t.shape[-2] == 1 or t.dim() == 4):
        if t.dim() == 4 and t.shape[0] != 1:
            raise NotLinear("constant not shaped per channel")
        return t.reshape(-1)
    raise NotLinear("constant that is not per channel")


def _bind(args: tuple, kwargs: dict, names: list[str], defaults: dict) -> dict:
    out = dict(defaults)
    for name, value in zip(names, args):
        out[name] = value
    out.update(kwargs)
    return out


def _op_label(gm: fx.GraphModule, node: fx.Node) -> str:
    from edgerep.fuse.check import node_kind

    return node_kind(gm, node)


# --- rewriting --------------------------------------------------------------------------------------


def _unique_name(gm: fx.GraphModule, wanted: str) -> str:
    existing = dict(gm.named_modules())
    name, i = wanted, 1
    while name in existing:
        name = f"{wanted}_{i}"
        i += 1
    return name


def _fused_name(region: Region, modules: dict[str, nn.Module]) -> str:
    """Name the fused conv after what it replaced: the conv's own name for conv+BN, else `<block>.reparam`
    where <block> is the module whose forward joins the branches (the zoo's deploy forms use the same)."""
    mods = [m for m in region.modules if m]
    if region.convs == 1:
        convs = [m for m in mods if isinstance(modules.get(m), nn.Conv2d)]
        if not convs and region.conv_owner is not None:
            # A functional conv (its kernel computed in forward, as OREPA or SAConv do): the module calling it
            # keeps one fused conv, `reparam`, like the zoo's deploy forms.
            return f"{region.conv_owner}.reparam" if region.conv_owner else "reparam"
        convs = convs or mods[:1]
        if convs:
            return convs[0]
    if not mods:
        return "reparam"
    parts = [m.split(".") for m in mods]
    common: list[str] = []
    for items in zip(*parts):
        if len(set(items)) != 1:
            break
        common.append(items[0])
    if len(common) == len(parts[0]) and len(parts) > 1:
        common = common[:-1]
    # A ModuleList/Sequential of branches has no forward of its own: the block above it joins them.
    while common and isinstance(modules.get(".".join(common)), (nn.ModuleList, nn.Sequential, nn.ModuleDict)):
        common = common[:-1]
    return ".".join(common + ["reparam"])


def _delete_unused_constants(gm: fx.GraphModule) -> None:
    """fx stores tensors created in forward as `_tensor_constantN`; drop the ones no node reads any more."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in [n for n in list(vars(gm)) + list(gm._buffers) + list(gm._parameters) if n.startswith("_tensor_constant")]:
        if name not in used and hasattr(gm, name):
            delattr(gm, name)


def _delete_unused_tensors(gm: fx.GraphModule) -> None:
    """Drop parameters and buffers nothing reads any more.

    A module fx traced through stays alive while one of its children is still called (timm's
    BatchNormAct2d keeps its `act`), and with it its folded statistics: dead weights in the checkpoint.
    """
    read = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    called = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    names = [n for n, _ in gm.named_parameters(remove_duplicate=False)] + \
        [n for n, _ in gm.named_buffers(remove_duplicate=False)]
    for name in names:
        owner, _, leaf = name.rpartition(".")
        parts = owner.split(".") if owner else []
        if name in read or any(".".join(parts[:i]) in called | read for i in range(1, len(parts) + 1)):
            continue
        delattr(gm.get_submodule(owner), leaf)


def _make_conv(rep: ConvRep, dtype: torch.dtype) -> nn.Module:
    rep = algebra.compact_groups(algebra.trim_zero_border(rep))
    top, bottom, left, right = rep.pad
    symmetric = top == bottom and left == right
    dh, dw = algebra.lattice(rep.weight)
    weight = rep.weight[:, :, ::dh, ::dw]
    kh, kw = weight.shape[2:]
    conv = nn.Conv2d(rep.in_channels, rep.out_channels, (kh, kw), rep.stride,
                     padding=(top, left) if symmetric else 0, dilation=(dh, dw), groups=rep.groups, bias=True)
    assert conv.bias is not None  # bias=True
    with torch.no_grad():
        conv.weight.copy_(weight.to(dtype))
        conv.bias.copy_(rep.bias.to(dtype))
    if symmetric:
        return conv
    return nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv)


_PURE_SCALAR_OPS = {operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.not_,
                    operator.and_, operator.or_, operator.getitem, operator.mod, operator.floordiv, len}


def _drop_static_checks(gm: fx.GraphModule) -> None:
    """Fold `x.ndim` and the shape asserts built on it (timm's `_assert(x.ndim == 4)`).

    Left alone they keep intermediate tensors alive, and with them the branches we want to remove. The
    rank of a tensor cannot change with the input size, so folding it is safe.
    """
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is getattr and len(node.args) == 2 and node.args[1] == "ndim":
            meta = node.args[0].meta.get("tensor_meta") if isinstance(node.args[0], fx.Node) else None
            if meta is not None:
                _replace_with_value(node, len(meta.shape))
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.all_input_nodes:
            continue
        if node.target in _PURE_SCALAR_OPS:
            _replace_with_value(node, node.target(*node.args, **node.kwargs))
        elif node.target is torch._assert and node.args and node.args[0] is True and not node.users:
            gm.graph.erase_node(node)


def _replace_with_value(node: fx.Node, value: Any) -> None:
    for user in list(node.users):
        user.args = fx.node.map_arg(user.args, lambda n: value if n is node else n)
        user.kwargs = fx.node.map_arg(user.kwargs, lambda n: value if n is node else n)
    node.graph.erase_node(node)


def _find_regions(gm: fx.GraphModule) -> _RegionFinder:
    """Run the finder, then again with more nodes read as materialized while its regions are wasteful.

    The per-step checks in the walk cannot see the whole region: a conv after an avg-pool merges into a
    costlier kernel, and a region composed through a node that is materialized anyway (SAConv's
    `1 - switch` through `switch`) would compute that node's convs twice. Each round only adds sources.
    """
    sources: frozenset[fx.Node] = frozenset()
    notes: dict[tuple[str, str], Unfused] = {}
    while True:
        finder = _RegionFinder(gm, sources)
        finder.run()
        extra: set[fx.Node] = set()
        for node in finder.needed:
            region = finder.regions[node]
            if region.trivial:
                continue
            n, _, hw = _numel_hw(node)
            merged = algebra.compact_groups(algebra.trim_zero_border(region.rep)).macs(hw, n)
            inside = _path(finder, node)
            if merged > region.cost:
                # Only an avg-pool merged with a conv (never checked step by step, as DBB's 1x1-avg branch is
                # costlier alone but not once summed) gets here: read each pool's output, or a final pool's input.
                pools = [v for v in inside | {node} if _op_label(gm, v) == "avg_pool"]
                cut = {v for v in pools if v is not node} | ({a for a in node.all_input_nodes if a in finder.regions}
                                                             if node in pools or not pools else set())
                extra.update(cut)
                finder._note(node, f"merging would raise the cost from {region.cost:,} to {merged:,} MACs")
            extra.update(v for v in inside if v in finder.needed and not finder.regions[v].trivial)
        for u in finder.unfused:
            notes.setdefault((u.node, u.reason), u)
        if not extra - sources:
            finder.unfused = list(notes.values())
            return finder
        sources = sources | extra


def _path(finder: _RegionFinder, node: fx.Node) -> set[fx.Node]:
    """The nodes `node`'s region composes through, between its source and it (both excluded)."""
    src, seen, stack = finder.regions[node].src, set(), list(node.all_input_nodes)
    while stack:
        cur = stack.pop()
        if cur in seen or cur is src or cur not in finder.regions or cur in finder.sources:
            continue
        seen.add(cur)
        stack.extend(cur.all_input_nodes)
    return seen


def fuse_graph(gm: fx.GraphModule, example: torch.Tensor, original: nn.Module | None = None) -> GraphFuseOutcome:
    """Collapse the linear regions of `gm` in place; returns it with what was merged and what was not.

    `original` is the traced model: its module types name the fused convs (fx keeps only the leaves' types).
    """
    module_types = dict((original or gm).named_modules())
    ShapeProp(gm).propagate(example)
    _drop_static_checks(gm)
    fold_parameter_computations(gm)
    fold_bn_through_switches(gm)
    linear_folds = fold_linear_batch_norms(gm)
    finder = _find_regions(gm)
    dtype = next((p.dtype for p in gm.parameters()), torch.float32)
    outcome = GraphFuseOutcome(gm, unfused=finder.unfused)
    placed: list[tuple[fx.Node, str]] = []
    replaced: dict[fx.Node, fx.Node] = {}
    # Rewrite in graph order so a region's source is already final when we insert its conv.
    for node in list(gm.graph.nodes):
        if node not in finder.needed:
            continue
        region = finder.regions[node]
        if region.trivial:
            if region.rep.groups == region.rep.out_channels and region.rep.kernel == (1, 1) and \
                    torch.equal(region.rep.weight.flatten(), torch.ones(region.rep.out_channels, dtype=torch.float64)) \
                    and not region.rep.bias.any() and not any(region.rep.pad) and region.src is not node:
                src = replaced.get(region.src, region.src)
                node.replace_all_uses_with(src)  # identity / eval dropout: drop it
                replaced[node] = src
            elif _op_label(gm, node) == "batch_norm":
                outcome.unfused.append(Unfused(node.name, "batch_norm", "no conv before it to fold into (its input "
                                               "is a nonlinearity's output or a sum of different inputs)"))
            continue  # a lone BN or scale on a source: no conv to save, keep the original op
        temp = _unique_name(gm, f"edgerep_fused_{len(outcome.regions)}")
        gm.add_submodule(temp, _make_conv(region.rep, dtype))
        src = replaced.get(region.src, region.src)  # the source may itself have been materialized
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(temp, (src,))
        node.replace_all_uses_with(new)
        replaced[node] = new
        rep = algebra.compact_groups(algebra.trim_zero_border(region.rep))
        dh, dw = algebra.lattice(rep.weight)
        kernel = f"{(rep.kernel[0] - 1) // dh + 1}x{(rep.kernel[1] - 1) // dw + 1}"
        kernel += f" dilation ({dh}, {dw})" if (dh, dw) != (1, 1) else ""
        outcome.regions.append(FusedRegion(_fused_name(region, module_types), list(region.modules),
                                           kernel, rep.groups, rep.stride))
        placed.append((new, temp))
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    _delete_unused_constants(gm)
    _delete_unused_tensors(gm)
    # Now that the replaced modules are gone, give each fused conv the name of what it replaced, so a
    # fused checkpoint's keys read like the model's own (and load into the zoo's deploy forms).
    for (node, temp), fused in zip(placed, outcome.regions):
        if temp not in dict(gm.named_modules()):
            continue  # its value turned out unused
        name = _unique_name(gm, fused.name)
        gm.add_submodule(name, gm.get_submodule(temp))
        gm.delete_submodule(temp)
        node.target = name
        fused.name = name
    outcome.regions = [FusedRegion(name, parts, "linear", 1, (1, 1)) for name, parts in linear_folds] + outcome.regions
    gm.graph.lint()
    gm.recompile()
    return outcome
