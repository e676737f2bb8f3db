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

from edgerep.errors import one_line
from edgerep.fuse import check, export_trace
from edgerep.fuse.by_module import fuse_modules
from edgerep.fuse.graph import FusedRegion, Unfused, fuse_graph


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
    method: str  # the tracer: "fx" or "export" (whole graph), or "modules" (fell back to module by module)
    regions: list[FusedRegion] = field(default_factory=list)
    unfused: list[Unfused] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # every output of the model: [{name, shape, max_abs_err, max_rel_err}] in ONNX order (edgerep.models.outputs names);
    # max_abs_err / max_rel_err above are the worst output's
    per_output: list[dict[str, Any]] = field(default_factory=list)

    def passed(self, tol: float = 1e-4) -> bool:
        return self.max_rel_err <= tol

    def failed_outputs(self, tol: float = 1e-4) -> list[str]:
        """The names of the outputs whose relative error exceeds `tol`, worst first."""
        from edgerep.models.output_errors import over_tolerance

        return [r["name"] for r in over_tolerance(self.per_output, tol)]

    def failure(self, tol: float = 1e-4) -> str:
        """"in output 'scores'" / "in outputs 'boxes', 'scores'": where the error over `tol` is (empty if nowhere)."""
        names = self.failed_outputs(tol)
        return f"in output{'s' if len(names) > 1 else ''} {', '.join(repr(n) for n in names)}" if names else ""

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
    A model fx can trace whole comes back as a GraphModule; otherwise each traceable submodule is fused inside
    its own object (see graft.py), so the model keeps its class, its forward and what that forward reads.
    """
    example = _example_tensor(example_inputs)
    notes: list[str] = []
    reference = _deepcopy(model)
    if model.training:
        notes.append("the model was in training mode: fused in eval mode with BN running statistics")
    reference.eval()
    work = copy.deepcopy(reference)
    fused: nn.Module | None = None
    shapes = check_shapes or check.check_shapes(tuple(example.shape))
    # Tracers in order: torch.fx (keeps module calls), torch.export (reads shapes as numbers), then module by module.
    for method in ("fx", "export"):
        if method == "fx" and "forward" in vars(work):
            # fx traces the class's forward, not one set on the instance (a deploy form's, a fused module's)
            notes.append("its forward is set on the instance, which torch.fx does not trace; trying torch.export")
            continue
        if method == "export" and _routes_its_layers(work):
            notes.append("it routes its layers by their attributes (YOLO-style `m.f`): fused module by module, "
                         "so it keeps its own objects")
            break
        try:
            gm = fx.symbolic_trace(work) if method == "fx" else export_trace.trace(work, example, reference, shapes)
        except export_trace.ExportRefused as exc:
            notes.append(f"{exc}; fused module by module")
            break
        except Exception as exc:  # fx cannot trace it (a shape read into Python, data-dependent control flow)
            notes.append(f"torch.fx could not trace the whole model ({type(exc).__name__}); trying torch.export"
                         if method == "fx" else f"torch.export failed ({one_line(exc)}); fused module by module")
            continue
        try:
            ops_before = check.op_histogram(gm, example)  # from this trace: tracing a big model twice costs seconds
            outcome = fuse_graph(gm, example, work)
            fused, regions, unfused = outcome.module, outcome.regions, outcome.unfused
        except Exception as exc:  # the trace does not run, or our fuser has a bug on it: never the user's crash
            notes.append(f"the whole-model graph ({method}) could not be fused ({one_line(exc)}); fused module by module")
            work = copy.deepcopy(reference)
        break
    if fused is None:
        ops_before = check.op_histogram(reference, example)
        gen = torch.Generator().manual_seed(0)
        examples = [example, *(torch.randn(*s, generator=gen) for s in shapes if tuple(s) != tuple(example.shape))]
        fused, regions, unfused = fuse_modules(work, examples)
        method = "modules"
    fused.eval()
    max_abs, max_rel, checked, shape_notes, per_output = check.compare(reference, fused, shapes)
    notes.extend(shape_notes)
    report = FuseReport(
        max_abs_err=max_abs, max_rel_err=max_rel, checked_shapes=checked,
        ops_before=ops_before, ops_after=check.op_histogram(fused, example),
        params_before=check.param_count(reference), params_after=check.param_count(fused),
        flops_before=check.flop_count(reference, example), flops_after=check.flop_count(fused, example),
        method=method, regions=regions, unfused=unfused, notes=notes, per_output=per_output,
    )
    return FuseResult(fused, report)


def _routes_its_layers(model: nn.Module) -> bool:
    """Layers carrying their own routing (`f`: where the input comes from, `i`: the index), read by a forward
    that walks them, as Ultralytics' YOLO and RT-DETR do. Such a model is fused inside its own objects
    (by_module.py): its forward, its head's export flags and its layers' names are what the rest of edgerep,
    and Ultralytics' own tools, read; a graph traced whole would replace them."""
    return any(hasattr(m, "f") and hasattr(m, "i") for m in model.modules() if m is not model)


def _deepcopy(model: nn.Module) -> nn.Module:
    """copy.deepcopy, also for modules holding computed (non-leaf) tensors as attributes.

    The old `torch.nn.utils.weight_norm` stores `weight` as the output of a computation, which torch refuses
    to deepcopy; a detached copy of it is exact (its forward pre-hook recomputes it anyway).
    """
    memo: dict[int, Any] = {}
    for mod in model.modules():
        for value in vars(mod).values():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)



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
