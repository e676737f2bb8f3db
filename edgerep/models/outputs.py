"""A model's outputs as one flat, named list: what every stage compares and every engine returns.

A PyTorch model may return a tensor, a tuple/list (possibly nested) or a dict of tensors. ONNX export
flattens them in that order (dict values in insertion order), so the i-th flattened PyTorch output is the
i-th ONNX graph output; names are the dict keys (nested: joined with "."), else "output" for a lone
tensor and "output0", "output1", ... for several. Ground floor: imports nothing of edgerep but errors.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from edgerep.errors import UserError


def _walk(obj: Any, prefix: str, out: list[tuple[str | None, Any]]) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            _walk(value, f"{prefix}{key}.", out)
    elif isinstance(obj, (tuple, list)):
        for value in obj:
            _walk(value, prefix, out)
    elif obj is None:
        return  # torch.onnx drops None outputs too
    else:
        out.append((prefix[:-1] or None, obj))


def flatten_named(obj: Any) -> list[tuple[str, Any]]:
    """[(name, tensor)] in ONNX output order for a model's return value (see the module docstring)."""
    items: list[tuple[str | None, Any]] = []
    _walk(obj, "", items)
    if not items:
        raise UserError("the model's forward returned no tensor: nothing to export or validate")
    names = default_names(len(items))
    named = [(key or names[i], value) for i, (key, value) in enumerate(items)]
    seen: set[str] = set()
    for name, _ in named:
        if name in seen:  # two dict keys flattening to one name: fall back to positions, which are unique
            return [(names[i], value) for i, (_, value) in enumerate(named)]
        seen.add(name)
    return named


def flatten_outputs(obj: Any) -> list[Any]:
    """The tensors of a model's return value, in ONNX output order."""
    return [value for _, value in flatten_named(obj)]


def output_names(obj: Any) -> list[str]:
    """The names edgerep gives a model's outputs in ONNX."""
    return [name for name, _ in flatten_named(obj)]


def default_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output{i}" for i in range(count)]


def to_numpy_list(obj: Any) -> list[np.ndarray]:
    """A model's return value (torch tensors or arrays) as float32 numpy arrays, in ONNX output order."""
    arrays = []
    for value in flatten_outputs(obj):
        if hasattr(value, "detach"):
            value = value.detach().float().cpu().numpy()
        arrays.append(np.asarray(value, dtype=np.float32))
    return arrays
