"""Sidecars for TensorRT engines and calibration caches, and the guard that refuses mismatched ones.

An engine is tied to the TensorRT version and the GPU that built it, a calibration cache to the TensorRT
version (TensorRT rejects a cache whose header names another version: the API then recalibrates with the
calibrator's data, trtexec fails the build; an engine from another version fails with a tag error). Each engine
and cache gets a sidecar JSON beside it (the plan file itself stays plain, so trtexec and other tools load it
unchanged), and these pure functions compare a sidecar with the running environment: use, retag (host-made
caches), rebuild/recalibrate, or a clear UserError.

`env` is a dict: trt_version ("10.3.0.26"), gpu_name, gpu_name_source, compute_capability ("8.7"); None where
unknown. gpu_name_source says where the name came from: "cuda" (the CUDA driver's cuDeviceGetName, as pycuda,
cuda-python and ctypes read it: "Orin" on JetPack 6), "nvidia-smi" or "device-tree" (the board's model, e.g.
"NVIDIA Jetson AGX Orin Developer Kit"). Names from different sources never match, so they are compared only
when both came from CUDA; the compute capability is what TensorRT's plans are really tied to.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgerep.backends.tensorrt.versions import Version, parse_version, version_str
from edgerep.errors import UserError

SIDECAR_KIND_ENGINE = "tensorrt-engine"
SIDECAR_KIND_CACHE = "tensorrt-calibration-cache"
CUDA_NAME = "cuda"  # gpu_name_source of a name read from the CUDA driver (cuDeviceGetName)


def engine_sidecar(*, trt_version: str, gpu_name: str | None, compute_capability: str | None, precision: str,
                   opset: int | None, onnx_sha256: str, gpu_name_source: str | None = None,
                   calib_sha256: str | None = None,
                   int8_mode: str | None = None, dla_core: int | None = None, workspace_mb: int | None = None,
                   dynamic_batch: bool = False, shapes: dict[str, Any] | None = None,
                   version_compatible: bool = False, hardware_compatibility: str | None = None,
                   built_by: str = "edgerep", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sidecar body of an engine (artifacts.write_sidecar adds the engine's own hash and a timestamp)."""
    body = {
        "kind": SIDECAR_KIND_ENGINE, "backend": "tensorrt", "precision": precision,
        "trt_version": trt_version, "gpu_name": gpu_name, "gpu_name_source": gpu_name_source,
        "compute_capability": compute_capability, "opset": opset, "onnx_sha256": onnx_sha256,
        "calib_sha256": calib_sha256, "int8_mode": int8_mode,
        "dla_core": dla_core, "workspace_mb": workspace_mb, "dynamic_batch": dynamic_batch, "shapes": shapes,
        "version_compatible": version_compatible, "hardware_compatibility": hardware_compatibility,
        "built_by": built_by,
    }
    body.update(extra or {})
    return body


def cache_sidecar(*, trt_version: str, header: str, method: str, num_samples: int, data_sha256: str | None,
                  onnx_sha256: str, opset: int | None, produced_by: str, gpu_name: str | None = None,
                  compute_capability: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sidecar body of a calibration cache. produced_by "onnxruntime-host" means the scales came from
    ONNX Runtime (version-independent, may be retagged); "tensorrt" means a TensorRT calibrator wrote it."""
    body = {
        "kind": SIDECAR_KIND_CACHE, "trt_version": trt_version, "header": header, "method": method,
        "num_samples": num_samples, "data_sha256": data_sha256, "onnx_sha256": onnx_sha256, "opset": opset,
        "produced_by": produced_by, "gpu_name": gpu_name, "compute_capability": compute_capability,
    }
    body.update(extra or {})
    return body


def _same_release(a: Version, b: Version) -> bool:
    return a == b


def _cc(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        major, minor = str(text).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def engine_mismatches(side: dict[str, Any], env: dict[str, Any], *, onnx_sha256: str | None = None) -> list[str]:
    """Why an engine with sidecar `side` must not be loaded in `env` (empty list: it may)."""
    problems: list[str] = []
    if side.get("kind") not in (None, SIDECAR_KIND_ENGINE):
        problems.append(f"the sidecar describes a {side.get('kind')}, not a TensorRT engine")
        return problems
    built_s, running_s = side.get("trt_version"), env.get("trt_version")
    if not built_s:
        problems.append("the sidecar does not say which TensorRT built the engine")
    elif running_s:
        built, running = parse_version(built_s), parse_version(running_s)
        if not _same_release(built, running):
            # Version-compatible plans (8.6+ VERSION_COMPATIBLE) run on later TensorRT of the same major,
            # and TensorRT 11 runs version-compatible TensorRT 10 plans (11.1 engine-compatibility docs).
            later = running > built and (running[0] == built[0] or (built[0], running[0]) == (10, 11))
            if not (side.get("version_compatible") and later):
                problems.append(f"built with TensorRT {version_str(built)}, running TensorRT {version_str(running)}")
    built_cc, running_cc = _cc(side.get("compute_capability")), _cc(env.get("compute_capability"))
    hw = str(side.get("hardware_compatibility") or "none").lower()
    if built_cc and running_cc and built_cc != running_cc:
        if not (hw in ("ampere_plus", "ampere+") and running_cc >= (8, 0)):
            problems.append(f"built for compute capability {built_cc[0]}.{built_cc[1]}, this GPU is "
                            f"{running_cc[0]}.{running_cc[1]}")
    elif (side.get("gpu_name") and env.get("gpu_name") and side["gpu_name"] != env["gpu_name"] and hw == "none"
          and side.get("gpu_name_source") == CUDA_NAME and env.get("gpu_name_source") == CUDA_NAME):
        problems.append(f"built on {side['gpu_name']}, this GPU is {env['gpu_name']}")
    if onnx_sha256 and side.get("onnx_sha256") and side["onnx_sha256"] != onnx_sha256:
        problems.append("built from another ONNX model (its hash differs)")
    return problems


def cache_action(side: dict[str, Any] | None, env: dict[str, Any], *, onnx_sha256: str | None = None,
                 data_sha256: str | None = None, cache_versions: list[Version] | None = None) -> tuple[str, str | None]:
    """What to do with a calibration cache before building: ("use" | "retag" | "recalibrate", reason).

    `cache_versions` are the versions its header can name (CacheContents.versions; a header number read
    both ways passes if either reading matches)."""
    if side is None:
        return "recalibrate", "the cache has no sidecar (or it does not match the file)"
    if side.get("kind") not in (None, SIDECAR_KIND_CACHE):
        return "recalibrate", f"the sidecar describes a {side.get('kind')}, not a calibration cache"
    if onnx_sha256 and side.get("onnx_sha256") and side["onnx_sha256"] != onnx_sha256:
        return "recalibrate", "made for another ONNX model (its hash differs)"
    if data_sha256 and side.get("data_sha256") and side["data_sha256"] != data_sha256:
        return "recalibrate", "made from other calibration data (its hash differs)"
    running = env.get("trt_version")
    if not running:
        return "use", None
    want = parse_version(running)
    # a header that was read but names no version (e.g. TRT-10300-...) is no version, not the sidecar's
    made = list(cache_versions) if cache_versions is not None else (
        [parse_version(side["trt_version"])] if side.get("trt_version") else [])
    if want in made:
        return "use", None
    made_for = made[0] if made else None
    reason = (f"written for TensorRT {version_str(made_for) if made_for else '?'}, running {version_str(want)}")
    if side.get("produced_by") == "onnxruntime-host":
        return "retag", reason + " (host-made scales do not depend on the TensorRT version)"
    return "recalibrate", reason + " (TensorRT would reject it)"


def guard_engine(engine: Path, side: dict[str, Any] | None, env: dict[str, Any], *,
                 onnx_sha256: str | None = None) -> None:
    """Raise a one-line UserError when `engine` must not be loaded here."""
    if side is None:
        raise UserError(f"--engine {engine}: no sidecar {Path(engine).name}.json beside it (or it does not match the "
                        f"file), so its TensorRT version and GPU are unknown; rebuild it on this device")
    problems = engine_mismatches(side, env, onnx_sha256=onnx_sha256)
    if problems:
        raise UserError(f"--engine {engine}: {'; '.join(problems)}; rebuild it on this device "
                        f"(bash build.sh in the bundle, or edgerep build --force)")
