"""Helpers shared by the fusion, zoo, export and model tests: randomized statistics so every branch matters.
(The `one_thread` fixture most of them use is in tests/conftest.py.)"""
from __future__ import annotations

import torch
import torch.nn as nn


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics/affines, branch scales, SAConv switch/context/diff weights: every branch matters."""
    g = torch.Generator().manual_seed(seed)

    def fill(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                fill(m.running_mean, -0.5, 0.5)
                fill(m.running_var, 0.5, 2.0)
                if m.affine:
                    fill(m.weight, 0.5, 1.5)
                    fill(m.bias, -0.5, 0.5)
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("scale_"):
                fill(p, 0.3, 1.5)
            elif leaf == "weight_diff" or "context" in name or name.startswith("switch") or ".switch." in name:
                fill(p, -0.1, 0.1)
    return model


def inputs(shape, seed: int = 1) -> torch.Tensor:
    """A seeded random input of `shape`."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def run(model: nn.Module, x: torch.Tensor):
    """model(x) without autograd."""
    with torch.no_grad():
        return model(x)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs error relative to the reference's largest magnitude, in float64."""
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12)).item()


def randomize_bn(module: nn.Module, seed: int = 1, *, affine: bool = False) -> nn.Module:
    """Non-trivial BatchNorm2d statistics (with `affine`, scales too), so a wrong fold or a wrong graph shows in the
    numbers; returns `module`, its mode unchanged."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return module
