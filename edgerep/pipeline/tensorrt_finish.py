"""After `edgerep build` computed the reference: the TensorRT build's host-side rows and the finished bundle.

The INT8 Q/DQ model TensorRT builds from is validated in ONNX Runtime on the CPU (its own report row, backend
"onnxruntime-qdq": a prediction of the device engine's accuracy that does not gate the build), and the device
bundle gets the reference outputs and those predictions.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgerep.backends.tensorrt.host import PREDICTION_BACKEND, bundle_predictions, bundle_reference

if TYPE_CHECKING:
    from edgerep.targets import TargetProfile
    from edgerep.validate.engine import Reference


def qdq_prediction(qdq_path: Path, reference: Reference, *, profile: TargetProfile, engine_batch: int) -> dict[str, Any]:
    """Validate the Q/DQ model in ONNX Runtime on the CPU like any engine: the INT8 engine's predicted accuracy."""
    from edgerep.backends.onnxruntime.runner import OrtRunner
    from edgerep.pipeline.report import engine_entry
    from edgerep.validate.engine import gate_to_dict, validate_runner

    record = engine_entry(PREDICTION_BACKEND, "int8", path=str(qdq_path), status="ok", prediction=True,
                          prediction_of="tensorrt int8",
                          note="the INT8 Q/DQ model TensorRT builds from, run in ONNX Runtime on the CPU: "
                               "a prediction of the device engine's accuracy (its latency is the CPU's)")
    gate = reference.scorer.gate(profile, "int8")
    record["gate"] = gate_to_dict(gate)
    # Simulated Q/DQ (float ops): the quantization error alone, as a GPU computes it; this CPU's integer
    # kernels could saturate where TensorRT's do not (OrtRunner's simulate_qdq).
    with OrtRunner(Path(qdq_path), simulate_qdq=True) as runner:
        record.update(validate_runner(runner, reference, engine_batch=engine_batch, gate=gate,
                                      latency_batches=[engine_batch], warmup=2, iterations=10,
                                      dynamic_batch=profile.dynamic_batch))
    return record


def finish_offline(artifacts: dict[str, Any], reference: Reference, *, profile: TargetProfile,
                   engine_batch: int) -> list[dict[str, Any]]:
    """After the reference is computed: validate each INT8 Q/DQ model in ONNX Runtime (a report row of its
    own, backend "onnxruntime-qdq"), and complete the device bundle (reference.npz, predictions).
    Returns the extra engine records for report.json."""
    extra: list[dict[str, Any]] = []
    bundles: set[str] = set()
    predictions: dict[str, dict[str, Any]] = {}
    for artifact in artifacts.values():
        info = getattr(artifact, "info", None) or {}
        if info.get("bundle"):
            bundles.add(info["bundle"])
        if artifact.precision == "int8" and info.get("qdq") and Path(info["qdq"]).is_file():
            record = qdq_prediction(Path(info["qdq"]), reference, profile=profile, engine_batch=engine_batch)
            extra.append(record)
            predictions["int8"] = {k: record.get(k) for k in ("backend", "accuracy", "passed", "reason")}
    for b in sorted(bundles):
        bundle_reference(Path(b), reference)
        if predictions:
            bundle_predictions(Path(b), predictions)
    return extra
