"""Which layers of a built INT8 engine really compute in INT8: read from the engine, not from our intentions.

OpenVINO: the CPU plugin's runtime model names each executed layer, lists the original ops it absorbed
(`originalLayersNames`) and its `runtimePrecision` (u8/i8 for INT8 kernels, f32 for float ones).
Q/DQ ONNX (ONNX Runtime, TensorRT's Q/DQ model): a layer is INT8 when its weight comes through a
DequantizeLinear.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

# Runtime layer types that carry a weighted ONNX node.
_OV_WEIGHTED = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "Gemm"}


def ov_layer_precisions(model: Path | Any, nodes: list[str]) -> dict[str, str | None]:
    """Runtime precision ("u8", "i8", "f32", ...) of the layer executing each ONNX node of `nodes` on the CPU,
    or None when no runtime layer claims it. `model`: an IR path or an ov.Model."""
    import openvino as ov
    import openvino.properties.hint as hints

    core = ov.Core()
    m = core.read_model(str(model)) if isinstance(model, (str, Path)) else model
    compiled = core.compile_model(m, "CPU", {hints.inference_precision: "f32"})
    layers = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        kind = rt["layerType"].astype(str) if "layerType" in rt else ""
        if kind not in _OV_WEIGHTED:
            continue
        originals = rt["originalLayersNames"].astype(str).split(",") if "originalLayersNames" in rt else []
        layers.append((originals + [op.get_friendly_name()], rt["runtimePrecision"].astype(str)))
    result: dict[str, str | None] = {}
    for node in nodes:
        # The ONNX frontend names a Conv's ops "<node>/WithoutBiases" (+ an Add "<node>"); the weighted op is
        # the one named "<node>/..." (a Gemm: "<node>/WithoutBiases/DequantizationMultiply" after fusion).
        match = [prec for names, prec in layers if any(n.startswith(node + "/") for n in names)]
        if not match:
            match = [prec for names, prec in layers if node in names]
        result[node] = match[0] if match else None
    return result


def ov_float_layers(model: Path | Any, nodes: list[str]) -> list[str]:
    """The nodes of `nodes` that run in float (f32/bf16/f16) in an OpenVINO model."""
    precisions = ov_layer_precisions(model, nodes)
    return [n for n in nodes if precisions.get(n) is not None and precisions[n] not in ("u8", "i8")]


def qdq_float_layers(qdq_path: Path, nodes: list[str]) -> list[str]:
    """The nodes of `nodes` whose weights are not quantized in a Q/DQ ONNX model."""
    from edgerep.quant.qdq import qdq_quantized_nodes

    quantized = qdq_quantized_nodes(qdq_path, nodes)
    return [n for n in nodes if not quantized[n]]
