"""ONNX Runtime (CPU) backend: FP32 is the simplified ONNX; INT8 is a Q/DQ ONNX from quantize_static.

FP32 keeps the portable graph and lets the session optimize it at load time: a saved ORT-optimized
graph (optimized_model_filepath) may hold ORT-internal fused ops tied to this ORT build and CPU.
`quantize_qdq` is public: the TensorRT backend reuses it for its host-side Q/DQ (symmetric INT8).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgerep.backends.base import COMMON_OPTIONS, Capabilities
from edgerep.backends.common import (
    calib_settings,
    engine_file,
    finish_build,
    int8_source,
    require_available,
    require_calib,
    runtime_missing,
    start_build,
)
from edgerep.backends.onnxruntime.isa_policy import weight_format_for
from edgerep.backends.onnxruntime.quantize import int16_saturation_check, quantize_qdq
from edgerep.backends.onnxruntime.runner import OrtRunner
from edgerep.cpu.isa import target_isa
from edgerep.files.artifacts import Artifact, atomic_files, companion_files

_PACKAGES = ("onnxruntime",)


class OnnxRuntimeBackend:
    name = "onnxruntime"
    # activation_type: "uint8" (default) or "int8"; per_channel: weights per output channel (default) or per
    # tensor; int8_weights: how weights are stored for the target CPU (WEIGHT_FORMATS; default from the ISA).
    capabilities = Capabilities(title="ONNX Runtime", precisions=("fp32", "int8"), calib_methods=("minmax",
                                "entropy", "percentile"),
                                options=COMMON_OPTIONS | {"activation_type", "per_channel", "int8_weights"},
                                packages=_PACKAGES, qdq_style="onnxruntime", install="pip install 'edgerep[onnxruntime]'",
                                ultralytics_format="onnx")

    def available(self) -> str | None:
        return runtime_missing("onnxruntime", self)

    def artifact_path(self, out_dir: Path, precision: str) -> Path:
        return Path(out_dir) / f"model.{precision}.onnx"

    def build(self, onnx_path: Path, precision: str, *, out_dir: Path, profile: Any = None, calib: Any = None,
              options: dict[str, Any] | None = None) -> Artifact:
        options = start_build(self, precision, options)
        onnx_path = Path(onnx_path)
        path = self.artifact_path(out_dir, precision)
        repair = None
        if precision == "fp32":
            _copy_onnx(onnx_path, path)
            settings: dict[str, Any] = {"graph_optimization": "ORT_ENABLE_ALL at load"}
        else:
            require_calib(calib, self.name)
            method, num = calib_settings(profile, options, self)
            act = options.get("activation_type", "uint8")
            isa = target_isa(profile)
            weights = weight_format_for(isa, options.get("int8_weights"))
            per_channel = bool(options.get("per_channel", True))
            # the range-repaired model when options name repairs (the same call on every backend)
            source, repair = int8_source(self, onnx_path, Path(out_dir), options, calib, weights=weights,
                                         per_channel=per_channel)
            settings = quantize_qdq(source, path, calib, method=method, num_samples=num,
                                    ignored_nodes=options.get("ignored_nodes"),
                                    head_float_nodes=options.get("head_float_nodes"), activation_type=act,
                                    per_channel=per_channel, weights=weights)
            settings["isa"] = isa
            settings["int16_saturation"] = int16_saturation_check(path)
        return finish_build(self, precision, path, onnx_path=onnx_path, profile=profile, calib=calib, settings=settings,
                            range_repair=repair)

    def load(self, artifact: Artifact) -> "OrtRunner":
        require_available(self)
        path = engine_file(artifact)
        return OrtRunner(path)


def _copy_onnx(src: Path, dst: Path) -> None:
    """Copy an ONNX file (with its external data file, renamed to match) atomically."""
    data = companion_files(src)
    with atomic_files(dst) as tmp:
        if data:  # the .data name is recorded inside the model, so re-save rather than copy
            import onnx

            from edgerep.files.onnx_files import save_onnx

            save_onnx(onnx.load(str(src)), tmp, external_data_threshold=0)
        else:
            shutil.copyfile(src, tmp)


# --- INT8 Q/DQ -------------------------------------------------------------------------------------


BACKEND = OnnxRuntimeBackend()
