"""Helpers shared by the fusion and zoo tests: randomized statistics so every branch matters."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convs gain nothing from intra-op threads, and on a loaded 2-core machine OpenMP's spin-waiting
    made each forward ~100x slower (2 s instead of 12 ms). Restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs error relative to the reference's largest magnitude, in float64."""
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12)).item()
