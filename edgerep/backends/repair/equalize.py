"""Cross-layer equalization with bias absorption (Nagel et al., "Data-Free Quantization Through Weight
Equalization and Bias Correction", ICCV 2019) on a fused ONNX model.

Pairs: Conv A -> (Relu | nothing) -> Conv B, where the tensors between them have one consumer each and are
not graph outputs. Relu is positively homogeneous (relu(x / s) = relu(x) / s for s > 0), so dividing A's output
channel i (its weights and bias) by s_i and multiplying B's input channel i by s_i computes the same function.
With r1_i = max |W_A[i]| and r2_i = max |W_B[:, i]|, s_i = sqrt(r1_i / r2_i) gives both the range
sqrt(r1_i * r2_i): the per-channel ranges of A's weights, of B's input slices and of the activation between
them even out, so one per-tensor activation scale fits them. A conv sits in two pairs along a chain, so the
pairs are swept repeatedly until the scales stop changing (the paper iterates to convergence).

A grouped or depthwise B is handled: its input channel i is in-slice i % (C/g) of the output rows of group
i // (C/g); a grouped A needs nothing special (its output channels are scaled whole).

Bias absorption: where A's pre-ReLU output h_i never falls below c_i > 0 on the calibration data, A's bias
loses c_i and B's bias gains B's response to the constant c_i; relu(h - c) + c = relu(h) while h >= c. It is
done only into a B without padding (a constant shift through zero padding is not constant at the borders), and
is exact only for inputs whose h_i stays above the calibration minimum: the check below runs on those samples.

Everything is computed in float64 and written as float32, then checked: the equalized model against the
original, float32 ONNX Runtime on calibration samples; a relative error above TOLERANCE refuses the repair
(the original model is kept and the report says ok False).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgerep.backends.repair.graph import (
    Graph,
    attr,
    calib_batches,
    channel_spread,
    model_input,
    output_difference,
    run_outputs,
    session,
)

# The largest max |error| / max |output| the float check accepts: float32 rounding of rescaled weights gives ~1e-6.
TOLERANCE = 1e-4
MAX_SWEEPS = 100
CONVERGED = 1e-4  # stop when no scale changes by more than this factor (|log s|)


@dataclass
class Pair:
    producer: Any  # the Conv node A
    consumer: Any  # the Conv node B
    through: str  # "Relu" or "identity"
    mid: str  # A's output (before the ReLU)


def find_pairs(g: Graph) -> list[Pair]:
    """Conv -> (Relu | nothing) -> Conv pairs whose weights are initializers and whose channels line up."""
    pairs = []
    for node in g.graph.node:
        if not _is_conv(g, node):
            continue
        mid = node.output[0]
        nxt = _sole_consumer(g, mid)
        through = "identity"
        if nxt is not None and nxt.op_type == "Relu":
            through = "Relu"
            nxt = _sole_consumer(g, nxt.output[0])
        if nxt is None or not _is_conv(g, nxt) or nxt.input[0] != (mid if through == "identity" else _relu_out(g, mid)):
            continue
        wa, wb = g.array(node.input[1]), g.array(nxt.input[1])
        assert wa is not None and wb is not None
        if wa.shape[0] != wb.shape[1] * int(attr(nxt, "group", 1)):
            continue
        pairs.append(Pair(node, nxt, through, mid))
    return pairs


def _relu_out(g: Graph, mid: str) -> str:
    return g.consumers[mid][0].output[0]


def _sole_consumer(g: Graph, tensor: str) -> Any:
    users = g.consumers.get(tensor, [])
    if len(users) != 1 or tensor in g.outputs:
        return None
    return users[0]


def _is_conv(g: Graph, node: Any) -> bool:
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in g.inits:
        return False
    if len(node.input) > 2 and node.input[2] and node.input[2] not in g.inits:
        return False
    return g.array(node.input[1]).ndim >= 3  # type: ignore[union-attr]


def out_absmax(w: np.ndarray) -> np.ndarray:
    return np.abs(w.reshape(w.shape[0], -1)).max(axis=1)


def in_absmax(w: np.ndarray, groups: int) -> np.ndarray:
    """Per input channel of a conv with `groups` groups: max |w| over the rows that read it."""
    co, cig = w.shape[:2]
    v = np.abs(w.reshape(groups, co // groups, cig, -1))
    return v.max(axis=(1, 3)).reshape(groups * cig)


def scale_in(w: np.ndarray, groups: int, s: np.ndarray) -> np.ndarray:
    co, cig = w.shape[:2]
    v = w.reshape(groups, co // groups, cig, -1) * s.reshape(groups, 1, cig, 1)
    return v.reshape(w.shape)


def response_to_constant(w: np.ndarray, groups: int, c: np.ndarray) -> np.ndarray:
    """A conv's output (without bias) when input channel i is the constant c_i everywhere (no padding)."""
    co, cig = w.shape[:2]
    v = w.reshape(groups, co // groups, cig, -1) * c.reshape(groups, 1, cig, 1)
    return v.sum(axis=(2, 3)).reshape(co)


def equalize(model: Any, calib: Any, *, num_samples: int, absorb: bool = True) -> tuple[Any, dict[str, Any]]:
    """The equalized copy of `model` (or `model` itself when the float check refuses it) and the report."""
    import onnx

    work = onnx.ModelProto.FromString(model.SerializeToString())
    g = Graph(work)
    pairs = find_pairs(g)
    convs = {p.producer.name: p.producer for p in pairs} | {p.consumer.name: p.consumer for p in pairs}
    w = {name: np.asarray(g.array(n.input[1]), dtype=np.float64) for name, n in convs.items()}
    b = {name: _bias(g, n, w[name].shape[0]) for name, n in convs.items()}
    before = {name: channel_spread(out_absmax(arr)) for name, arr in w.items()}
    pair_before = [_pair_spreads(p, w) for p in pairs]
    sweeps = 0
    while sweeps < MAX_SWEEPS:
        sweeps += 1
        moved = 0.0
        for p in pairs:
            a, c = p.producer.name, p.consumer.name
            groups = int(attr(p.consumer, "group", 1))
            r1, r2 = out_absmax(w[a]), in_absmax(w[c], groups)
            s = np.ones_like(r1)
            live = (r1 > 0) & (r2 > 0)
            s[live] = np.sqrt(r1[live] / r2[live])
            w[a] = w[a] / s.reshape(-1, *([1] * (w[a].ndim - 1)))
            b[a] = b[a] / s
            w[c] = scale_in(w[c], groups, s)
            moved = max(moved, float(np.max(np.abs(np.log(s)))) if s.size else 0.0)
        if moved < CONVERGED:
            break
    for name, n in convs.items():
        g.set_array(n, 1, w[name], suffix="weight_eq")
        if _has_bias(n) or np.any(b[name] != 0):
            g.set_array(n, 2, b[name], suffix="bias_eq")
    reference = run_outputs(model, calib, num_samples) if pairs else []
    check = output_difference(reference, run_outputs(work, calib, num_samples)) if pairs else \
        {"max_abs_err": 0.0, "max_rel_err": 0.0}
    check.update(ok=check["max_rel_err"] <= TOLERANCE, tolerance=TOLERANCE, samples=min(int(calib.num_samples), num_samples))
    absorbed = 0
    if check["ok"] and absorb and pairs:
        absorbed, work, check = _absorb(work, pairs, calib, num_samples, reference, check)
    report: dict[str, Any] = {
        "pairs": [{"producer": p.producer.name, "consumer": p.consumer.name, "through": p.through,
                   "spread_before": pb[0], "spread_after": pa[0],
                   "consumer_in_spread_before": pb[1], "consumer_in_spread_after": pa[1]}
                  for p, pb, pa in zip(pairs, pair_before, [_pair_spreads(p, w) for p in pairs])],
        "layers": [{"node": name, "spread_before": before[name], "spread_after": channel_spread(out_absmax(w[name]))}
                   for name in convs],
        "sweeps": sweeps if pairs else 0, "absorbed_bias": absorbed, "float_check": check}
    if not check["ok"]:
        report["skipped"] = (f"equalized model differs from the original in float by {check['max_rel_err']:.2g} "
                             f"of the output range (> {TOLERANCE:g}); repair not applied")
        return model, report
    return work, report


def _pair_spreads(p: Pair, w: dict[str, np.ndarray]) -> tuple[float, float]:
    groups = int(attr(p.consumer, "group", 1))
    return channel_spread(out_absmax(w[p.producer.name])), channel_spread(in_absmax(w[p.consumer.name], groups))


def _has_bias(node: Any) -> bool:
    return len(node.input) > 2 and bool(node.input[2])


def _bias(g: Graph, node: Any, channels: int) -> np.ndarray:
    arr = g.array(node.input[2]) if _has_bias(node) else None
    return np.zeros(channels) if arr is None else np.asarray(arr, dtype=np.float64)


def _absorb(work: Any, pairs: list[Pair], calib: Any, num_samples: int, reference: list[np.ndarray],
            check: dict[str, Any]) -> tuple[int, Any, dict[str, Any]]:
    """Bias absorption on the equalized model; returns (channels absorbed, model, float check). Reverted
    (nothing absorbed) when it fails the float check."""
    import onnx

    targets = [p for p in pairs if p.through == "Relu" and not any(attr(p.consumer, "pads", None) or [])
               and attr(p.consumer, "auto_pad", b"NOTSET") in (b"NOTSET", b"VALID", "NOTSET", "VALID")]
    if not targets:
        return 0, work, check
    sess = session(work, [p.mid for p in targets])
    name, _ = model_input(work)
    n_out = len(work.graph.output)
    low: dict[str, np.ndarray] = {}
    for x in calib_batches(work, calib, num_samples):
        outs = sess.run(None, {name: x})[n_out:]
        for p, v in zip(targets, outs):
            m = np.asarray(v, dtype=np.float64).min(axis=tuple(i for i in range(v.ndim) if i != 1))
            low[p.mid] = np.minimum(low[p.mid], m) if p.mid in low else m
    absorbed_model = onnx.ModelProto.FromString(work.SerializeToString())
    g = Graph(absorbed_model)
    by_name = {n.name: n for n in g.graph.node}
    count = 0
    for p in targets:
        c = np.maximum(low.get(p.mid, np.zeros(1)), 0.0)
        if not np.any(c > 0):
            continue
        a, bn = by_name[p.producer.name], by_name[p.consumer.name]
        wb = np.asarray(g.array(bn.input[1]), dtype=np.float64)
        groups = int(attr(bn, "group", 1))
        g.set_array(a, 2, _bias(g, a, c.size) - c, suffix="bias_abs")
        g.set_array(bn, 2, _bias(g, bn, wb.shape[0]) + response_to_constant(wb, groups, c), suffix="bias_abs")
        count += int(np.count_nonzero(c > 0))
    if count == 0:
        return 0, work, check
    after = output_difference(reference, run_outputs(absorbed_model, calib, num_samples))
    if after["max_rel_err"] > TOLERANCE:
        return 0, work, {**check, "absorption_refused": after}
    return count, absorbed_model, {**check, **after}
