"""Weight and activation range statistics per weighted layer, and the outliers that make INT8 hard.

Why fused re-parameterized kernels quantize badly: a RepVGG conv is the sum of a 3x3, a 1x1 and an identity
branch, each with its own BN scale, so one kernel mixes taps of very different sizes (the centre tap carries
the 1x1 and identity terms), and the activations between convs inherit channels of very different ranges.
Per-channel weight scales absorb spread *between* output channels, not the spread inside a channel; per-tensor
activation scales absorb neither. The statistics below measure exactly those two things:

  weights (per output channel, symmetric INT8 as every backend quantizes weights)
    w_channel_spread   max / median of the channels' |w|max   (what a per-tensor weight scale would suffer)
    w_zero_frac        share of non-zero weights that round to 0 under per-channel INT8
                       (small taps lost next to a dominant one inside a channel)
  activations (the layer's input, per-tensor as backends quantize activations; measured on calibration data)
    a_channel_spread   max / median of the channels' |x|max
    a_starved_frac     share of channels whose range uses fewer than 16 of the 256 levels of the tensor's scale

Per-channel activation ranges need the activations themselves: ONNX Runtime's calibrators keep per-tensor
ranges only, so the model is run with the layers' inputs added as outputs and channel maxima accumulated here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgerep.quant.layers import QuantLayer, quantizable_layers

# A layer is flagged when a statistic passes its absolute limit, or stands out from the model's other
# layers (OUTLIER_FACTOR times their median): both the "bad everywhere" and the "one bad layer" cases.
# Calibrated on the trained digits RepVGGs, which quantize without loss: their identity-bearing fused convs
# lose 20-25% of (small) weights to zero and show channel spreads of 1.5-6, so the limits sit well above that.
LIMITS = {"w_zero_frac": 0.40, "w_channel_spread": 20.0, "a_channel_spread": 20.0, "a_starved_frac": 0.25}
OUTLIER_FACTOR = 4.0
STARVED_LEVELS = 16


def weight_stats(weight: np.ndarray, out_axis: int) -> dict[str, Any]:
    w = np.moveaxis(np.asarray(weight, dtype=np.float64), out_axis, 0).reshape(weight.shape[out_axis], -1)
    absmax = np.abs(w).max(axis=1)
    live = absmax[absmax > 0]
    spread = float(live.max() / np.median(live)) if live.size else 1.0
    scale = np.where(absmax > 0, absmax / 127.0, 1.0)[:, None]
    nonzero = w != 0
    lost = (np.abs(w) < scale / 2) & nonzero
    t_scale = absmax.max() / 127.0 if absmax.size and absmax.max() > 0 else 1.0
    lost_t = (np.abs(w) < t_scale / 2) & nonzero
    n = max(int(nonzero.sum()), 1)
    return {"w_absmax": float(absmax.max()) if absmax.size else 0.0, "w_channel_spread": spread,
            "w_zero_frac": float(lost.sum() / n), "w_zero_frac_per_tensor": float(lost_t.sum() / n),
            "out_channels": int(w.shape[0])}


def _out_axis(node: Any, op_type: str) -> int:
    if op_type == "ConvTranspose" or op_type == "MatMul":
        return 1
    if op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 0


def activation_stats(onnx_path: Path, tensors: list[str], calib: Any, *, num_samples: int = 128) -> dict[str, dict[str, Any]]:
    """Per-tensor min/max and per-channel |x|max (channel axis 1) of `tensors` over calibration samples."""
    import onnx
    import onnxruntime as ort

    from edgerep.data.sources import sample_batches
    from edgerep.files.onnx_files import onnx_input

    model = onnx.load(str(onnx_path))
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.input)}
    outputs = {o.name for o in model.graph.output}
    for name in tensors:
        if name in outputs:
            continue
        vi = known.get(name) or onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        model.graph.output.append(vi)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # No graph fusions: the tensors we read must exist as they are in the file.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    input_name, shape = onnx_input(Path(onnx_path))
    first = shape[0] if shape else None
    exact = first is not None
    batch = first if first is not None else 8
    acc: dict[str, dict[str, Any]] = {}
    for x in sample_batches(calib, batch, num_samples, exact=exact):
        values = session.run(tensors, {input_name: x})
        for name, v in zip(tensors, values):
            v = np.asarray(v, dtype=np.float32)
            ch = np.abs(v).max(axis=tuple(i for i in range(v.ndim) if i != 1)) if v.ndim >= 2 else np.abs(v).reshape(1)
            a = acc.setdefault(name, {"min": np.inf, "max": -np.inf, "ch": np.zeros_like(ch)})
            a["min"], a["max"] = min(a["min"], float(v.min())), max(a["max"], float(v.max()))
            a["ch"] = np.maximum(a["ch"], ch)
    result = {}
    for name, a in acc.items():
        ch = a["ch"]
        live = ch[ch > 0]
        spread = float(live.max() / np.median(live)) if live.size else 1.0
        span = a["max"] - min(a["min"], 0.0)  # the asymmetric 8-bit range [min(lo, 0), hi]
        step = span / 255.0 if span > 0 else 1.0
        levels = ch / step if ch.size else ch
        result[name] = {"a_min": a["min"], "a_max": a["max"], "a_channel_spread": spread,
                        "a_starved_frac": float(np.mean(levels < STARVED_LEVELS)) if ch.size else 0.0,
                        "a_channels": int(ch.size)}
    return result


def range_stats(onnx_path: Path, calib: Any, *, num_samples: int = 128, module_names: set[str] | None = None,
                layers: list[QuantLayer] | None = None) -> list[dict[str, Any]]:
    """One row per weighted layer: node, module, weight and input-activation statistics, and `flags`."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    layers = layers if layers is not None else quantizable_layers(model, module_names)
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    acts = activation_stats(Path(onnx_path), sorted({layer.input for layer in layers}), calib, num_samples=num_samples) \
        if calib is not None else {}
    rows = []
    for layer in layers:
        row: dict[str, Any] = {"node": layer.node, "module": layer.module, "op_type": layer.op_type}
        if layer.weight in inits:
            w = numpy_helper.to_array(inits[layer.weight])
            row.update(weight_stats(w, _out_axis(nodes[layer.node], layer.op_type)))
        row.update(acts.get(layer.input, {}))
        rows.append(row)
    flag_outliers(rows)
    return rows


def flag_outliers(rows: list[dict[str, Any]]) -> None:
    """Add `flags` (list of short reasons) to each row, in place."""
    medians = {}
    for key in LIMITS:
        vals = [r[key] for r in rows if r.get(key) is not None]
        medians[key] = float(np.median(vals)) if vals else None
    for r in rows:
        flags = []
        for key, limit in LIMITS.items():
            v = r.get(key)
            if v is None:
                continue
            med = medians[key]
            outlier = med is not None and med > 0 and v > OUTLIER_FACTOR * med and v > 0.25 * limit
            if v > limit or outlier:
                why = f"> {limit:g}" if v > limit else f"{v / med:.1f}x the model's median"
                flags.append(f"{key} {v:.3g} ({why})")
        r["flags"] = flags
