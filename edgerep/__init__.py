"""edgerep: a trained PyTorch model in, a validated edge engine out."""
from __future__ import annotations

__version__ = "0.1.0"

# The name `edgerep.fuse` is the function (the subpackage stays importable as edgerep.fuse.graph etc.).
from .fuse import FuseReport, FuseResult, fuse  # noqa: E402

__all__ = ["FuseReport", "FuseResult", "fuse", "__version__"]
