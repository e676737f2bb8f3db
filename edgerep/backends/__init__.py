"""Runtime adapters behind one contract (backends/base.py), one folder per runtime, found through one registry.

`get_backend(name)` imports the runtime's adapter only when asked, so a missing runtime (openvino, tensorrt, ...)
never breaks the CLI for the others.
"""
from __future__ import annotations

import importlib

from edgerep.backends.base import Backend, Runner
from edgerep.errors import UserError
from edgerep.files.artifacts import Artifact

# name -> the module whose `BACKEND` object implements the contract. The one list of backends.
REGISTRY: dict[str, str] = {
    "openvino": "edgerep.backends.openvino.adapter",
    "onnxruntime": "edgerep.backends.onnxruntime.adapter",
    "tensorrt": "edgerep.backends.tensorrt.adapter",
}


def backend_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get_backend(name: str) -> Backend:
    """The backend registered as `name` (imported on first use)."""
    module_name = REGISTRY.get(name)
    if module_name is None:
        raise UserError(f"backend {name!r}: no such backend; use one of {', '.join(REGISTRY)}")
    backend: Backend = importlib.import_module(module_name).BACKEND
    return backend


__all__ = ["REGISTRY", "Artifact", "Backend", "Runner", "backend_names", "get_backend"]
