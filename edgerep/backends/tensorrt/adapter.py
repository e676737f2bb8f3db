"""TensorRT backend: a thin adapter behind the backend contract (available / build / load).

The TensorRT logic lives in edgerep/backends/tensorrt/: host.py (INT8 cache + Q/DQ, FP16 ONNX, the device bundle),
engine_build.py (the engine with the tensorrt API, per version), runner.py (pycuda runner), guard.py (sidecars).
Without tensorrt, pycuda or a GPU, `build` prepares what the device needs and returns the engine as `skipped`,
saying it must be built on the device (bash device-bundle/build.sh). Nothing here imports tensorrt at import.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgerep.backends.base import COMMON_OPTIONS, Capabilities
from edgerep.backends.common import calib_settings, check_options, int8_source, require_precision
from edgerep.errors import UserError
from edgerep.files.artifacts import Artifact
from edgerep.files.onnx_files import onnx_output_names


class TensorRTBackend:
    name = "tensorrt"
    # Entropy calibration first: TensorRT's own IInt8EntropyCalibrator2. build() also works without TensorRT or a
    # GPU (offline_build): it writes the device bundle and returns skipped engines. ONNX Runtime is in the cache
    # key too: it calibrates on the host and runs the Q/DQ prediction.
    capabilities = Capabilities(
        title="TensorRT", precisions=("fp32", "fp16", "int8"), calib_methods=("entropy", "minmax", "percentile"),
        options=COMMON_OPTIONS | {"int8_mode", "dla_core", "timing_cache", "entropy_bins"},
        packages=("tensorrt", "onnxruntime"), qdq_style="tensorrt", install="pip install 'edgerep[tensorrt]'",
        offline_build=True)

    def available(self) -> str | None:
        from edgerep.backends.tensorrt.gpu import unavailable_reason

        return unavailable_reason()

    def build(self, onnx_path: Path, precision: str, *, out_dir: Path, profile: Any, calib: Any = None,
              options: dict[str, Any] | None = None) -> Artifact:
        from edgerep.backends.tensorrt import host
        from edgerep.backends.tensorrt.trtexec import check_dla_int8
        from edgerep.backends.tensorrt.versions import int8_modes, version_str

        require_precision(self, precision)
        options = check_options(options, self)
        onnx_path, out_dir = Path(onnx_path), Path(out_dir)
        version = host.profile_version(profile)
        trt_settings = profile.tensorrt
        int8_mode = options.get("int8_mode") or trt_settings.int8_mode
        if int8_mode not in ("calibrate", "qdq"):
            raise UserError(f"--int8-mode {int8_mode}: use calibrate (calibration cache) or qdq (Q/DQ ONNX)")
        if precision == "int8" and int8_mode not in int8_modes(version):
            raise UserError(f"--int8-mode {int8_mode}: TensorRT {version_str(version)} builds INT8 only from Q/DQ; use qdq")
        dla_core = options.get("dla_core", trt_settings.dla_core)
        if options.get("dla_core") is not None and not 0 <= int(dla_core) < max(trt_settings.dla_cores, 0):
            raise UserError(f"--dla-core {dla_core}: target {profile.name} has {trt_settings.dla_cores} DLA core(s)")
        if precision == "int8":
            check_dla_int8(version, int8_mode, dla_core)
        if (int8_mode, dla_core) != (trt_settings.int8_mode, trt_settings.dla_core):  # flags override the profile
            from dataclasses import replace

            trt_settings = replace(trt_settings, int8_mode=int8_mode, dla_core=dla_core)
            profile = replace(profile, tensorrt=trt_settings)
        host_dir = out_dir / host.HOST_DIR
        int8 = fp16_onnx = None
        source, repair = onnx_path, None  # the float ONNX the INT8 artifacts and engine come from
        if precision == "int8":
            if calib is None:
                raise UserError("--calib: TensorRT INT8 needs calibration data (host calibration for the cache and "
                                "the Q/DQ model); pass --calib")
            method, num = calib_settings(profile, options, self)
            # the range-repaired model when options name repairs (the same call on every backend): the Q/DQ model,
            # the calibration cache and the calibrate-mode engine's ONNX all come from it
            source, repair = int8_source(self, onnx_path, host_dir, options, calib)
            int8 = host.prepare_int8(source, profile, calib, host_dir, method=method, num_samples=num,
                                     ignored_nodes=options.get("ignored_nodes"), head_float_nodes=options.get("head_float_nodes"),
                                     entropy_bins=options.get("entropy_bins"))
            if repair is not None:
                int8 = {**int8, "repaired_onnx": source}
        fp16_graph = None
        if version[0] >= 11 and precision in ("fp16", "int8"):
            # TensorRT 11 takes precision from the graph (strongly typed): FP16 from model.fp16.onnx, INT8 from the
            # Q/DQ model with its float parts in FP16 (else its unquantized layers would run FP32)
            from edgerep.backends.tensorrt.qdq import prepare_fp16_graph

            fp16_graph = prepare_fp16_graph(source, host_dir, calib,
                                            qdq_of=Path(int8["qdq"]) if int8 is not None else None)
            if int8 is not None:
                int8 = {**int8, "qdq": Path(fp16_graph["path"])}
            else:
                fp16_onnx = Path(fp16_graph["path"])
        settings = {"trt_version": version_str(version), "int8_mode": int8_mode if precision == "int8" else None,
                    "dla_core": dla_core if precision != "fp32" else None, "workspace_mb": trt_settings.workspace_mb,
                    "calib_method": int8["method"] if int8 else None,
                    # which tool made the FP16 graph TensorRT 11 builds from, and what its check found
                    "fp16_graph": {k: fp16_graph[k] for k in ("tool", "fp32_nodes", "check", "clamped_scales")}
                    if fp16_graph else None,
                    # the ONNX outputs in graph order: the runner's run_all returns the engine's outputs in it
                    "output_names": onnx_output_names(Path(onnx_path))}
        info: dict[str, Any] = {"settings": settings, "qdq": str(int8["qdq"]) if int8 else None,
                                "calibration_cache": str(int8["cache"]) if int8 else None,
                                "range_repair": repair}

        reason = self.available()
        if reason is not None:
            bundle_dir = out_dir / host.BUNDLE_DIR
            host.update_bundle(bundle_dir, onnx_path=onnx_path, profile=profile, precisions=[precision],
                               int8=int8, fp16_onnx=fp16_onnx)
            info["bundle"] = str(bundle_dir)
            return Artifact(backend=self.name, precision=precision, path=None, status="skipped",
                            reason=f"{reason}; build the engine on the device: bash {bundle_dir}/build.sh",
                            info=info)
        from edgerep.backends.tensorrt.engine_build import build_engine

        return build_engine(source, precision, out_dir=out_dir, profile=profile, calib=calib, int8=int8,
                            fp16_onnx=fp16_onnx, int8_mode=int8_mode, dla_core=dla_core,
                            timing_cache=options.get("timing_cache"), info=info)

    def load(self, artifact: Artifact) -> Any:
        from edgerep.files.artifacts import read_sidecar

        if artifact.path is None:
            raise UserError(f"tensorrt {artifact.precision}: no engine (status {artifact.status}: {artifact.reason})")
        return self.load_checked(Path(artifact.path), read_sidecar(Path(artifact.path)))

    def load_checked(self, engine: Path, side: dict[str, Any] | None, *, onnx_sha256: str | None = None,
                     output_names: list[str] | None = None) -> Any:
        """Load a plan after the sidecar guard: a plan from another TensorRT or GPU is refused, not run.
        `output_names` (the ONNX order; default: the sidecar's) orders the runner's run_all."""
        from edgerep.backends.tensorrt.gpu import running_environment
        from edgerep.backends.tensorrt.guard import guard_engine
        from edgerep.backends.tensorrt.runner import TensorRTRunner

        reason = self.available()
        if reason is not None:
            raise UserError(f"--engine {engine}: {reason}")
        guard_engine(engine, side, running_environment(), onnx_sha256=onnx_sha256)
        names = output_names or ((side or {}).get("settings") or {}).get("output_names")
        return TensorRTRunner(engine, dla_core=(side or {}).get("dla_core"), output_names=names)


BACKEND = TensorRTBackend()
