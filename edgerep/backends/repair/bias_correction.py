"""Bias correction (Nagel et al., ICCV 2019, section 4.2, the empirical form): cancel the mean output shift that
INT8 weight rounding leaves, by folding it into the biases.

For a layer y = W x + b whose weights the backend rounds to W' = W + dW, the output mean moves from W E[x] to
W' E[x'], where x' is the layer's input in the network whose earlier layers are rounded (and already corrected)
too; that difference is a constant per output channel, which the bias takes back. The layers are corrected one at
a time in graph order, each with E[x'] measured on calibration data in a copy of the model with the rounded
weights and the corrections so far, so one layer's correction also absorbs the mean shift that reaches it from
upstream. dW is the rounding of the backend's own weight quantizer (per output channel or per tensor, WEIGHTS
below). For a Conv the expectation is exact, zero padding included: the conv is linear, so the mean over images
and positions of conv(x, W) is the spatial mean of conv(mean image, W), computed with the layer's own strides,
pads, dilations and groups. Gemm takes the mean input vector. Activation rounding is not modelled.

Not exact in float by design (it moves the float output to cancel the INT8 error): the report gives the shift.
Layers the plan keeps in float (`float_nodes`) are neither rounded nor corrected.
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
    wanted = [t for t in tensors if t != name]
    sess = session(model, wanted)
    n_out = len(model.graph.output)
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


def _mean_output(node: Any, w: np.ndarray, mean_x: np.ndarray) -> np.ndarray:
    """The layer's mean output without bias, per output channel, for mean input `mean_x`."""
    if node.op_type == "Gemm":  # y = alpha * x W + beta * C, W = B or B^T; C's share is divided out by the caller
        wk = w.T if attr(node, "transB", 0) else w  # (K, N)
        return float(attr(node, "alpha", 1.0)) * (mean_x.reshape(-1) @ wk) / float(attr(node, "beta", 1.0))
    import torch
    import torch.nn.functional as F

    pads = list(attr(node, "pads", None) or [0, 0, 0, 0])
    x = torch.from_numpy(np.ascontiguousarray(mean_x[None]))
    if any(pads):  # ONNX pads are (top, left, bottom, right); F.pad takes (left, right, top, bottom)
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    y = F.conv2d(x, torch.from_numpy(np.ascontiguousarray(w)), stride=tuple(attr(node, "strides", None) or (1, 1)),
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
    nodes = [n for n in nodes if _bias_shape_ok(g, n, skipped)]
    float_means = _mean_inputs(model, nodes, calib, num_samples) if nodes else {}
    # the simulated INT8-weight model: every corrected layer's weights rounded as the backend rounds them
    sim = onnx.ModelProto.FromString(work.SerializeToString())
    sg = Graph(sim)
    sim_nodes = {n.name: n for n in sg.graph.node}
    rounded = {}
    for node in nodes:
        w = np.asarray(g.array(node.input[1]), dtype=np.float64)
        rounded[node.name] = fake_quant(w, weights, _weight_axis(node) if per_channel else None)
        sg.set_array(sim_nodes[node.name], 1, rounded[node.name], suffix="weight_rounded")
    largest = 0.0
    for node in nodes:  # graph order: a layer's input is final once the layers before it are corrected
        sim_mean = _mean_inputs(sim, [sim_nodes[node.name]], calib, num_samples)[node.input[0]]
        w = np.asarray(g.array(node.input[1]), dtype=np.float64)
        err = _mean_output(node, rounded[node.name], sim_mean) - _mean_output(node, w, float_means[node.input[0]])
        bias = _bias(g, node, err.shape)
        g.set_array(node, 2, bias - err, suffix="bias_corrected")
        sg.set_array(sim_nodes[node.name], 2, _bias(sg, sim_nodes[node.name], err.shape) - err, suffix="bias_corrected")
        largest = max(largest, float(np.max(np.abs(err))) if err.size else 0.0)
    done = [n.name for n in nodes]
    shift = output_difference(run_outputs(model, calib, num_samples), run_outputs(work, calib, num_samples)) \
        if done else {"max_abs_err": 0.0, "max_rel_err": 0.0}
    report = {"layers": len(done), "nodes": done, "skipped": skipped, "weights": weights,
              "per_channel": per_channel, "max_correction": largest, "float_shift": shift,
              "method": "empirical, layer by layer in graph order (mean output of the rounded-weight model "
                        "minus the float model's)",
              "padding": "exact (spatial mean of conv(mean input, W) with the layer's pads)",
              "samples": min(int(calib.num_samples), num_samples)}
    return work, report


def _bias(g: Graph, node: Any, shape: tuple[int, ...]) -> np.ndarray:
    has = len(node.input) > 2 and bool(node.input[2])
    return np.asarray(g.array(node.input[2]), dtype=np.float64) if has else np.zeros(shape)


def _bias_shape_ok(g: Graph, node: Any, skipped: list[dict[str, str]]) -> bool:
    """A bias of one value per output channel (or none): a broadcast Gemm bias is left alone."""
    w = g.array(node.input[1])
    assert w is not None
    out = w.shape[0] if node.op_type == "Conv" or attr(node, "transB", 0) else w.shape[1]
    has = len(node.input) > 2 and bool(node.input[2])
    b = g.array(node.input[2]) if has else None
    if b is not None and tuple(b.shape) != (out,):
        skipped.append({"node": node.name, "why": f"bias of shape {list(b.shape)} (broadcast)"})
        return False
    return True
