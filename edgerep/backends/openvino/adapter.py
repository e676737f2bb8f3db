"""OpenVINO backend: IR (.xml + .bin) in FP32, FP16 (weights compressed) or INT8 (NNCF post-training).

At load time the CPU plugin is pinned to an inference precision: on CPUs with bfloat16 support it
would otherwise run FP32 IRs in bf16 (measured on this machine's Xeon), and the FP32 gate would test
bf16 numbers. fp32 and int8 (the layers NNCF leaves in float) run in f32; fp16 runs in f16 where the
CPU supports it, else f32 with compressed weights. The precision used is in the sidecar.
"""
from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from edgerep.backends.base import COMMON_OPTIONS, Capabilities
from edgerep.backends.common import (
    engine_file,
    finish_build,
    require_available,
    require_calib,
    runtime_missing,
    start_build,
)
from edgerep.backends.openvino.quantize import quantize_nncf
from edgerep.backends.openvino.runner import OpenVINORunner, inference_precision
from edgerep.errors import UserError, first_line
from edgerep.files.artifacts import Artifact, atomic_files
from edgerep.files.onnx_files import onnx_output_names

_PACKAGES = ("openvino", "nncf")


class OpenVINOBackend:
    name = "openvino"
    # preset: "mixed" (default) or "performance"; bias_correction: NNCF's "fast" (default) or "full" (slower, can
    # be more accurate on models with wide activation ranges). Calibration: min/max first, NNCF's default.
    capabilities = Capabilities(title="OpenVINO", precisions=("fp32", "fp16", "int8"), calib_methods=("minmax",
                                "percentile", "entropy"),
                                options=COMMON_OPTIONS | {"preset", "bias_correction"}, packages=_PACKAGES,
                                qdq_style="openvino", install="pip install 'edgerep[openvino]'",
                                ultralytics_format="openvino")

    def available(self) -> str | None:
        return runtime_missing("openvino", self)

    def artifact_path(self, out_dir: Path, precision: str) -> Path:
        return Path(out_dir) / f"model.{precision}.xml"

    def build(self, onnx_path: Path, precision: str, *, out_dir: Path, profile: Any = None, calib: Any = None,
              options: dict[str, Any] | None = None) -> Artifact:
        options = start_build(self, precision, options)
        import openvino as ov

        onnx_path = Path(onnx_path)
        path = self.artifact_path(out_dir, precision)
        try:
            model = ov.convert_model(str(onnx_path))
        except Exception as exc:
            raise UserError(f"openvino: cannot convert {onnx_path.name} ({type(exc).__name__}: {first_line(exc)})") from None
        settings: dict[str, Any] = {"compress_to_fp16": precision == "fp16",
                                    "inference_precision": inference_precision(precision),
                                    # the ONNX outputs in graph order: the runner returns its ports in this order
                                    "output_names": onnx_output_names(onnx_path)}
        if precision == "int8":
            require_calib(calib, self.name)
            model, quant = quantize_nncf(model, onnx_path, calib, profile, options, self)
            settings.update(quant)
        with atomic_files(path) as tmp:
            try:
                ov.save_model(model, str(tmp), compress_to_fp16=precision == "fp16")
            except RuntimeError as exc:  # a failed C++ write ("basic_ios::clear: iostream error") hides its errno
                if "ios" not in str(exc):
                    raise
                raise OSError(errno.EIO, "OpenVINO could not write the IR: disk full or folder not writable",
                              str(path)) from None
        return finish_build(self, precision, path, onnx_path=onnx_path, profile=profile, calib=calib, settings=settings)

    def load(self, artifact: Artifact) -> "OpenVINORunner":
        require_available(self)
        path = engine_file(artifact)
        settings = artifact.info.get("settings") or {}
        hint = settings.get("inference_precision") or inference_precision(artifact.precision)
        return OpenVINORunner(path, hint, output_names=settings.get("output_names"))


# --- INT8 through NNCF -----------------------------------------------------------------------------


BACKEND = OpenVINOBackend()
