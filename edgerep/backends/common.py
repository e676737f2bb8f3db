"""Pieces every backend needs: argument checks, the ONNX input, calibration batches, sidecar facts, timing.

Only numpy and onnx are imported here (no runtime), so backends stay cheap to import.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..artifacts import companion_files, package_versions, sha256_files
from ..errors import UserError

# Options every CPU backend takes; each backend module adds its own in its KNOWN_OPTIONS.
COMMON_OPTIONS = {"ignored_nodes", "calib_method", "num_samples"}


def require_precision(backend: Any, precision: str) -> None:
    if precision not in backend.precisions:
        raise UserError(f"--precision {precision}: the {backend.name} backend builds {', '.join(backend.precisions)}; "
                        f"pick one of those or a target whose backend builds {precision}")


def require_available(backend: Any) -> None:
    reason = backend.available()
    if reason is not None:
        raise UserError(reason)


def check_options(options: dict | None, backend_name: str, known: set[str]) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"{backend_name} build options: unknown {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return options


def require_calib(calib: Any, backend_name: str) -> None:
    if calib is None:
        raise UserError(f"--calib: {backend_name} INT8 needs calibration data; pass --calib with an image folder or .npz")


def onnx_input(onnx_path: Path, *, single: bool = False) -> tuple[str, list[int | None]]:
    """Name and shape (None for a symbolic dimension) of the model's first input.

    `single`: calibration feeds one tensor, so a model with several inputs is a user error."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if single and len(inputs) != 1:
        raise UserError(f"{onnx_path}: calibration supports one model input, this model has {len(inputs)}")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def batches_reader(input_name: str, batches: Iterable[np.ndarray]) -> Any:
    """An onnxruntime.quantization CalibrationDataReader that feeds `batches` once, in order."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    return _Batches()


def onnx_node_names(onnx_path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [n.name for n in model.graph.node]


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


def calib_settings(profile: Any, options: dict, default_method: str, methods: tuple[str, ...]) -> tuple[str, int]:
    """(method, number of samples): options override the profile, which overrides the backend default."""
    cal = getattr(profile, "calibration", None)
    method = options.get("calib_method") or (cal.method if cal is not None else default_method)
    if method not in methods:
        raise UserError(f"--calib-method {method}: not one of {', '.join(methods)}")
    num = options.get("num_samples") or (cal.num_samples if cal is not None else 300)
    if not isinstance(num, int) or num < 1:
        raise UserError(f"--calib-samples {num}: must be a positive integer")
    return method, int(num)


def sample_batches(calib: Any, batch_size: int, limit: int, *, exact: bool) -> Iterator[np.ndarray]:
    """Stream up to `limit` calibration samples as float32 batches of `batch_size`.

    `exact`: the model has a fixed batch, so a short last batch is dropped rather than fed.
    """
    buffered: list[np.ndarray] = []
    have = 0
    for x, _ in calib.iter_batches(batch_size, limit=limit):
        x = np.ascontiguousarray(x, dtype=np.float32)
        buffered.append(x)
        have += x.shape[0]
        while have >= batch_size:
            joined = np.concatenate(buffered) if len(buffered) > 1 else buffered[0]
            yield joined[:batch_size]
            rest = joined[batch_size:]
            buffered, have = ([rest] if rest.shape[0] else []), rest.shape[0]
    if have and not exact:
        yield np.concatenate(buffered) if len(buffered) > 1 else buffered[0]


def calib_batch_count(calib: Any, batch_size: int, limit: int, *, exact: bool) -> int:
    n = min(int(calib.num_samples), limit)
    return n // batch_size if exact else -(-n // batch_size)


def engine_info(*, backend: str, precision: str, onnx_path: Path, profile: Any, calib: Any, settings: dict,
                packages: tuple[str, ...]) -> dict:
    """The sidecar body shared by every backend: what was built, from what, with what."""
    name, shape = onnx_input(onnx_path)
    onnx_path = Path(onnx_path)
    return {
        "backend": backend,
        "precision": precision,
        "target": getattr(profile, "name", None),
        "onnx": str(onnx_path),
        "onnx_sha256": sha256_files([onnx_path, *companion_files(onnx_path)]),
        "calib_sha256": calib.sha256() if calib is not None and precision == "int8" else None,
        "input_name": name,
        "input_shape": shape,
        "settings": settings,
        "packages": package_versions("edgerep", "onnx", *packages),
    }


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
