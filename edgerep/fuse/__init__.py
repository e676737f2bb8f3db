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
from edgerep.fuse import check
from edgerep.fuse.graft import graft
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
    method: str  # "fx" (whole graph) or "modules" (fell back to module by module)
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
    try:
        gm = fx.symbolic_trace(work)
    except Exception as exc:  # fx cannot trace it (data-dependent control flow, unsupported Python)
        notes.append(f"torch.fx could not trace the whole model ({type(exc).__name__}); fused module by module")
    else:
        try:
            ops_before = check.op_histogram(gm, example)  # from this trace: tracing a big model twice costs seconds
            outcome = fuse_graph(gm, example, work)
            fused, regions, unfused, method = outcome.module, outcome.regions, outcome.unfused, "fx"
        except Exception as exc:  # the trace does not run, or our fuser has a bug on it: never the user's crash
            notes.append(f"the whole-model graph could not be fused ({one_line(exc)}); fused module by module")
            work = copy.deepcopy(reference)
    if fused is None:
        ops_before = check.op_histogram(reference, example)
        fused, regions, unfused = _fuse_modules(work, example, notes)
        method = "modules"
    fused.eval()
    shapes = check_shapes or check.check_shapes(tuple(example.shape))
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



def _fuse_modules(model: nn.Module, example: torch.Tensor, notes: list[str]
                  ) -> tuple[nn.Module, list[FusedRegion], list[Unfused]]:
    """Fuse each traceable submodule on its own, inside its own object; recurse into the ones fx cannot trace.

    The model's own forward runs unchanged (it may walk its layers and read `m.f`, `m.i`, `m.type`).
    Whatever cannot be fused stays as it is and is reported.
    """
    inputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in model.named_modules():
        def record(_m, args, _name=name):
            if _name not in inputs and args and isinstance(args[0], torch.Tensor):
                inputs[_name] = args[0].detach()
        hooks.append(mod.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    regions: list[FusedRegion] = []
    unfused: list[Unfused] = []
    grafted: list[str] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            path = f"{prefix}{child_name}"
            x = inputs.get(path)
            has_children = next(child.children(), None) is not None
            # A childless module of the user's own with parameters may compute its kernel in forward (a
            # weight-standardized conv): worth tracing. torch.nn's own leaves are not.
            own_code = next(child.parameters(recurse=False), None) is not None and \
                not type(child).__module__.startswith("torch.nn")
            if x is None or x.dim() != 4 or not (has_children or own_code):
                if has_children:
                    visit(child, path + ".")
                continue
            try:
                gm = fx.symbolic_trace(child)  # shares the child's leaves; fuse_graph never changes them
            except Exception:
                visit(child, path + ".")
                continue
            try:
                outcome = fuse_graph(gm, x, child)
                _same_output(child, outcome.module, x)
            except Exception as exc:
                unfused.append(Unfused(path, type(child).__name__, f"left as it is: the fuser failed on it "
                                       f"({one_line(exc)})"))
                visit(child, path + ".")
                continue
            for region in outcome.regions:
                region.name = f"{path}.{region.name}"
            for note in outcome.unfused:
                note.node = f"{path}.{note.node}"
            regions.extend(outcome.regions)
            unfused.extend(outcome.unfused)
            if not _become_plain_conv(child, outcome.module):
                graft(child, outcome.module)
            grafted.append(path)

    visit(model, "")
    # A BN no traceable module holds has no conv we could see it follow: it stays, and we say so.
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and not any(name.startswith(g + ".") for g in grafted):
            unfused.append(Unfused(name, "batch_norm", "its parent's forward could not be traced by torch.fx, "
                                   "so no conv before it could be found; left as it is"))
    return model, regions, unfused


def _become_plain_conv(module: nn.Module, gm: fx.GraphModule) -> bool:
    """A Conv2d subclass that fused to one conv of its own geometry (weight standardization folded) keeps
    being a Conv2d: it takes the fused weight and bias and runs nn.Conv2d's forward. Anything reading
    `m.weight` keeps working, as it would not if the weight moved into a child."""
    if not isinstance(module, nn.Conv2d):
        return False
    calls = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    conv = gm.get_submodule(str(calls[0].target)) if len(calls) == 1 and calls[0].op == "call_module" else None
    geometry = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
    if type(conv) is not nn.Conv2d or any(getattr(conv, g) != getattr(module, g) for g in geometry) or \
            module.padding_mode != "zeros":
        return False
    assert conv.bias is not None  # fuse_graph's convs (_make_conv) have one
    module.weight = nn.Parameter(conv.weight.detach().clone())
    module.bias = nn.Parameter(conv.bias.detach().clone())
    # an instance attribute, as `module.forward = ...` sets it (nn.Module stores a plain value in __dict__)
    vars(module)["forward"] = types.MethodType(nn.Conv2d.forward, module)
    return True


def _same_output(original: nn.Module, fused: nn.Module, x: torch.Tensor, tol: float = 1e-4) -> None:
    """Refuse to graft a fused submodule that does not reproduce the original on its recorded input."""
    with torch.no_grad():
        ref, out = original(x), fused(x)
    names, refs = check.named_arrays(ref)
    outs = check.named_arrays(out)[1]
    if len(outs) != len(refs) or any(r.shape != o.shape for r, o in zip(refs, outs)):
        raise ValueError("its fused form returns other outputs than the original on the recorded input")
    from edgerep.models.output_errors import describe_failures, output_errors

    bad = describe_failures(output_errors(refs, outs, names, where="fused submodule"), tol)
    if bad:
        raise ValueError(f"its fused form differs on the recorded input: {bad}")


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
