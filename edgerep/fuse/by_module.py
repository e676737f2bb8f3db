"""The fallback when no tracer reads the whole model: fuse it module by module, inside its own objects.

The model's own forward runs unchanged (it may walk its layers and read `m.f`, `m.i`, `m.type`). Each submodule
a tracer can read (torch.fx, then torch.export) is fused on its own and grafted back (graft.py). Two moves need
no trace at all, only runs of the module on its recorded inputs:
- a module whose whole effect is one convolution with a kernel computed from its parameters (a weight
  generator that reads shapes or values into Python) becomes an nn.Conv2d with that kernel (`recorded_conv`);
- a BN whose input is, tensor for tensor, a plain conv's output is folded into that conv (`fold_bns_after_convs`),
  kept only when the model's outputs do not move.
Whatever cannot be fused stays as it is and is reported.
"""
from __future__ import annotations

import types
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from edgerep.errors import one_line
from edgerep.fuse import algebra, check, export_trace
from edgerep.fuse.graft import graft
from edgerep.fuse.graph import FusedRegion, Unfused, fuse_graph

_CONV_ARGS = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
_CONV_DEFAULTS: dict[str, Any] = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def fuse_modules(model: nn.Module, examples: list[torch.Tensor]
                 ) -> tuple[nn.Module, list[FusedRegion], list[Unfused]]:
    """Fuse `model` (changed in place) submodule by submodule; `examples`: inputs at every checked shape."""
    inputs = _recorded_inputs(model, examples)
    regions: list[FusedRegion] = []
    unfused: list[Unfused] = []
    grafted: list[str] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            path = f"{prefix}{child_name}"
            xs = inputs.get(path, [])
            has_children = next(child.children(), None) is not None
            # A childless module of the user's own with parameters may compute its kernel in forward (a
            # weight-standardized conv): worth tracing. torch.nn's own leaves are not.
            own_code = next(child.parameters(recurse=False), None) is not None and \
                not type(child).__module__.startswith("torch.nn")
            # A forward set on the instance (a module fused before, by us or by its own deploy code) is not what
            # tracing the class would read: its children are visited instead.
            replaced = "forward" in vars(child)
            if not xs or xs[0].dim() != 4 or not (has_children or own_code) or replaced:
                if has_children:
                    visit(child, path + ".")
                continue
            gm = _trace(child, xs)
            if gm is None:
                conv = recorded_conv(child, xs)
                if conv is not None:
                    setattr(parent, child_name, conv)
                    regions.append(_region(path, [path], conv))
                    grafted.append(path)
                else:
                    visit(child, path + ".")
                continue
            try:
                outcome = fuse_graph(gm, xs[0], child)
                _same_output(child, outcome.module, xs[0])
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
    for conv_path, bn_path in fold_bns_after_convs(model, examples, skip=grafted):
        made = next((r for r in regions if r.name == conv_path), None)  # a conv recorded above
        if made is not None:
            made.modules.append(bn_path)
        else:
            regions.append(_region(conv_path, [conv_path, bn_path], model.get_submodule(conv_path)))
    # A BN no traced module holds and no conv output feeds stays, and we say so.
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and not any(name.startswith(g + ".") for g in grafted):
            unfused.append(Unfused(name, "batch_norm", "its parent's forward could not be traced (torch.fx, "
                                   "torch.export) and its input is no conv's output; left as it is"))
    return model, regions, unfused


def _recorded_inputs(model: nn.Module, examples: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Each submodule's first tensor input, once per example (in the examples' order)."""
    inputs: dict[str, list[torch.Tensor]] = {}
    for example in examples:
        seen: set[str] = set()
        hooks = []
        for name, mod in model.named_modules():
            def record(_m: nn.Module, args: tuple, _name: str = name, seen: set[str] = seen) -> None:
                if _name not in seen and args and isinstance(args[0], torch.Tensor):
                    seen.add(_name)
                    inputs.setdefault(_name, []).append(args[0].detach())
            hooks.append(mod.register_forward_pre_hook(record))
        try:
            with torch.no_grad():
                model(example)
        except Exception:  # the model rejects this shape (a fixed-size head): record the others
            pass
        finally:
            for h in hooks:
                h.remove()
    return inputs


def _trace(child: nn.Module, xs: list[torch.Tensor]) -> fx.GraphModule | None:
    """The child as a graph: torch.fx, else torch.export checked at every recorded input shape; None if neither."""
    try:
        return fx.symbolic_trace(child)  # shares the child's leaves; fuse_graph never changes them
    except Exception:
        pass
    try:
        return export_trace.trace(child, xs[0], child, [tuple(x.shape) for x in xs])
    except Exception:  # ExportRefused, or export failing in a way of its own
        return None


class _ConvCalls(TorchFunctionMode):
    """Records every F.conv2d call made while it is active, with its arguments and result."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[dict[str, Any], torch.Tensor]] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (F.conv2d, torch.conv2d):
            bound = dict(_CONV_DEFAULTS, **dict(zip(_CONV_ARGS, args)), **kwargs)
            self.calls.append((bound, out))
        return out


def recorded_conv(module: nn.Module, xs: list[torch.Tensor]) -> nn.Conv2d | None:
    """An nn.Conv2d computing what `module` computes, when its whole effect is one convolution of its input with
    a kernel that depends on no input (checked by autograd, and by equal kernels on every recorded input); else None.
    Run, not traced: the forward may read shapes or parameter values into Python."""
    found: list[dict[str, Any]] = []
    for x in xs:
        x_in = x.clone().requires_grad_(True)
        recorder = _ConvCalls()
        try:
            with torch.enable_grad(), recorder:
                y = module(x_in)
        except Exception:
            return None
        if len(recorder.calls) != 1:
            return None
        call, out = recorder.calls[0]
        if not isinstance(y, torch.Tensor) or not (y is out or (y.shape == out.shape and torch.equal(y, out))):
            return None  # it does more than the convolution
        inp = call["input"]
        if not (inp is x_in or (isinstance(inp, torch.Tensor) and inp.shape == x_in.shape and torch.equal(inp, x_in))):
            return None
        kernel = [t for t in (call["weight"], call["bias"]) if isinstance(t, torch.Tensor)]
        if any(t.requires_grad and torch.autograd.grad(t.sum(), x_in, retain_graph=True, allow_unused=True)[0]
               is not None for t in kernel):
            return None  # the kernel is computed from the input (a dynamic convolution)
        found.append(call)
    first = found[0]
    if not isinstance(first["weight"], torch.Tensor) or first["weight"].dim() != 4 or any(
            not torch.equal(c["weight"], first["weight"]) or not _same_bias(c["bias"], first["bias"])
            or any(c[k] != first[k] for k in ("stride", "padding", "dilation", "groups")) for c in found[1:]):
        return None
    weight, bias = first["weight"].detach(), first["bias"]
    out_c, in_per_group, kh, kw = weight.shape
    try:
        conv = nn.Conv2d(in_per_group * first["groups"], out_c, (kh, kw), stride=first["stride"],
                         padding=first["padding"], dilation=first["dilation"], groups=first["groups"],
                         bias=bias is not None)
    except Exception:  # e.g. padding="same" with a stride
        return None
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            assert conv.bias is not None
            conv.bias.copy_(bias.detach())
    return conv.to(weight.dtype).eval()


def _same_bias(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return torch.equal(a, b)


def fold_bns_after_convs(model: nn.Module, examples: list[torch.Tensor], skip: list[str]) -> list[tuple[str, str]]:
    """Fold every eval-mode BatchNorm2d whose input is a plain nn.Conv2d's output tensor, each called once, into
    that conv (the BN becomes nn.Identity). Kept only when the model's outputs on `examples` do not move (another
    reader of the conv's raw output would); returns the (conv, bn) paths folded."""
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) -> conv path; the tensor held so ids stay unique
    bn_inputs: list[tuple[str, int]] = []
    calls: dict[str, int] = {}
    hooks = []
    for name, mod in model.named_modules():
        if any(name.startswith(s + ".") for s in skip):  # inside a module fused above
            continue
        if type(mod) is nn.Conv2d and mod.padding_mode == "zeros":
            def after_conv(_m: nn.Module, _i: tuple, out: Any, _name: str = name) -> None:
                calls[_name] = calls.get(_name, 0) + 1
                if isinstance(out, torch.Tensor):
                    outputs[id(out)] = (_name, out)
            hooks.append(mod.register_forward_hook(after_conv))
        elif type(mod) is nn.BatchNorm2d and not mod.training and mod.track_running_stats:
            def before_bn(_m: nn.Module, args: tuple, _name: str = name) -> None:
                calls[_name] = calls.get(_name, 0) + 1
                if args and isinstance(args[0], torch.Tensor):
                    bn_inputs.append((_name, id(args[0])))
            hooks.append(mod.register_forward_pre_hook(before_bn))
    try:
        with torch.no_grad():
            first = model(examples[0])
    finally:
        for h in hooks:
            h.remove()
    pairs = [(outputs[i][0], bn) for bn, i in bn_inputs
             if i in outputs and calls.get(outputs[i][0]) == 1 and calls.get(bn) == 1]
    outputs.clear()
    if not pairs:
        return []
    runs = [(examples[0], first), *_runs(model, examples[1:])]
    examples, before = [x for x, _ in runs], [y for _, y in runs]
    folded: list[tuple[str, str]] = []
    for conv_path, bn_path in pairs:
        undo = _fold(model, conv_path, bn_path)
        if _outputs_equal(model, examples, before):
            folded.append((conv_path, bn_path))
        else:
            undo()
    return folded


def _runs(model: nn.Module, examples: list[torch.Tensor]) -> list[tuple[torch.Tensor, Any]]:
    """(input, output) for each example the model accepts (a fixed-size head may reject the odd shape)."""
    runs = []
    with torch.no_grad():
        for x in examples:
            try:
                runs.append((x, model(x)))
            except Exception:
                continue
    return runs


def _fold(model: nn.Module, conv_path: str, bn_path: str) -> Any:
    """Fold the BN at bn_path into the conv at conv_path in place; returns a function that undoes it."""
    conv: nn.Conv2d = model.get_submodule(conv_path)  # type: ignore[assignment]
    bn: nn.BatchNorm2d = model.get_submodule(bn_path)  # type: ignore[assignment]
    assert bn.running_mean is not None and bn.running_var is not None
    scale, shift = algebra.bn_scale_shift(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    old_weight, old_bias = conv.weight, conv.bias
    w = old_weight.detach().double() * scale.view(-1, 1, 1, 1)
    b = (old_bias.detach().double() if old_bias is not None else torch.zeros_like(scale)) * scale + shift
    conv.weight = nn.Parameter(w.to(old_weight.dtype))
    conv.bias = nn.Parameter(b.to(old_weight.dtype))
    parent_path, _, attr = bn_path.rpartition(".")
    parent = model.get_submodule(parent_path)
    setattr(parent, attr, nn.Identity())

    def undo() -> None:
        conv.weight, conv.bias = old_weight, old_bias
        setattr(parent, attr, bn)
    return undo


def _outputs_equal(model: nn.Module, examples: list[torch.Tensor], before: list[Any]) -> bool:
    with torch.no_grad():
        return all(check.output_difference(ref, model(x)) is None for x, ref in zip(examples, before))


def _region(name: str, modules: list[str], conv: nn.Module) -> FusedRegion:
    assert isinstance(conv, nn.Conv2d)
    kh, kw = conv.kernel_size
    stride = conv.stride
    return FusedRegion(name, modules, f"{kh}x{kw}", conv.groups, (int(stride[0]), int(stride[1])))


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


def _same_output(original: nn.Module, fused: nn.Module, x: torch.Tensor) -> None:
    """Refuse to graft a fused submodule that does not reproduce the original on its recorded input."""
    with torch.no_grad():
        why = check.output_difference(original(x), fused(x))
    if why is not None:
        raise ValueError(f"its fused form differs from the original on the recorded input: {why}")
