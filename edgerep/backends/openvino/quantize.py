"""OpenVINO INT8 through NNCF post-training quantization: calibration samples, range estimators, ignored
nodes mapped to OpenVINO's names, the overflow fix for ISAs without VNNI."""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgerep.backends.base import Backend
from edgerep.backends.common import calib_settings, check_ignored_nodes
from edgerep.cpu.isa import int16_saturation_risk, target_isa
from edgerep.data.sources import sample_batches
from edgerep.errors import UserError, first_line
from edgerep.files.onnx_files import onnx_input

# The NNCF range estimator standing in for each calibration method. NNCF has no KL-divergence
# calibration: "entropy" maps to its histogram estimator, which also optimizes ranges from a histogram.
RANGE_ESTIMATORS = {"minmax": None, "percentile": "MEAN_QUANTILE", "entropy": "HISTOGRAM"}


class CalibrationSamples:
    """A re-iterable view of the calibration data as single samples (NNCF may pass over it more than once,
    and counts subset_size in items, so one item is one sample)."""

    def __init__(self, calib: Any, limit: int, batch: int | None) -> None:
        self.calib, self.limit, self.batch = calib, limit, batch

    def __iter__(self) -> Iterator[np.ndarray]:
        step = self.batch or 1
        for x in sample_batches(self.calib, step, self.limit, exact=True):
            yield x

    def __len__(self) -> int:
        step = self.batch or 1
        return min(int(self.calib.num_samples), self.limit) // step


def quantize_nncf(model: Any, onnx_path: Path, calib: Any, profile: Any, options: dict[str, Any], backend: Backend
                  ) -> tuple[Any, dict[str, Any]]:
    """NNCF post-training INT8 of the OpenVINO model read from `onnx_path`; returns (model, settings)."""
    try:
        # NNCF imports torch.utils.cpp_extension, which warns "No CUDA runtime is found" on every CPU-only run.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        import nncf
    except ImportError:
        raise UserError("nncf is not installed (needed for OpenVINO INT8); pip install 'edgerep[openvino]'") from None
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    method, num = calib_settings(profile, options, backend)
    preset_name = options.get("preset", "mixed")
    bias_correction = options.get("bias_correction", "fast")
    if bias_correction not in ("fast", "full"):
        raise UserError(f"openvino bias_correction {bias_correction!r}: use 'fast' or 'full'")
    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    if preset_name not in presets:
        raise UserError(f"openvino preset {preset_name!r}: use 'performance' (symmetric) or 'mixed' (asymmetric activations)")
    ignored = check_ignored_nodes(onnx_path, options.get("ignored_nodes"))
    # A detector's prediction convs and decode stay in float, as on every backend (quant.float_policy; the decode's
    # non-weighted ops are left alone by NNCF anyway, the convs are not).
    head = [n for n in check_ignored_nodes(onnx_path, options.get("head_float_nodes")) if n not in ignored]
    ov_ignored = _ov_names(model, ignored + head)

    _, shape = onnx_input(onnx_path)
    fixed_batch = shape[0] if shape and shape[0] is not None else None
    samples = CalibrationSamples(calib, num, fixed_batch)
    count = len(samples)
    if count == 0:
        raise UserError(f"--calib {calib.path}: {calib.num_samples} samples, fewer than the model's batch of {fixed_batch}")
    estimator = RANGE_ESTIMATORS[method]
    isa = target_isa(profile)
    overflow_fix = overflow_fix_for(isa)
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix))
    if estimator is not None:
        advanced.activations_range_estimator_params = getattr(RangeEstimatorParametersSet, estimator)
    # MIXED (asymmetric activations) is the default: it keeps the range of non-ReLU activations
    # (SiLU, HardSwish, GELU) and costs the CPU plugin next to nothing; PERFORMANCE is selectable.
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)  # NNCF logs progress bars and notes at INFO/WARNING
    try:
        # NNCF draws rich progress bars on stdout; keep stdout clean for `--json` output.
        with contextlib.redirect_stdout(sys.stderr):
            quantized = nncf.quantize(
                model, nncf.Dataset(samples), preset=presets[preset_name], subset_size=count,
                target_device=nncf.TargetDevice.CPU, fast_bias_correction=bias_correction == "fast",
                ignored_scope=nncf.IgnoredScope(names=ov_ignored, validate=False) if ov_ignored else None,
                advanced_parameters=advanced,
            )
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"openvino INT8: nncf.quantize failed on {onnx_path.name} "
                        f"({type(exc).__name__}: {first_line(exc)})") from None
    finally:
        nncf_log.setLevel(level)
    return quantized, {"quantizer": "nncf.quantize", "preset": preset_name, "calib_method": method,
                       "bias_correction": bias_correction, "isa": isa, "overflow_fix": overflow_fix,
                       "range_estimator": estimator or "nncf default (MINMAX weights, MEAN_MINMAX activations)",
                       "calib_samples": count * (fixed_batch or 1), "ignored_nodes": ignored,
                       "ignored_openvino_ops": ov_ignored, "float_head_nodes": len(head)}


def overflow_fix_for(isa: str) -> str:
    """NNCF's overflow fix for a target ISA. Without VNNI, oneDNN's u8*s8 kernels add product pairs into a
    saturating int16 as ONNX Runtime's do; NNCF's fix stores weights in 7 bits so no pair can overflow.
    "enable" (every layer) where the target lacks VNNI; "disable" (full 8-bit weights) where it cannot
    overflow (VNNI, AMX, ARM64). NNCF's own default, "first_layer_only", is a compromise for unknown CPUs."""
    return "enable" if int16_saturation_risk(isa) else "disable"


def _ov_names(model: Any, onnx_names: list[str]) -> list[str]:
    """OpenVINO op names for ONNX node names. The ONNX frontend names an op after its ONNX node, or
    "<node>/<part>" when it splits one node into several (a Conv with bias becomes
    "<node>/WithoutBiases" + an Add "<node>")."""
    if not onnx_names:
        return []
    ops = [op.get_friendly_name() for op in model.get_ordered_ops()]
    found: list[str] = []
    for name in onnx_names:
        matches = [op for op in ops if op == name or op.startswith(name + "/")]
        found.extend(m for m in matches if m not in found)
    return found

