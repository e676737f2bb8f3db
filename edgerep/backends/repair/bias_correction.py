"""Bias correction (Nagel et al., ICCV 2019, section 4.2): cancel the mean output shift that INT8 weight rounding
leaves, by folding its expectation into the bias.

For a layer y = W x + b quantized to W' = W + dW, the output moves by dW x; its expectation over the data is
dW E[x], a constant per output channel that the bias can take back: b <- b - dW E[x]. dW is the rounding of the
backend's own weight quantizer (per output channel, or per tensor; WEIGHTS below), E[x] the float model's mean
input on calibration data. For a Conv the expectation is taken exactly, zero padding included: the conv is
linear, so the mean over images and positions of conv(x, dW) is the spatial mean of conv(mean image, dW),
computed with the layer's own strides, pads, dilations and groups. Gemm takes the mean input vector.

Not exact in float by design (it moves the float output to cancel the INT8 error): the report gives the shift.
Layers the plan keeps in float (`float_nodes`) are left alone, since they have no rounding to cancel.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgerep.backends.repair.graph import Graph, attr, calib_batches, model_input, output_difference, run_outputs, session

# How each backend stores INT8 weights (onnxruntime.quantization's conventions, as backends.onnxruntime and the
# TensorRT host Q/DQ use them): s8 symmetric [-127, 127]; s7 reduce_range symmetric [-64, 64]; u8 asymmetric [0, 255]
# with the range widened to hold 0.
WEIGHTS = ("s8", "s7", "u8")


def fake_quant(w: np.ndarray, weights: str, axis: int | None) -> np.ndarray:
    """`w` quantized and dequantized as the backend's quantizer does, per slice along `axis` (None: per tensor)."""
    w = np.asarray(w, dtype=np.float64)
    moved = np.moveaxis(w, axis, 0) if axis is not None else w.reshape(1, *w.shape)
    flat = moved.reshape(moved.shape[0], -1)
    if weights in ("s8", "s7"):
        qmax = 127.0 if weights == "s8" else 64.0
        absmax = np.abs(flat).max(axis=1, keepdims=True)
        scale = np.where(absmax > 0, 2 * absmax / (2 * qmax), 1.0).astype(np.float32).astype(np.float64)
        deq = np.clip(np.round(flat / scale), -qmax, qmax) * scale
    elif weights == "u8":
        lo = np.minimum(flat.min(axis=1, keepdims=True), 0.0)
        hi = np.maximum(flat.max(axis=1, keepdims=True), 0.0)
        scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32).astype(np.float64)
        zp = np.round(-lo / scale)
        deq = (np.clip(np.round(flat / scale) + zp, 0, 255) - zp) * scale
    else:
        raise ValueError(f"weights {weights!r}: one of {', '.join(WEIGHTS)}")
    out = deq.reshape(moved.shape)
    return np.moveaxis(out, 0, axis) if axis is not None else out.reshape(w.shape)


def _layers(g: Graph, float_nodes: set[str]) -> tuple[list[Any], list[dict[str, str]]]:
    """Conv (2-D kernels, explicit pads) and Gemm nodes with initializer weights; and what was skipped, why."""
    taken, skipped = [], []
    for node in g.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in g.inits:
            continue
        why = None
        if node.name in float_nodes:
            why = "kept in float"
        elif len(node.input) > 2 and node.input[2] and node.input[2] not in g.inits:
            why = "bias is not an initializer"
        elif node.op_type == "Conv" and (g.array(node.input[1]).ndim != 4  # type: ignore[union-attr]
                                         or attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            why = "only 2-D convs with explicit pads"
        elif node.op_type == "Gemm" and (attr(node, "transA", 0) or (len(node.input) < 3 and attr(node, "beta", 1.0) != 1.0)
                                         or attr(node, "beta", 1.0) == 0.0):
            why = "Gemm with transA or beta 0"
        if why:
            skipped.append({"node": node.name, "why": why})
        else:
            taken.append(node)
    return taken, skipped


def _weight_axis(node: Any) -> int:
    """The output-channel axis of the weight: ONNX Runtime quantizes per channel along it."""
    if node.op_type == "Gemm":
        return 0 if attr(node, "transB", 0) else 1
    return 0


def _mean_inputs(model: Any, nodes: list[Any], calib: Any, num_samples: int) -> dict[str, np.ndarray]:
    """Each node's mean input over the calibration samples: (C, H, W) for a Conv, (K,) for a Gemm."""
    tensors = sorted({n.input[0] for n in nodes})
    name, _ = model_input(model)
    sess = session(model, [t for t in tensors if t != name])
    n_out = len(model.graph.output)
    wanted = [t for t in tensors if t != name]
    sums: dict[str, np.ndarray] = {}
    count = 0
    for x in calib_batches(model, calib, num_samples):
        values = dict(zip(wanted, sess.run(None, {name: x})[n_out:]))
        values[name] = x
        for t in tensors:
            v = np.asarray(values[t], dtype=np.float64).sum(axis=0)
            sums[t] = sums[t] + v if t in sums else v
        count += x.shape[0]
    return {t: s / max(count, 1) for t, s in sums.items()}


def _conv_mean_error(node: Any, dw: np.ndarray, mean_x: np.ndarray) -> np.ndarray:
    """Spatial mean of conv(mean image, dW): the exact expected output error, zero padding included."""
    import torch
    import torch.nn.functional as F

    pads = list(attr(node, "pads", None) or [0, 0, 0, 0])
    x = torch.from_numpy(np.ascontiguousarray(mean_x[None]))
    if any(pads):  # ONNX pads are (top, left, bottom, right); F.pad takes (left, right, top, bottom)
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    y = F.conv2d(x, torch.from_numpy(np.ascontiguousarray(dw)), stride=tuple(attr(node, "strides", None) or (1, 1)),
                 dilation=tuple(attr(node, "dilations", None) or (1, 1)), groups=int(attr(node, "group", 1)))
    return y.mean(dim=(0, 2, 3)).numpy()


def bias_correction(model: Any, calib: Any, *, weights: str, num_samples: int, per_channel: bool = True,
                    float_nodes: Sequence[str] = ()) -> tuple[Any, dict[str, Any]]:
    """The bias-corrected copy of `model` and the report (layers corrected, the largest correction, the float
    output shift it causes)."""
    import onnx

    work = onnx.ModelProto.FromString(model.SerializeToString())
    g = Graph(work)
    nodes, skipped = _layers(g, set(float_nodes))
    means = _mean_inputs(model, nodes, calib, num_samples) if nodes else {}
    largest = 0.0
    for node in nodes:
        w = np.asarray(g.array(node.input[1]), dtype=np.float64)
        axis = _weight_axis(node)
        dw = fake_quant(w, weights, axis if per_channel else None) - w
        mean_x = means[node.input[0]]
        if node.op_type == "Conv":
            err = _conv_mean_error(node, dw, mean_x)
        else:  # Gemm: y = alpha * x W + beta * C, W = B or B^T
            wk = dw.T if attr(node, "transB", 0) else dw  # (K, N)
            err = float(attr(node, "alpha", 1.0)) * (mean_x.reshape(-1) @ wk) / float(attr(node, "beta", 1.0))
        has_bias = len(node.input) > 2 and bool(node.input[2])
        bias = np.asarray(g.array(node.input[2]), dtype=np.float64) if has_bias else np.zeros(err.shape)
        if bias.shape != err.shape:
            skipped.append({"node": node.name, "why": f"bias of shape {list(bias.shape)} (broadcast)"})
            continue
        g.set_array(node, 2, bias - err, suffix="bias_corrected")
        largest = max(largest, float(np.max(np.abs(err))) if err.size else 0.0)
    done = [n.name for n in nodes if n.name not in {s["node"] for s in skipped}]
    shift = output_difference(run_outputs(model, calib, num_samples), run_outputs(work, calib, num_samples)) \
        if done else {"max_abs_err": 0.0, "max_rel_err": 0.0}
    report = {"layers": len(done), "nodes": done, "skipped": skipped, "weights": weights,
              "per_channel": per_channel, "max_correction": largest, "float_shift": shift,
              "padding": "exact (spatial mean of conv(mean input, dW) with the layer's pads)",
              "samples": min(int(calib.num_samples), num_samples)}
    return work, report
