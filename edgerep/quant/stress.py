"""A function-preserving range stress for INT8: the failure mode of re-parameterized models, made on demand.

Scaling output channel c of one conv (weights and bias) by `factor` and input channel c of the next conv by
1/factor leaves the network's function unchanged when a ReLU (positively homogeneous) or nothing sits between
them, but gives the activation between them one channel `factor` times the others: a per-tensor activation
scale then leaves the other channels a few levels. Tests and benchmarks use it as a known-bad layer.
On an unfused model whose convs sit in RepVGG blocks, edgerep.zoo.repvgg.scale_block_channel does the same to
every branch (zoo:repyolo_digits_stress is the demo detector stressed that way).
"""
from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def scale_channel_pair(model: nn.Module, producer: str, consumer: str, *, channel: int = 0,
                       factor: float = 100.0) -> nn.Module:
    """Scale `producer`'s output channel and `consumer`'s input channel (module paths of two Conv2d), in place."""
    a, b = model.get_submodule(producer), model.get_submodule(consumer)
    if not (isinstance(a, nn.Conv2d) and isinstance(b, nn.Conv2d)) or b.groups != 1:
        raise ValueError(f"{producer} -> {consumer}: expected two Conv2d, the second ungrouped")
    if a.out_channels != b.in_channels:
        raise ValueError(f"{producer} has {a.out_channels} outputs but {consumer} takes {b.in_channels}")
    a.weight[channel] *= factor
    if a.bias is not None:
        a.bias[channel] *= factor
    b.weight[:, channel] /= factor
    return model
