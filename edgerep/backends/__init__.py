"""Runtime adapters behind one contract (backends/base.py), one folder per runtime, found through one registry.

`get_backend(name)` imports the runtime's adapter only when asked, so a missing runtime (openvino, tensorrt, ...)
never breaks the CLI for the others.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from edgerep.backends.base import Backend, Capabilities, Runner
from edgerep.errors import UserError
from edgerep.files.artifacts import Artifact

if TYPE_CHECKING:
    from edgerep.targets import TargetProfile

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


def backends_taking(option: str) -> list[Backend]:
    """The registered backends whose build takes `option`."""
    return [b for b in map(get_backend, REGISTRY) if option in b.capabilities.options]


def backend_for(profile: TargetProfile) -> Backend:
    """The backend of a target profile, with the profile checked against what that backend can do (a profile is
    plain data and knows no backend): its precisions and calibration method. A profile that names no method gets
    the backend's default (what the runtime's own tools use). Errors name the profile file and the field."""
    where = profile.source or profile.name
    if profile.backend not in REGISTRY:
        raise UserError(f"{where}: backend: unknown backend {profile.backend!r} (known: {', '.join(REGISTRY)}); "
                        f"fix the profile")
    backend = get_backend(profile.backend)
    caps = backend.capabilities
    for p in profile.precisions:
        if p not in caps.precisions:
            raise UserError(f"{where}: precisions: backend {backend.name!r} cannot build {p!r} (it builds "
                            f"{', '.join(caps.precisions)}); fix the profile")
    if profile.calibration.method is None:
        profile.calibration.method = caps.default_calib_method
    elif profile.calibration.method not in caps.calib_methods:
        raise UserError(f"{where}: calibration.method: backend {backend.name!r} supports "
                        f"{', '.join(caps.calib_methods)}, not {profile.calibration.method!r}; fix the profile")
    return backend


__all__ = ["REGISTRY", "Artifact", "Backend", "Capabilities", "Runner", "backend_for", "backend_names", "get_backend"]
