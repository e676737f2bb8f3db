"""edgerep: a trained PyTorch model in, a validated edge engine out.

`edgerep.fuse(model, example_inputs)` is the fuser. Nothing heavy is imported here: on a Jetson,
`edgerep validate --bundle` must run with TensorRT alone, without importing PyTorch.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {"fuse", "FuseReport", "FuseResult"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        # The subpackage is itself callable: edgerep.fuse(model, x). (`from . import fuse` would ask this
        # very __getattr__ first and recurse.)
        fuse_package = importlib.import_module(f"{__name__}.fuse")

        return fuse_package if name == "fuse" else getattr(fuse_package, name)
    raise AttributeError(f"module 'edgerep' has no attribute {name!r}")


__all__ = ["FuseReport", "FuseResult", "fuse", "__version__"]
