"""What a model computes and how: op histograms, parameter and FLOP counts, and the equivalence check."""
from __future__ import annotations

import operator
from collections import Counter
from typing import Any, Iterable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from edgerep.models.output_errors import describe_failures, merge_errors, output_errors, worst_output
from edgerep.models.outputs import flatten_named

_MODULE_KINDS: dict[type, str] = {
    nn.BatchNorm1d: "batch_norm", nn.BatchNorm2d: "batch_norm", nn.ReLU: "relu", nn.ReLU6: "relu6",
    nn.SiLU: "silu", nn.GELU: "gelu", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
    nn.Sigmoid: "sigmoid", nn.LeakyReLU: "leaky_relu", nn.Linear: "linear", nn.Flatten: "flatten",
    nn.AdaptiveAvgPool2d: "global_pool", nn.AvgPool2d: "avg_pool", nn.MaxPool2d: "max_pool",
    nn.Identity: "identity", nn.Dropout: "dropout", nn.ZeroPad2d: "pad",
}
_FUNCTION_KINDS: dict[Any, str] = {
    operator.add: "add", operator.iadd: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub",
    operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", operator.truediv: "div", torch.cat: "cat",
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.silu: "silu", F.gelu: "gelu", torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid", F.hardsigmoid: "hardsigmoid", F.hardswish: "hardswish", F.adaptive_avg_pool2d: "global_pool",
    torch.flatten: "flatten", F.linear: "linear", F.batch_norm: "batch_norm", F.avg_pool2d: "avg_pool",
    F.max_pool2d: "max_pool", F.pad: "pad", torch.mean: "mean",
}
# Bookkeeping nodes that compute nothing worth counting.
_SKIP = {"_assert", "eq", "getattr", "getitem", "size", "dim", "view", "reshape", "expand_as", "expand", "contiguous", "clone",
         "identity", "dropout", "squeeze", "unsqueeze", "sym_size"}


def _conv_kind(weight_shape: Iterable[int]) -> str:
    kh, kw = list(weight_shape)[2:4]
    return f"conv{kh}x{kw}"


def node_kind(gm: fx.GraphModule, node: fx.Node) -> str:
    """A short, stable name for what a node does: conv3x3, batch_norm, relu, add, ..."""
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if isinstance(mod, nn.Conv2d):
            return _conv_kind(mod.weight.shape)
        for cls, kind in _MODULE_KINDS.items():
            if type(mod) is cls:
                return kind
        if isinstance(mod, nn.Sequential) and len(mod) and isinstance(mod[-1], nn.Conv2d):
            return _conv_kind(mod[-1].weight.shape)  # our (pad, conv) pair for asymmetric padding
        return type(mod).__name__.lower()
    if node.op == "call_function":
        if node.target in (F.conv2d, torch.conv2d):
            weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            meta = weight.meta.get("tensor_meta") if isinstance(weight, fx.Node) else None
            return _conv_kind(meta.shape) if meta is not None else "conv"
        if isinstance(node.target, torch._ops.OpOverload):  # an ATen op torch.export left as it is: "einsum"
            return node.target.overloadpacket.__name__
        return _FUNCTION_KINDS.get(node.target, getattr(node.target, "__name__", str(node.target)))
    if node.op == "call_method":
        return {"add": "add", "add_": "add", "mul": "mul", "mul_": "mul", "sigmoid": "sigmoid", "relu": "relu",
                "mean": "mean", "flatten": "flatten"}.get(str(node.target), str(node.target))
    return node.op


def op_histogram(model: nn.Module, example: torch.Tensor | None = None) -> dict[str, int]:
    """Count op kinds from an fx trace; for an untraceable model, count leaf modules instead."""
    try:
        gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
        if example is not None:
            from torch.fx.passes.shape_prop import ShapeProp

            try:
                ShapeProp(gm).propagate(example)  # gives F.conv2d weights a shape
            except Exception:
                pass
        counts = Counter(node_kind(gm, n) for n in gm.graph.nodes
                         if n.op in ("call_module", "call_function", "call_method"))
    except Exception:
        counts = _leaf_calls(model, example) if example is not None else Counter()
        if not counts:  # no example, or it does not run: one count per leaf module
            for _, mod in model.named_modules():
                if next(mod.children(), None) is None:
                    counts[_leaf_kind(mod)] += 1
    return {k: v for k, v in sorted(counts.items()) if k not in _SKIP}


def _leaf_kind(mod: nn.Module) -> str:
    if isinstance(mod, nn.Conv2d):
        return _conv_kind(mod.weight.shape)
    return _MODULE_KINDS.get(type(mod), type(mod).__name__.lower())


def _leaf_calls(model: nn.Module, example: torch.Tensor) -> Counter:
    """Leaf-module calls in one forward (a module shared by many layers, like YOLO's SiLU, counts each call);
    functional ops in a forward fx cannot trace are not seen."""
    counts: Counter = Counter()
    hooks = [mod.register_forward_hook(lambda m, _i, _o: counts.update([_leaf_kind(m)]))
             for _, mod in model.named_modules() if next(mod.children(), None) is None]
    try:
        with torch.no_grad():
            model(example)
    except Exception:
        counts.clear()
    finally:
        for h in hooks:
            h.remove()
    return counts


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flop_count(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass (torch's own counter: convs and matmuls, 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    return int(counter.get_total_flops())


def check_shapes(example_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The example shape, plus an odd spatial size at batch 2 so borders and strides are exercised."""
    shapes = [tuple(example_shape)]
    if len(example_shape) == 4:
        _, c, h, w = example_shape
        odd_h = max(h // 2 + 1 if (h // 2) % 2 == 0 else h // 2 + 2, 9)
        odd_w = max(w // 2 + 3 if (w // 2) % 2 == 0 else w // 2 + 4, 11)
        shapes.append((2, c, odd_h, odd_w))
    return shapes


def compare(reference: nn.Module, candidate: nn.Module, shapes: list[tuple[int, ...]], seed: int = 0
            ) -> tuple[float, float, list[list[int]], list[str], list[dict[str, Any]]]:
    """Max abs and max relative error on fresh random inputs, over every output of the model.

    Each output is measured against its own largest magnitude (edgerep.models.output_errors); the overall numbers
    are the worst output's. Returns (max_abs_err, max_rel_err, shapes checked, notes on shapes the original
    itself rejects, per-output records [{name, shape, max_abs_err, max_rel_err}] in ONNX order).
    """
    gen = torch.Generator().manual_seed(seed)
    checked: list[list[int]] = []
    notes: list[str] = []
    per_output: list[dict[str, Any]] = []
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            try:
                ref = reference(x)
            except Exception as exc:  # e.g. a head with a fixed input size
                notes.append(f"{'x'.join(map(str, shape))}: the original rejects it ({type(exc).__name__})")
                continue
            out = candidate(x)
        names, refs = named_arrays(ref)
        found = output_errors(refs, named_arrays(out)[1], names, where="fuse: the fused model's")
        per_output = merge_errors(per_output, found)
        checked.append(list(shape))
    worst = worst_output(per_output)
    max_abs = max((r["max_abs_err"] for r in per_output), default=0.0)
    return max_abs, (worst["max_rel_err"] if worst else 0.0), checked, notes, per_output


def output_difference(ref: Any, out: Any, tol: float = 1e-4) -> str | None:
    """Why two return values of a model (or submodule) are not the same function's, or None when every output
    is within `tol` (relative): "it returns other outputs", or the outputs over tolerance, worst first."""
    names, refs = named_arrays(ref)
    outs = named_arrays(out)[1]
    if len(outs) != len(refs) or any(r.shape != o.shape for r, o in zip(refs, outs)):
        return "it returns other outputs"
    return describe_failures(output_errors(refs, outs, names, where="fuse"), tol) or None


def named_arrays(value: Any) -> tuple[list[str], list[Any]]:
    """(names, float64 numpy arrays) of the tensors in a model's (or submodule's) return value, in ONNX order;
    leaves that are not tensors (a submodule may return sizes) are left out."""
    pairs = [(n, t) for n, t in flatten_named(value) if isinstance(t, torch.Tensor)]
    return [n for n, _ in pairs], [t.detach().double().cpu().numpy() for _, t in pairs]
