"""ONNX graph access shared by the range repairs: initializers as arrays (written back as private copies, since
onnxsim merges equal constants between nodes), who consumes a tensor, node attributes, and float32 runs of a
model on calibration samples with chosen intermediate tensors as extra outputs."""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from edgerep.errors import UserError

# Samples the float checks and the data-driven statistics read: enough for stable means on small images.
DEFAULT_SAMPLES = 128
_DYNAMIC_BATCH = 16


class Graph:
    """A ModelProto with the lookups the repairs need. Initializer edits go through `set_array`, which gives
    the node its own copy when another node reads the same initializer."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.graph = model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.outputs = {o.name for o in self.graph.output}
        self.consumers: dict[str, list[Any]] = {}
        self.users: dict[str, int] = {}
        for node in self.graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
                    self.users[name] = self.users.get(name, 0) + 1

    def array(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        t = self.inits.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def set_array(self, node: Any, index: int, value: np.ndarray, *, suffix: str) -> None:
        """Write `value` (cast to float32) as `node`'s input `index`, adding the input when it is missing."""
        from onnx import numpy_helper

        value = np.asarray(value, dtype=np.float32)
        name = node.input[index] if index < len(node.input) else ""
        if name and name in self.inits and self.users.get(name, 0) <= 1:
            self.inits[name].CopyFrom(numpy_helper.from_array(value, name))
            return
        new = f"{node.name or node.op_type}.{suffix}"
        while new in self.inits:
            new += "_"
        tensor = numpy_helper.from_array(value, new)
        self.graph.initializer.append(tensor)
        self.inits[new] = self.graph.initializer[-1]
        self.users[new] = 1
        if name:
            self.users[name] -= 1
        while len(node.input) <= index:
            node.input.append("")
        node.input[index] = new


def attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def model_input(model: Any) -> tuple[str, int | None]:
    """(name, fixed batch or None) of the model's one real input (initializers listed as inputs excluded)."""
    from edgerep.files.onnx_files import graph_inputs

    name, dims = graph_inputs(model)[0]
    return name, dims[0] if dims else None


def calib_batches(model: Any, calib: Any, num_samples: int) -> Iterator[np.ndarray]:
    from edgerep.data.sources import sample_batches

    _, batch = model_input(model)
    yield from sample_batches(calib, batch or _DYNAMIC_BATCH, num_samples, exact=batch is not None)


def session(model: Any, extra_outputs: list[str] | tuple[str, ...] = ()) -> Any:
    """A float32 CPU session of `model` with `extra_outputs` (intermediate tensors) added as graph outputs; no
    graph optimization, so every tensor read exists as it is in the file and both sides of a check run alike."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in model.graph.output}
    for name in extra_outputs:
        if name not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_outputs(model: Any, calib: Any, num_samples: int) -> list[np.ndarray]:
    """Every graph output of `model` on the calibration samples, concatenated over batches."""
    sess = session(model)
    name, _ = model_input(model)
    per: list[list[np.ndarray]] = []
    for x in calib_batches(model, calib, num_samples):
        outs = sess.run(None, {name: x})
        per = per or [[] for _ in outs]
        for acc, out in zip(per, outs):
            acc.append(np.asarray(out, dtype=np.float64))
    if not per:
        raise UserError(f"--calib {getattr(calib, 'path', '')}: {getattr(calib, 'num_samples', 0)} samples, not one "
                        f"batch of the model's for the range repairs; pass more calibration data")
    return [np.concatenate(acc) for acc in per]


def output_difference(before: list[np.ndarray], after: list[np.ndarray]) -> dict[str, float]:
    """Max absolute error over every output, and that error relative to the largest reference magnitude."""
    abs_err = max((float(np.max(np.abs(a - b))) if a.size else 0.0) for a, b in zip(before, after))
    scale = max((float(np.max(np.abs(b))) if b.size else 0.0) for b in before)
    return {"max_abs_err": abs_err, "max_rel_err": abs_err / scale if scale > 0 else abs_err}


def channel_spread(absmax: np.ndarray) -> float:
    """max / median of the live channels' |w|max (quant.ranges.weight_stats' w_channel_spread)."""
    live = absmax[absmax > 0]
    return float(live.max() / np.median(live)) if live.size else 1.0
