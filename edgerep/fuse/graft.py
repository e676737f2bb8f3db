"""Put a fused graph back inside the module object it came from.

Models such as Ultralytics' YOLO walk their layers in Python (`for m in self.model: x = y[m.f] ...`) and
read routing attributes (`m.f`, `m.i`, `m.type`), buffers and types off each child. fx cannot trace such a
parent, so each child is fused on its own; handing the parent a new GraphModule in place of the child would
lose everything the parent reads. Instead the child object stays: it takes the fused graph's parameters,
buffers and submodules, keeps its own buffers, Python attributes, hooks and class, and its `forward` becomes
the graph's code (an instance attribute, the same move Ultralytics' own `fuse()` makes with `forward_fuse`).
Containers fx rebuilt as plain `nn.Module`s are mapped back onto the original container objects, so
`model.model[2].cv1` is still the model's own `Conv` (now holding the fused conv and no BN).
"""
from __future__ import annotations

import types

import torch.fx as fx
import torch.nn as nn


def graft(target: nn.Module, gm: fx.GraphModule) -> None:
    """Make `target` compute `gm` while staying the same object (type, attributes, hooks)."""
    _adopt(target, gm, keep_own_buffers=True)
    for spec in ("_in_spec", "_out_spec"):  # a torch.export graph's code unflattens its inputs and outputs by these
        if spec in vars(gm):
            setattr(target, spec, vars(gm)[spec])
    target.forward = types.MethodType(type(gm).forward, target)


def _adopt(dst: nn.Module, src: nn.Module, *, keep_own_buffers: bool) -> None:
    """Replace dst's tensors and children by src's, reusing dst's own objects where fx made plain containers."""
    dst._parameters = dict(src._parameters)
    # The grafted module's own buffers stay even when the graph no longer reads them: a parent may read them
    # (a detect head's `stride`, `anchors`); folded statistics live in children (BN), which are dropped.
    own = {k: v for k, v in dst._buffers.items() if keep_own_buffers and k not in dst._parameters}
    dst._buffers = {**own, **src._buffers}
    dst._non_persistent_buffers_set = set(src._non_persistent_buffers_set) | \
        {k for k in own if k in dst._non_persistent_buffers_set}
    children: dict[str, nn.Module | None] = {}
    for name, child in src._modules.items():
        old = dst._modules.get(name)
        if child is not None and type(child) is nn.Module and old is not None and old is not child:
            _adopt(old, child, keep_own_buffers=False)  # a container fx flattened: keep the model's own object
            children[name] = old
        else:
            children[name] = child
    dst._modules = children
    # A plain attribute of the same name (a training-form block's `self.reparam = None`) would shadow them.
    for name in (*dst._parameters, *dst._buffers, *children):
        dst.__dict__.pop(name, None)
