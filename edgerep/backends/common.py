"""Pieces every backend needs: argument checks, the ONNX input, calibration batches, sidecar facts, timing.

Only numpy and onnx are imported here (no runtime), so backends stay cheap to import.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from edgerep.backends.base import Backend
from edgerep.cpu.isa import target_isa
from edgerep.errors import UserError
from edgerep.files.artifacts import Artifact, package_versions
from edgerep.files.onnx_files import int8_float_nodes, onnx_input, onnx_node_names, onnx_sha256

REPAIRED_ONNX = "model.repaired.onnx"  # the range-repaired float ONNX an INT8 build quantizes, in its out_dir


def require_precision(backend: Backend, precision: str) -> None:
    built = backend.capabilities.precisions
    if precision not in built:
        raise UserError(f"--precision {precision}: the {backend.name} backend builds {', '.join(built)}; "
                        f"pick one of those or a target whose backend builds {precision}")


def runtime_missing(module: str, backend: Backend) -> str | None:
    """None when the runtime's Python package imports, else the line that says how to install it."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return f"{module} is not installed; {backend.capabilities.install}"
    return None


def start_build(backend: Backend, precision: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """What every build checks first: the precision, the runtime, the options; returns the options."""
    require_precision(backend, precision)
    require_available(backend)
    return check_options(options, backend)


def engine_file(artifact: Artifact) -> Path:
    """The engine file of an artifact, which must exist."""
    if artifact.path is None or not Path(artifact.path).is_file():
        raise UserError(f"{artifact.path}: engine file not found; build it first")
    return Path(artifact.path)


def require_available(backend: Backend) -> None:
    reason = backend.available()
    if reason is not None:
        raise UserError(reason)


def check_options(options: dict[str, Any] | None, backend: Backend) -> dict[str, Any]:
    """The build options, each one the backend takes (Capabilities.options)."""
    options = dict(options or {})
    known = backend.capabilities.options
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"{backend.name} build options: unknown {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return options


def require_calib(calib: Any, backend_name: str) -> None:
    if calib is None:
        raise UserError(f"--calib: {backend_name} INT8 needs calibration data; pass --calib with an image folder or .npz")


def check_ignored_nodes(onnx_path: Path, names: list[str] | None) -> list[str]:
    """The ignored node names, each checked to exist in the ONNX graph."""
    names = list(names or [])
    if not names:
        return []
    known = set(onnx_node_names(onnx_path))
    missing = [n for n in names if n not in known]
    if missing:
        sample = ", ".join(sorted(known)[:3])
        raise UserError(f"ignored nodes: {', '.join(missing[:3])} not in {Path(onnx_path).name} "
                        f"(node names look like {sample}); take them from the simplified ONNX")
    return names


def calib_settings(profile: Any, options: dict[str, Any], backend: Backend) -> tuple[str, int]:
    """(method, number of samples): options override the profile, which overrides the backend default."""
    cal = getattr(profile, "calibration", None)
    methods = backend.capabilities.calib_methods
    method = options.get("calib_method") or (cal.method if cal is not None else None) or methods[0]
    if method not in methods:
        raise UserError(f"--calib-method {method}: not one of {', '.join(methods)}")
    num = options.get("num_samples") or (cal.num_samples if cal is not None else 300)
    if not isinstance(num, int) or num < 1:
        raise UserError(f"--calib-samples {num}: must be a positive integer")
    return method, int(num)


def int8_source(backend: Backend, onnx_path: Path, out_dir: Path, options: dict[str, Any], calib: Any, *,
                weights: str = "s8", per_channel: bool = True) -> tuple[Path, dict[str, Any] | None]:
    """The float ONNX an INT8 build quantizes, and the range-repair report: `onnx_path` itself (None) without
    options[REPAIR_OPTION], else the repaired model written to `out_dir`/REPAIRED_ONNX by backends.repair.apply_repairs.

    The one call every backend makes, with the same inputs (the calibration data, options["num_samples"] or the
    repairs' default, the plan's float nodes), so the repaired model is the same bytes on each; `weights` and
    `per_channel` (the backend's weight quantizer) only matter to bias_correction."""
    from edgerep.backends.repair import REPAIR_OPTION, apply_repairs, check_repairs
    from edgerep.backends.repair.graph import DEFAULT_SAMPLES

    names = check_repairs(options.get(REPAIR_OPTION), backend_name=backend.name)
    if not names:
        return Path(onnx_path), None
    require_calib(calib, backend.name)
    report = apply_repairs(Path(onnx_path), Path(out_dir) / REPAIRED_ONNX, names, calib=calib, weights=weights,
                           num_samples=int(options.get("num_samples") or DEFAULT_SAMPLES), per_channel=per_channel,
                           float_nodes=int8_float_nodes(options.get("ignored_nodes"), options.get("head_float_nodes")))
    return Path(report["onnx"]), report


def engine_info(*, backend: str, precision: str, onnx_path: Path, profile: Any, calib: Any, settings: dict,
                packages: tuple[str, ...], range_repair: dict[str, Any] | None = None) -> dict:
    """The sidecar body shared by every backend: what was built, from what, with what. `onnx` is the model the
    user gave; with `range_repair` (int8_source's report) the engine was quantized from its repaired copy."""
    name, shape = onnx_input(onnx_path)
    onnx_path = Path(onnx_path)
    extra = {"range_repair": range_repair} if range_repair is not None else {}
    return {
        "backend": backend,
        "precision": precision,
        "target": getattr(profile, "name", None),
        # The ISA the engine was built for (CPU targets; the build adds the one it was validated on).
        "isa": target_isa(profile) if profile is not None and getattr(profile, "tensorrt", None) is None else None,
        "onnx": str(onnx_path),
        "onnx_sha256": onnx_sha256(onnx_path),  # one ONNX hash everywhere (the TensorRT bundle guard compares it)
        "calib_sha256": calib.sha256() if calib is not None and precision == "int8" else None,
        "input_name": name,
        "input_shape": shape,
        "settings": settings,
        "packages": package_versions("edgerep", "onnx", *packages),
        **extra,
    }


def finish_build(backend: Backend, precision: str, path: Path, *, onnx_path: Path, profile: Any, calib: Any,
                 settings: dict[str, Any], range_repair: dict[str, Any] | None = None) -> Artifact:
    """The end of every CPU build: the engine's sidecar (engine_info) beside `path`, and its Artifact."""
    from edgerep.files.artifacts import write_sidecar

    info = engine_info(backend=backend.name, precision=precision, onnx_path=onnx_path, profile=profile, calib=calib,
                       settings=settings, packages=backend.capabilities.packages, range_repair=range_repair)
    sidecar = write_sidecar(path, info)
    return Artifact(backend=backend.name, precision=precision, path=path, sidecar=sidecar, info=info)


def time_calls(call: Callable[[], Any], warmup: int, iterations: int) -> list[float]:
    """Milliseconds per call on a monotonic clock, after `warmup` untimed calls."""
    for _ in range(max(0, warmup)):
        call()
    times = []
    for _ in range(max(1, iterations)):
        start = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times
