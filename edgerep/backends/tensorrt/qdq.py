"""Reduced-precision ONNX models for TensorRT's explicit modes, made on the host.

* `make_qdq`: an INT8 Q/DQ model in TensorRT's conventions, by onnxruntime.quantization.quantize_static with
  the host calibration's ranges: symmetric INT8 (zero point 0, scale = amax/127), per-channel weights
  (axis 0 for Conv, output axis for MatMul/ConvTranspose), per-tensor activations, Q/DQ only on the inputs of
  the operators TensorRT runs in INT8 (outputs stay float; TensorRT fuses), float weights behind a Q->DQ pair
  (the form QAT exports and TensorRT 8.x parses), float bias. The option set follows NVIDIA ModelOpt's
  TensorRT settings for ONNX Runtime's quantizer (modelopt/onnx/quantization, `trt_guided_options`).
  It is what TensorRT builds the INT8 engine from in "qdq" mode (the only INT8 mode from TensorRT 11), and
  run in ONNX Runtime on the CPU it predicts that engine's accuracy.
* `make_fp16`: a float16 model (float32 inputs/outputs kept) for TensorRT 11, whose strongly typed networks
  take precision from the graph. NVIDIA recommends ModelOpt AutoCast (not on PyPI); ONNX Runtime's
  float16 converter does the same cast with keep_io_types.
"""
from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgerep.errors import UserError
from edgerep.files.onnx_files import quiet_root_logger

# Operators whose inputs get Q/DQ: TensorRT's weighted ops, pools it can run in INT8, and Add (residual
# fusion into the preceding convolution); data-movement and activation ops stay float, as in ModelOpt.
TRT_QUANT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool", "GlobalAveragePool", "MaxPool", "Add")


def trt_extra_options(model: Any) -> dict[str, Any]:
    return {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "AddQDQPairToWeight": True,
        "DedicatedQDQPair": True,
        "ForceQuantizeNoInputCheck": True,
        "QDQKeepRemovableActivations": True,
        "OpTypesToExcludeOutputQuantization": sorted({n.op_type for n in model.graph.node}),
        "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1, "MatMul": 1},
    }


def _supports_cache_path() -> bool:
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def make_qdq(onnx_path: Path, out_path: Path, ranges: Any, *, nodes_to_exclude: list[str] | None = None,
             head_float_nodes: list[str] | None = None, per_channel: bool = True,
             use_cache_path: bool | None = None) -> dict[str, Any]:
    """Write the TensorRT-style Q/DQ model of `onnx_path` to `out_path` (atomically) using `ranges`
    (a calibrate.CalibrationRanges). Returns what was done, for the sidecar.

    The ranges reach ONNX Runtime's quantizer unchanged: through quantize_static(calibration_cache_path=...)
    where this ONNX Runtime has it, else as per-tensor scale/zero-point overrides (TensorQuantOverrides);
    `use_cache_path` forces one route (tests check both give the same model)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from edgerep.files.artifacts import atomic_path

    model = onnx.load(str(onnx_path))
    registry = set(QDQRegistry) | set(QLinearOpsRegistry)
    op_types = [op for op in TRT_QUANT_OPS if op in registry]
    extra = trt_extra_options(model)
    node_names = {n.name for n in model.graph.node}
    exclude = list(nodes_to_exclude or [])
    unknown = [n for n in exclude if n not in node_names]
    if unknown:
        raise UserError(f"ignored nodes {', '.join(unknown[:3])}: not node names of {onnx_path.name}")
    tail = [n for n in head_float_nodes or [] if n not in exclude]  # the default float nodes (quant.float_policy)
    missing = [n for n in tail if n not in node_names]
    if missing:
        raise UserError(f"head float nodes {', '.join(missing[:3])}: not node names of {onnx_path.name}")
    route = ("cache" if _supports_cache_path() else "overrides") if use_cache_path is None else \
        ("cache" if use_cache_path else "overrides")
    with tempfile.TemporaryDirectory(prefix="edgerep-qdq-") as tmp, atomic_path(Path(out_path)) as partial:
        kwargs: dict[str, Any] = {}
        if route == "cache":
            from onnxruntime.quantization import save_tensors_data

            cache = Path(tmp) / "ranges.json"
            save_tensors_data(ranges.tensors_data, cache)
            kwargs["calibration_cache_path"] = str(cache)
            reader = None
        else:
            extra["TensorQuantOverrides"] = _overrides(ranges)
            reader = _dummy_reader(onnx_path, ranges.input_name)  # ranges come from the overrides
        from onnxruntime.quantization import CalibrationMethod

        method = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
                  "percentile": CalibrationMethod.Percentile}[ranges.method] if route == "cache" else CalibrationMethod.MinMax
        # quantize_static writes the model itself; give it a name in our temp folder, then move it.
        target = Path(tmp) / "model.qdq.onnx"
        with quiet_root_logger():  # quantize_static logs a pre-processing hint on the root logger every call
            quantize_static(str(onnx_path), str(target), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=op_types, per_channel=per_channel, reduce_range=False,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude + tail, calibrate_method=method, extra_options=extra, **kwargs)
        qdq = onnx.load(str(target))
        onnx.checker.check_model(qdq)
        check_trt_conventions(qdq)
        onnx.save(qdq, str(partial))
    return {"route": route, "op_types": op_types, "per_channel": per_channel, "nodes_to_exclude": exclude,
            "extra_options": {k: v for k, v in extra.items() if k != "TensorQuantOverrides"}}


def _overrides(ranges: Any) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for name, amax in ranges.amax().items():
        scale = np.float32(amax / 127.0) if amax > 0 else np.finfo(np.float32).tiny
        out[name] = [{"scale": np.array(scale, dtype=np.float32), "zero_point": np.array(0, dtype=np.int8)}]
    return out


def _dummy_reader(onnx_path: Path, input_name: str) -> Any:
    """One zero batch: quantize_static wants a reader even when every range comes from the overrides."""
    from edgerep.backends.tensorrt.calibrate import model_input
    from edgerep.data.sources import batches_reader

    _, dims = model_input(onnx_path)
    return batches_reader(input_name, [np.zeros([d if d is not None else 1 for d in dims], dtype=np.float32)])


def check_trt_conventions(model: Any) -> None:
    """Raise if the Q/DQ model breaks TensorRT's rules: INT8 with zero points 0 (the parser rejects others)."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) < 3 or node.input[2] not in inits:
            continue
        zp = inits[node.input[2]]
        if zp.data_type != TensorProto.INT8 or np.any(numpy_helper.to_array(zp) != 0):
            raise RuntimeError(f"Q/DQ node {node.name}: zero point must be INT8 0 for TensorRT")


def activation_scales(model: Any) -> dict[str, float]:
    """Per-tensor scales of the activations in a Q/DQ model: tensor name -> scale of its QuantizeLinear."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    scales: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and node.input[1] in inits:
            s = numpy_helper.to_array(inits[node.input[1]])
            if s.size == 1:
                scales[node.input[0]] = float(s.reshape(()))
    return scales


def make_fp16(onnx_path: Path, out_path: Path) -> Path:
    """Cast the model's float tensors to float16, keeping float32 inputs and outputs (atomic write)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    from edgerep.files.artifacts import atomic_path

    model = onnx.load(str(onnx_path))
    half = OnnxModel(convert_float_to_float16(model, keep_io_types=True))
    half.topological_sort()  # the converter appends the input Casts at the end of the node list
    half = half.model
    onnx.checker.check_model(half)
    with atomic_path(Path(out_path)) as partial:
        onnx.save(half, str(partial))
    return Path(out_path)
