"""OpenVINO backend: IR (.xml + .bin) in FP32, BF16 (the FP32 IR computed in bf16), FP16 (weights compressed) or
INT8 (NNCF post-training).

Each engine is validated at an inference precision, written beside it as `<stem>.compile.json` (compile_props): on
CPUs with BF16 the CPU plugin would otherwise run FP32 IRs in bf16 (measured on a Xeon) and the FP32 gate would test
bf16 numbers. fp32 and int8 (the layers NNCF leaves in float) run in f32; bf16 in bf16, built only on a CPU with BF16
(edgerep.cpu.isa.precision_unavailable: elsewhere OpenVINO silently runs f32); fp16 in f16 where the CPU supports
it, else f32 with compressed weights. The sidecar lists the file and the precision.
"""
from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from edgerep.backends.base import COMMON_OPTIONS, RUNTIME_DEFAULT, Capabilities
from edgerep.backends.common import (
    engine_file,
    finish_build,
    int8_source,
    require_available,
    require_calib,
    runtime_missing,
    start_build,
)
from edgerep.backends.openvino.compile_props import HINTS, config_for, inference_precision, read_config, write_config
from edgerep.backends.openvino.quantize import quantize_nncf
from edgerep.backends.openvino.runner import OpenVINORunner
from edgerep.cpu.isa import precision_unavailable
from edgerep.errors import UserError, first_line
from edgerep.files.artifacts import Artifact, atomic_files
from edgerep.files.onnx_files import onnx_output_names

_PACKAGES = ("openvino", "nncf")


class OpenVINOBackend:
    name = "openvino"
    # preset: "mixed" (default) or "performance"; bias_correction: NNCF's "fast" (default) or "full" (slower, can
    # be more accurate on models with wide activation ranges). Calibration: min/max first, NNCF's default.
    capabilities = Capabilities(title="OpenVINO", precisions=("fp32", "bf16", "fp16", "int8"), calib_methods=("minmax",
                                "percentile", "entropy"),
                                options=COMMON_OPTIONS | {"preset", "bias_correction"}, packages=_PACKAGES,
                                qdq_style="openvino", install="pip install 'edgerep[openvino]'",
                                ultralytics_format="openvino",
                                inference_precisions=(*HINTS, RUNTIME_DEFAULT))

    def available(self) -> str | None:
        return runtime_missing("openvino", self)

    def artifact_path(self, out_dir: Path, precision: str) -> Path:
        return Path(out_dir) / f"model.{precision}.xml"

    def build(self, onnx_path: Path, precision: str, *, out_dir: Path, profile: Any = None, calib: Any = None,
              options: dict[str, Any] | None = None) -> Artifact:
        options = start_build(self, precision, options)
        why = precision_unavailable(precision, getattr(profile, "isa", None) or "auto")
        if why is not None:  # a direct build; the pipeline refused it with --precision already
            raise UserError(f"--precision {precision}: {why}")
        import openvino as ov

        onnx_path = Path(onnx_path)
        path = self.artifact_path(out_dir, precision)
        source, repair = onnx_path, None
        if precision == "int8":
            require_calib(calib, self.name)
            # the range-repaired model when options name repairs (the same call on every backend); NNCF
            # quantizes it, its node names are the original's
            source, repair = int8_source(self, onnx_path, Path(out_dir), options, calib)
        try:
            model = ov.convert_model(str(source))
        except Exception as exc:
            raise UserError(f"openvino: cannot convert {onnx_path.name} ({type(exc).__name__}: {first_line(exc)})") from None
        hint = inference_precision(precision)
        settings: dict[str, Any] = {"compress_to_fp16": precision == "fp16",
                                    "inference_precision": hint,  # what the engine is validated at
                                    # the ONNX outputs in graph order: the runner returns its ports in this order
                                    "output_names": onnx_output_names(onnx_path)}
        if precision == "int8":
            model, quant = quantize_nncf(model, source, calib, profile, options, self)
            settings.update(quant)
        with atomic_files(path) as tmp:
            try:
                ov.save_model(model, str(tmp), compress_to_fp16=precision == "fp16")
            except RuntimeError as exc:  # a failed C++ write ("basic_ios::clear: iostream error") hides its errno
                if "ios" not in str(exc):
                    raise
                raise OSError(errno.EIO, "OpenVINO could not write the IR: disk full or folder not writable",
                              str(path)) from None
            settings["compile_properties"] = write_config(tmp, config_for(hint))
        return finish_build(self, precision, path, onnx_path=onnx_path, profile=profile, calib=calib, settings=settings,
                            range_repair=repair)

    def load(self, artifact: Artifact) -> "OpenVINORunner":
        require_available(self)
        path = engine_file(artifact)
        settings = artifact.info.get("settings") or {}
        config, config_file = read_config(path, settings)
        validated = settings.get("inference_precision") or inference_precision(artifact.precision)
        return OpenVINORunner(path, validated, output_names=settings.get("output_names"), config=config,
                              config_file=config_file, validated_at=validated)


# --- INT8 through NNCF -----------------------------------------------------------------------------


BACKEND = OpenVINOBackend()
