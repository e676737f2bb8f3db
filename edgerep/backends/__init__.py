"""Backends, one module each. `get_backend(name)` imports `edgerep.backends.<name>` only when asked,
so a missing runtime (openvino, tensorrt, ...) never breaks the CLI for the others."""
from __future__ import annotations

import importlib

from ..errors import UserError
from .base import Artifact, Backend, Runner

# Extra to install per backend, for the error message when its package is missing.
_EXTRAS = {"openvino": "openvino", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}


def get_backend(name: str) -> Backend:
    """The backend object of module `edgerep.backends.<name>` (its module-level `BACKEND`)."""
    if not name.isidentifier():
        raise UserError(f"backend {name!r}: not a backend name")
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{name}":
            raise UserError(f"backend {name!r}: no such backend (edgerep/backends/{name}.py)") from None
        raise
    return module.BACKEND


__all__ = ["Artifact", "Backend", "Runner", "get_backend"]
