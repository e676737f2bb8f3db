"""NNCF's own answer to an accuracy budget, for comparison: nncf.quantize_with_accuracy_control on OpenVINO.

It quantizes like the OpenVINO backend (same preset, range estimator and calibration samples), then reverts
quantizer groups, most harmful first, until the metric drop is within `max_drop`. The metric is the same as
edgerep's search, the reference's task's (quant.evaluate.value_of): for classifiers top-1 in percent against
the labels, or top-1 agreement with the reference (the unfused PyTorch model) where there are none; for
detectors mAP@0.5:0.95 x 100 against the labels, or agreement with the reference's detections. So `max_drop`
is in the same points.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgerep.errors import UserError
from edgerep.quant.evaluate import brief, eval_batch, evaluate_runner, score, subset_view, value_of
from edgerep.quant.layers import quantizable_layers


def accuracy_control(onnx_path: Path, calib: Any, reference: Any, *, max_drop: float, profile: Any,
                     options: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """Run quantize_with_accuracy_control; return {"float_layers", "metrics", "seconds", "settings", "ir"}.

    The IR is saved in `work_dir` (the caller decides whether to keep it). `float_layers` are the weighted
    ONNX nodes that run in float in the result, read from the CPU plugin's runtime model."""
    # NNCF imports torch.utils.cpp_extension, which warns "No CUDA runtime is found" on every CPU-only run.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    # The OpenVINO backend's own calibration feed and method -> range-estimator table, so both quantize alike.
    from edgerep.backends.common import calib_settings
    from edgerep.backends.openvino.adapter import BACKEND
    from edgerep.backends.openvino.quantize import RANGE_ESTIMATORS, CalibrationSamples
    from edgerep.backends.openvino.runner import OpenVINORunner
    from edgerep.files.onnx_files import onnx_input
    from edgerep.quant.precision import ov_float_layers

    t0 = time.perf_counter()
    method, num = calib_settings(profile, options, BACKEND)
    _, shape = onnx_input(Path(onnx_path))
    fixed = shape[0] if shape and shape[0] is not None else None
    samples = CalibrationSamples(calib, num, fixed)
    batch = eval_batch(Path(onnx_path))
    estimator = RANGE_ESTIMATORS[method]
    advanced = AdvancedQuantizationParameters(
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, estimator)) if estimator else None
    items = _validation_items(reference, batch)

    def validate(compiled: Any, data: Any) -> float:
        """The task's metric in points on the samples of `data` (all of them, or a subset NNCF picks)."""
        outs, idxs = [], []
        for x, idx in data:
            keep = idx >= 0  # padding samples carry index -1
            outs.append(np.asarray(compiled(x)[0])[keep])
            idxs.append(idx[keep])
        if not outs:
            return 0.0
        return value_of(score(subset_view(reference, np.concatenate(idxs)), np.concatenate(outs)))

    model = ov.convert_model(str(onnx_path))
    log = logging.getLogger("nncf")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # NNCF draws progress bars on stdout
            result = nncf.quantize_with_accuracy_control(
                model, nncf.Dataset(samples), nncf.Dataset(items), validate, max_drop=float(max_drop),
                drop_type=nncf.DropType.ABSOLUTE, preset=nncf.QuantizationPreset.MIXED, subset_size=len(samples),
                target_device=nncf.TargetDevice.CPU, advanced_quantization_parameters=advanced)
    except Exception as exc:
        raise UserError(f"openvino INT8: nncf.quantize_with_accuracy_control failed "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    finally:
        log.setLevel(level)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    ir = work_dir / "nncf_ac.xml"
    ov.save_model(result, str(ir))
    nodes = [layer.node for layer in quantizable_layers(Path(onnx_path))]
    floats = ov_float_layers(ir, nodes)
    with OpenVINORunner(ir, "f32") as runner:
        metrics = evaluate_runner(runner, reference, batch)
    return {"float_layers": floats, "metrics": brief(metrics), "seconds": time.perf_counter() - t0, "ir": str(ir),
            "settings": {"calib_method": method, "range_estimator": estimator or "nncf default",
                         "preset": "mixed", "calib_samples": len(samples) * (fixed or 1), "max_drop": max_drop,
                         "drop_type": "absolute", "metric": metrics.get("drop_metric")}}


def _validation_items(reference: Any, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs, sample indices) batches; the validation function scores the outputs of those samples against the
    reference. A short last batch is padded (fixed-batch models) with index -1, which the scoring drops."""
    items = []
    start = 0
    for x, _ in reference.source.iter_batches(batch, limit=reference.limit):
        n = x.shape[0]
        idx = np.arange(start, start + n, dtype=np.int64)
        if n < batch:
            x = np.concatenate([x, np.repeat(x[-1:], batch - n, axis=0)])
            idx = np.concatenate([idx, np.full(batch - n, -1, dtype=np.int64)])
        items.append((np.ascontiguousarray(x, dtype=np.float32), idx))
        start += n
    return items
