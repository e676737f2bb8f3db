"""The layers INT8 acts on, named twice: by ONNX node (what every backend's exclusion list takes) and by the
PyTorch module it came from (what the user knows).

The mapping is derived from what the exporters leave behind, most reliable first:
  1. the weight initializer keeps the qualified parameter name (`stages.1.0.reparam.weight`); edgerep's
     exporter also names weighted nodes after it, `/stages.1.0.reparam/Conv` (export.name_nodes_by_module);
  2. the TorchScript exporter's scope path (`/stages.1/stages.1.0/reparam/Conv`), where each segment is the
     child's name, or its qualified name when it starts with the parent's (nn.Sequential children);
  3. the dynamo exporter's flattened parameter names (`p_stages_1_0_reparam_weight`), matched against
     `module_names` when the caller has the model.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

# Weighted operators that post-training INT8 quantizes and that a backend can keep in float one by one.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class QuantLayer:
    node: str  # ONNX node name (the key of every exclusion list)
    op_type: str
    module: str | None  # PyTorch module path, e.g. "stages.1.0.reparam"
    weight: str | None  # initializer name of the weight
    input: str  # activation tensor feeding the layer
    output: str
    mapped_by: str  # which rule gave `module`: node-name | initializer | scope | dynamo-name | none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def module_from_node_name(node_name: str, module_names: set[str] | None = None) -> str | None:
    """The module path in an ONNX node name: `/stages.1.0.reparam/Conv` (edgerep) or
    `/stages.1/stages.1.0/reparam/Conv` (TorchScript scopes) -> `stages.1.0.reparam`."""
    parts = [p for p in node_name.strip("/").split("/") if p]
    if len(parts) < 2:
        return None
    scopes = parts[:-1]  # the last part is the op (Conv, Conv_1, ...)
    path = ""
    for seg in scopes:
        if path and seg.startswith(path + "."):
            path = seg  # a qualified child name (Sequential items: "stages.1" then "stages.1.0")
        else:
            path = f"{path}.{seg}" if path else seg
    if module_names is not None and path not in module_names:
        return None
    return path


def owning_module(node_name: str, module_names: set[str]) -> str | None:
    """The innermost module of `module_names` that contains the node: for a fused conv of the unfused model
    (`/backbone.stages.1.0.reparam/Conv`, where `reparam` exists only after fusion) its block
    `backbone.stages.1.0`, the module a user finds in their own model."""
    path = module_from_node_name(node_name)
    while path:
        if path in module_names:
            return path
        path = path.rpartition(".")[0]
    return None


def module_from_initializer(init_name: str, module_names: set[str] | None = None) -> tuple[str | None, str]:
    """`stages.1.0.reparam.weight` -> (`stages.1.0.reparam`, "initializer"); dynamo's
    `p_stages_1_0_reparam_weight` -> the module of `module_names` it flattens, (.., "dynamo-name")."""
    m = re.match(r"^(.*)\.(weight|weight_orig|kernel)$", init_name)
    if m and (module_names is None or m.group(1) in module_names):
        return m.group(1), "initializer"
    if module_names:
        flat = re.sub(r"^(p_|param_)", "", init_name)
        flat = re.sub(r"_(weight)$", "", flat)
        by_flat = {n.replace(".", "_"): n for n in module_names}
        if flat in by_flat:
            return by_flat[flat], "dynamo-name"
    return None, "none"


def quantizable_layers(onnx_path: Path | Any, module_names: Iterable[str] | None = None) -> list[QuantLayer]:
    """Every weighted node of the ONNX model (a path or a ModelProto), in graph order, with its module."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False) if not hasattr(onnx_path, "graph") else onnx_path
    names = set(module_names) if module_names is not None else None
    inits = {t.name for t in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        weight = next((i for i in node.input[1:2] if i in inits), None)
        if weight is None and node.op_type in ("MatMul", "Gemm"):
            weight = next((i for i in node.input if i in inits), None)
        if weight is None:
            continue  # an activation x activation MatMul: nothing to keep in float per layer
        # The weight's qualified name is the state-dict key itself; node names are only scopes.
        module, how = module_from_initializer(weight, names)
        if module is None or how == "dynamo-name":
            from_node = module_from_node_name(node.name, names)
            if from_node is not None:
                module, how = from_node, "node-name"
        layers.append(QuantLayer(node=node.name, op_type=node.op_type, module=module, weight=weight,
                                 input=node.input[0], output=node.output[0], mapped_by=how if module else "none"))
    return layers


def module_names_of(model: Any) -> set[str]:
    """Qualified names of a torch module's submodules (for matching flattened exporter names)."""
    return {name for name, _ in model.named_modules() if name}


def layer_macs(onnx_path: Path | Any) -> dict[str, int]:
    """Multiply-accumulates per sample of every weighted node (quantizable_layers), from ONNX shape inference: a
    Conv's output elements x (input channels / groups) x kernel area, a Gemm/MatMul's output elements x the
    contracted size. A symbolic batch counts as 1; a node whose shapes cannot be inferred counts 0."""
    import onnx

    model: Any = onnx.load(str(onnx_path), load_external_data=False) if not hasattr(onnx_path, "graph") else onnx_path
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - an uninferable graph leaves every count at 0, which the caller reports
        pass
    shapes: dict[str, list[int]] = {}
    for vi in [*model.graph.value_info, *model.graph.output, *model.graph.input]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    out: dict[str, int] = {}
    for layer in quantizable_layers(model):
        node, w = nodes[layer.node], inits.get(layer.weight or "", [])
        y = shapes.get(layer.output)
        if not y or not w:
            out[layer.node] = 0
            continue
        elems = 1
        for d in y[1:] if len(y) > 1 else y:
            elems *= max(int(d), 1)
        if node.op_type in ("Conv", "ConvTranspose"):
            per = 1
            for d in w[1:]:
                per *= int(d)  # Conv weight (M, C/group, kh, kw): each output element sums C/group x kh x kw products
            if node.op_type == "ConvTranspose":  # weight (C, M/group, kh, kw): each input element spreads
                x = shapes.get(node.input[0]) or []
                elems = 1
                for d in x[1:]:
                    elems *= max(int(d), 1)
            out[layer.node] = elems * per
        else:  # Gemm / MatMul: the contracted dimension is the weight's other one
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            k = int(w[-1] if trans_b else w[0]) if len(w) >= 2 else int(w[0])
            out[layer.node] = elems * k
    return out


def layer_names(onnx_path: Path | Any, module_names: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Every name --keep-float takes, with the ONNX nodes it stands for: each weighted node's own name, and each
    module path that holds weighted nodes (the fused module `stages.1.0.reparam`, its blocks `stages.1.0`,
    `stages.1`, ..., and the unfused model's modules among `module_names`)."""
    names: dict[str, list[str]] = {}
    known = set(module_names or ())
    for layer in quantizable_layers(onnx_path, module_names):
        names.setdefault(layer.node, []).append(layer.node)
        paths = {p for p in (layer.module, module_from_node_name(layer.node),
                             owning_module(layer.node, known) if known else None) if p}
        for path in paths:
            while path:  # every enclosing module holds the node too
                names.setdefault(path, [])
                if layer.node not in names[path]:
                    names[path].append(layer.node)
                path = path.rpartition(".")[0]
    return names


def resolve_keep_float(wanted: Iterable[str], onnx_path: Path | Any, module_names: Iterable[str] | None = None, *,
                       flag: str = "--keep-float") -> list[str]:
    """The ONNX nodes of `--keep-float NAME ...` (node names or PyTorch module paths), in graph order without
    repeats; an unknown name is a UserError that lists the closest names."""
    import difflib

    from edgerep.errors import UserError

    names = layer_names(onnx_path, module_names)
    order = {layer.node: i for i, layer in enumerate(quantizable_layers(onnx_path))}
    nodes: list[str] = []
    for name in wanted:
        key = name.strip()
        if key not in names:
            close = difflib.get_close_matches(key, list(names), n=5, cutoff=0.5) or sorted(names, key=len)[:5]
            raise UserError(f"{flag} {name}: no weighted ONNX node or module of the model has that name; closest: "
                            f"{', '.join(close)} (`edgerep sensitivity` lists them all)")
        nodes += [n for n in names[key] if n not in nodes]
    return sorted(nodes, key=lambda n: order.get(n, 0))
