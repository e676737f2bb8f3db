"""The second tracer: torch.export, for forwards torch.fx cannot read.

torch.fx traces with symbolic values, so a forward that reads a shape into Python (`int(w.size(0) / groups)`,
`range(x.shape[1])`, `if x.dim() == 4`; official OREPA's `dwsc2full` is one) fails on the first `int()`.
`torch.export.export(strict=False)` runs the forward on fake tensors of the example's shape: parameter shapes are
numbers, so a kernel generated from parameters becomes a chain of ops on parameters, which constants.py then
evaluates once. Batch, height and width are left to export (`Dim.AUTO`): dynamic where the forward allows it,
specialised where it branches on them, and a specialised graph is checked, never trusted (`specialisation`).

The exported graph is written in ATen ops; the region finder reads the torch functions they come from, so each
ATen op it can fuse through is renamed to its torch function with the same arguments (`to_torch_functions`).
Everything else stays an ATen call: those run as they are, and the finder treats them as nonlinear sources.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import operator
import warnings
from typing import Any, Callable, Iterator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from edgerep.errors import one_line

_aten = torch.ops.aten


class ExportRefused(Exception):
    """torch.export could not trace the model, or its graph is not the model at every checked size."""


def export_graph(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """The model as one fx graph of ATen ops, parameters read by `get_attr` (module paths kept)."""
    from torch.export import Dim

    # Export specialises every dimension of size 1, so a batch-1 example would fix the batch: trace at batch 2.
    traced_at = example.expand(2, *example.shape[1:]).clone() if example.dim() and example.shape[0] == 1 else example
    dims = {d: Dim.AUTO for d in range(example.dim()) if d != 1}  # the channel count is part of the weights
    last: Exception = RuntimeError("no example to trace at")
    for x in (traced_at, example) if traced_at is not example else (example,):
        try:
            with _quiet():
                program = torch.export.export(model, (x,), strict=False, dynamic_shapes=(dims,))
            unlifted = program.module()
            # a plain GraphModule over the same graph: the unlifted module refuses .eval() and .train()
            return fx.GraphModule(unlifted, unlifted.graph)
        except Exception as exc:  # data-dependent control flow, unsupported ops: the caller falls back
            last = exc
    raise ExportRefused(f"torch.export could not trace it ({type(last).__name__}: {one_line(last)})")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch.export while it tries: a refused trace logs the whole graph, and refusal is expected here
    (the caller says in one line why the route was not taken)."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def specialisation(graph: fx.GraphModule, reference: nn.Module, shapes: list[tuple[int, ...]],
                   tol: float = 1e-4) -> str | None:
    """Why the exported graph is not the model at one of `shapes` (a guard it recorded fails, or its outputs
    differ), or None when it is the model at all of them. Shapes the original itself rejects are skipped."""
    from edgerep.fuse.check import output_difference

    gen = torch.Generator().manual_seed(1)
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        size = "x".join(map(str, shape))
        with torch.no_grad():
            try:
                ref = reference(x)
            except Exception:
                continue
            try:
                out = graph(x)
            except Exception as exc:  # typically "Guard failed: input.size()[2] == 32"
                return f"at {size}: {one_line(exc)}"
        why = output_difference(ref, out, tol)
        if why is not None:
            return f"at {size}: {why}"
    return None


def _drop_guards(gm: fx.GraphModule) -> None:
    """Remove export's input-shape guard call: checked by `specialisation`, it would only pin every tensor it reads."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards_fn"):
            gm.graph.erase_node(node)
    for name, _ in list(gm.named_children()):
        if name.startswith("_guards_fn"):
            delattr(gm, name)


def _same_args(fn: Callable) -> Callable[[fx.Node], tuple[Callable, tuple, dict]]:
    return lambda node: (fn, node.args, dict(node.kwargs))


def _batch_norm(node: fx.Node) -> tuple[Callable, tuple, dict]:
    # aten.batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled)
    x, w, b, mean, var, training, momentum, eps = (list(node.args) + [None] * 8)[:8]
    return F.batch_norm, (x, mean, var, w, b, bool(training), momentum, eps), {}


def _avg_pool(node: fx.Node) -> tuple[Callable, tuple, dict]:
    args = list(node.args)
    if len(args) > 2 and not args[2]:
        args[2] = None  # ATen writes "stride = kernel" as an empty list; F.avg_pool2d as None
    return F.avg_pool2d, tuple(args), dict(node.kwargs)


def _constant_pad(node: fx.Node) -> tuple[Callable, tuple, dict]:
    x, pad, value = (list(node.args) + [0.0])[:3]
    return F.pad, (x, pad, "constant", node.kwargs.get("value", value)), {}


def _in_place(fn: Callable) -> Callable[[fx.Node], tuple[Callable, tuple, dict] | None]:
    # `x += y` as fx records it (operator.iadd); only without alpha, which the operator cannot take
    return lambda node: (fn, node.args, {}) if node.kwargs.get("alpha", 1) == 1 else None


# ATen op -> (torch function, its arguments). Only ops the region finder composes through, and the common
# nonlinearities (so op histograms name them as an fx trace would).
_RENAMES: dict[Any, Callable[[fx.Node], tuple[Callable, tuple, dict] | None]] = {
    _aten.conv2d.default: _same_args(F.conv2d),
    _aten.linear.default: _same_args(F.linear),
    _aten.batch_norm.default: _batch_norm,
    _aten.avg_pool2d.default: _avg_pool,
    _aten.pad.default: _same_args(F.pad),
    _aten.constant_pad_nd.default: _constant_pad,
    _aten.dropout.default: _same_args(F.dropout),
    _aten.add.Tensor: _same_args(torch.add),
    _aten.sub.Tensor: _same_args(torch.sub),
    _aten.mul.Tensor: _same_args(torch.mul),
    _aten.div.Tensor: _same_args(torch.div),
    _aten.add_.Tensor: _in_place(operator.iadd),
    _aten.mul_.Tensor: _in_place(operator.imul),
    _aten.cat.default: _same_args(torch.cat),
    _aten.relu.default: _same_args(torch.relu),
    _aten.sigmoid.default: _same_args(torch.sigmoid),
    _aten.silu.default: _same_args(F.silu),
    _aten.hardswish.default: _same_args(F.hardswish),
    _aten.flatten.using_ints: _same_args(torch.flatten),
    _aten.adaptive_avg_pool2d.default: _same_args(F.adaptive_avg_pool2d),
}


def to_torch_functions(gm: fx.GraphModule) -> int:
    """Rename, in place, the ATen ops the region finder reads to their torch functions; returns how many."""
    _drop_guards(gm)
    renamed = 0
    for node in gm.graph.nodes:
        rename = _RENAMES.get(node.target) if node.op == "call_function" else None
        new = rename(node) if rename is not None else None
        if new is None:
            continue
        node.target, node.args, node.kwargs = new[0], new[1], new[2]
        renamed += 1
    gm.graph.lint()
    gm.recompile()
    return renamed


def trace(model: nn.Module, example: torch.Tensor, reference: nn.Module, shapes: list[tuple[int, ...]]
          ) -> fx.GraphModule:
    """`model` exported, checked at `shapes` against `reference`, in the torch functions the fuser reads.
    Raises ExportRefused with the reason when any step fails."""
    # Export runs the forward, and a forward may cache Python state on itself (a head's anchors keyed by the
    # input shape): trace a copy, so a refused export leaves the model as it was for the fallback.
    gm = export_graph(copy.deepcopy(model), example)
    why = specialisation(gm, reference, shapes)
    if why is not None:
        raise ExportRefused(f"torch.export's graph is specialised on the example shape ({why})")
    to_torch_functions(gm)
    return gm
