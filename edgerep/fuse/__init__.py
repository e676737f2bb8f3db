"""Structural re-parameterization: `fuse(model, example_inputs) -> FuseResult`.

The original model is never changed: we fuse a deep copy. A model in training mode is fused in eval
mode (BN running statistics), and the report says so: batch statistics are never folded.
"""
from __future__ import annotations

import copy
import sys
import types
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from . import check
from .graph import FusedRegion, Unfused, fuse_graph


@dataclass
class FuseReport:
    max_abs_err: float
    max_rel_err: float
    checked_shapes: list[list[int]]
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    method: str  # "fx" (whole graph) or "modules" (fell back to module by module)
    regions: list[FusedRegion] = field(default_factory=list)
    unfused: list[Unfused] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def passed(self, tol: float = 1e-4) -> bool:
        return self.max_rel_err <= tol

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["regions"] = [r.to_dict() for r in self.regions]
        d["unfused"] = [u.to_dict() for u in self.unfused]
        return d


@dataclass
class FuseResult:
    model: nn.Module
    report: FuseReport


def _example_tensor(example_inputs: Any) -> torch.Tensor:
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs
    if isinstance(example_inputs, (tuple, list)) and example_inputs and isinstance(example_inputs[0], torch.Tensor):
        return example_inputs[0]
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(d, int) for d in example_inputs):
        return torch.randn(*example_inputs)
    raise TypeError("example_inputs must be a tensor, a tuple holding one, or a shape")


def fuse(model: nn.Module, example_inputs: Any, *, check_shapes: list[tuple[int, ...]] | None = None) -> FuseResult:
    """Fuse every linear multi-branch region of `model` into single convolutions and check the result.

    `example_inputs`: a tensor (or a 1-tuple of one, or a shape). The fused model is in eval mode; the report
    gives the error against the original on fresh random inputs (the example shape and an odd size).
    """
    example = _example_tensor(example_inputs)
    notes: list[str] = []
    reference = copy.deepcopy(model)
    if model.training:
        notes.append("the model was in training mode: fused in eval mode with BN running statistics")
    reference.eval()
    work = copy.deepcopy(reference)
    try:
        gm = fx.symbolic_trace(work)
    except Exception as exc:  # fx cannot trace it (data-dependent control flow, unsupported Python)
        notes.append(f"torch.fx could not trace the whole model ({type(exc).__name__}); fused module by module")
        ops_before = check.op_histogram(reference, example)
        fused, regions, unfused = _fuse_modules(work, example, notes)
        method = "modules"
    else:
        ops_before = check.op_histogram(gm, example)  # from this trace: tracing a big model twice costs seconds
        outcome = fuse_graph(gm, example, work)
        fused, regions, unfused = outcome.module, outcome.regions, outcome.unfused
        method = "fx"
    fused.eval()
    shapes = check_shapes or check.check_shapes(tuple(example.shape))
    max_abs, max_rel, checked, shape_notes = check.compare(reference, fused, shapes)
    notes.extend(shape_notes)
    report = FuseReport(
        max_abs_err=max_abs, max_rel_err=max_rel, checked_shapes=checked,
        ops_before=ops_before, ops_after=check.op_histogram(fused, example),
        params_before=check.param_count(reference), params_after=check.param_count(fused),
        flops_before=check.flop_count(reference, example), flops_after=check.flop_count(fused, example),
        method=method, regions=regions, unfused=unfused, notes=notes,
    )
    return FuseResult(fused, report)


def _fuse_fx(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, list[FusedRegion], list[Unfused]]:
    gm = fx.symbolic_trace(model)
    outcome = fuse_graph(gm, example, model)
    return outcome.module, outcome.regions, outcome.unfused


def _fuse_modules(model: nn.Module, example: torch.Tensor, notes: list[str]
                  ) -> tuple[nn.Module, list[FusedRegion], list[Unfused]]:
    """Fuse each traceable submodule on its own, recursing into the ones fx cannot trace."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in model.named_modules():
        def record(_m, args, _name=name):
            if _name not in inputs and args and isinstance(args[0], torch.Tensor):
                inputs[_name] = args[0].detach()
        hooks.append(mod.register_forward_pre_hook(record))
    with torch.no_grad():
        model(example)
    for h in hooks:
        h.remove()
    regions: list[FusedRegion] = []
    unfused: list[Unfused] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            path = f"{prefix}{child_name}"
            x = inputs.get(path)
            if x is None or x.dim() != 4 or next(child.children(), None) is None:
                if next(child.children(), None) is not None:
                    visit(child, path + ".")
                continue
            try:
                fused, r, u = _fuse_fx(copy.deepcopy(child), x)
            except Exception:
                visit(child, path + ".")
                continue
            for item in r:
                item.name = f"{path}.{item.name}"
            regions.extend(r)
            unfused.extend(u)
            setattr(parent, child_name, fused)

    visit(model, "")
    return model, regions, unfused


class _CallableModule(types.ModuleType):
    """`edgerep.fuse` names both this subpackage and the function: calling the package calls `fuse`.

    (Python's import system binds `edgerep.fuse` to the subpackage whenever any part of it is imported,
    so a same-named function in edgerep/__init__ would be shadowed; a callable module keeps both working
    without importing torch when `edgerep` itself is imported.)
    """

    def __call__(self, model: nn.Module, example_inputs: Any, **kwargs: Any) -> FuseResult:
        return fuse(model, example_inputs, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["FuseReport", "FuseResult", "fuse"]
