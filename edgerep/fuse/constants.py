"""Evaluate, once, everything a traced model computes from its parameters and buffers alone.

OREPA builds its kernel every forward from its branch parameters (einsum, padding, 1x1->kxk composition);
weight normalization, weight standardization and low-rank updates (`W + A @ B`) do the same on a smaller
scale. In eval mode none of that depends on the input, so it is a constant: each such value is computed
once and stored as a buffer the graph reads, before regions are found. The convolution that consumes it
then looks like any other conv with a constant kernel, and folds and merges like one.

(torch.fx.experimental.const_fold does a similar split, but returns a wrapper that re-runs the constant
subgraph lazily and keeps it as a submodule; the region finder needs plain `get_attr` constants in the
same graph, so this small pass writes them directly.)
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.fx as fx

# Functions whose value is not a function of their inputs: never folded.
_RANDOM = ("rand", "bernoulli", "normal", "multinomial", "poisson", "dropout", "uniform", "exponential", "cauchy",
           "geometric", "log_normal")


def _is_pure(node: fx.Node) -> bool:
    name = getattr(node.target, "__name__", str(node.target)).lower()
    if any(r in name for r in _RANDOM):
        return False
    if node.op == "call_method" and name.endswith("_") and not name.endswith("__"):
        return False  # in place: it changes a parameter
    return node.op in ("call_function", "call_method")


def fold_parameter_computations(gm: fx.GraphModule) -> list[str]:
    """Replace every tensor computed from parameters/buffers only by a stored constant; returns the folded nodes.

    Nodes are evaluated in graph order, reading `get_attr` values; a node that depends on a placeholder (the
    model input), or is random or in place, is left as it is.
    """
    values: dict[fx.Node, Any] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            values[node] = fetch_attr(gm, str(node.target))
        elif _is_pure(node) and node.all_input_nodes and all(n in values for n in node.all_input_nodes):
            try:
                values[node] = evaluate(node, lambda arg: fx.node.map_arg(arg, lambda ref: values[ref]))
            except Exception:  # not evaluable on its own (it needs what tracing could not give): leave it
                continue
    folded: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" or node not in values or not isinstance(values[node], torch.Tensor):
            continue
        if all(isinstance(values.get(user), torch.Tensor) for user in node.users):
            continue  # only read by other constant tensors: the last of the chain carries it
        name = _free_name(gm, f"_edgerep_const_{node.name}")
        gm.register_buffer(name, values[node].detach().clone())
        with gm.graph.inserting_before(node):
            const = gm.graph.get_attr(name)
        const.meta = dict(node.meta)
        node.replace_all_uses_with(const)
        folded.append(node.name)
    if folded:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return folded


def fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    """The value a `get_attr` node reads (tensors detached)."""
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj.detach() if isinstance(obj, torch.Tensor) else obj


def evaluate(node: fx.Node, lookup: Callable[[Any], Any]) -> Any:
    """Run one call_function / call_method node on known values; `lookup` maps its args (nodes) to values."""
    args = lookup(node.args)
    kwargs = {k: lookup(v) for k, v in node.kwargs.items()}
    with torch.no_grad():
        if node.op == "call_function":
            assert not isinstance(node.target, str)  # a call_function's target is the function itself
            return node.target(*args, **kwargs)
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)


def _free_name(gm: fx.GraphModule, wanted: str) -> str:
    name, i = wanted, 1
    while hasattr(gm, name):
        name, i = f"{wanted}_{i}", i + 1
    return name
