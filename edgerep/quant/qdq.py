"""Many Q/DQ variants of one model, cheaply: calibrate once, then quantize with different exclusion lists.

Sensitivity analysis quantizes a model 2N+1 times (all layers, each layer alone in float, each layer alone
quantized). Activation ranges depend only on the float model and the data, so ONNX Runtime's quantizer is
run with a calibration cache (quantize_static(calibration_cache_path=...)): the first call calibrates and
saves the ranges, the others reuse them, and every variant sees exactly the same scales.

Three styles follow the three backends' placement of quantizers:
  onnxruntime  the ONNX Runtime backend's own settings (QUInt8 asymmetric activations, per-channel QInt8
               weights, Q/DQ on inputs and outputs: what ORT fuses into QLinearConv). Excluding a node
               keeps its weights and output in float; its input stays quantized when its producer is.
  openvino     like NNCF's CPU placement: asymmetric 8-bit activations and per-channel weights, quantizers
               on the inputs of weighted ops only, so excluding a node keeps its input in float as well.
  tensorrt     TensorRT's conventions (edgerep.backends.tensorrt.qdq): symmetric INT8, Q/DQ on inputs only.
"""
from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgerep.errors import UserError
from edgerep.files.onnx_files import ort_pre_process, quiet_root_logger

STYLES = ("onnxruntime", "openvino", "tensorrt")
METHODS = ("minmax", "entropy", "percentile")
_DYNAMIC_BATCH = 8



def weights_for(style: str, profile: Any) -> str:
    """The weight format a Q/DQ variant uses: the ONNX Runtime engine's for the profile's target ISA
    (7-bit where its integer kernels could saturate), full-range int8 for the other placements."""
    if style != "onnxruntime":
        return "s8"
    from edgerep.backends.onnxruntime.isa_policy import weight_format_for
    from edgerep.cpu.isa import target_isa

    return weight_format_for(target_isa(profile))


class QdqMaker:
    """Writes Q/DQ models of `onnx_path` that differ only in which layers are quantized.

    `calib`: an edgerep DataSource; `work_dir` holds the pre-processed model and the calibration cache.
    """

    def __init__(self, onnx_path: Path, calib: Any, work_dir: Path, *, style: str = "onnxruntime",
                 method: str = "minmax", num_samples: int = 300, per_channel: bool = True,
                 weights: str = "s8") -> None:
        if style not in STYLES:
            raise UserError(f"quantization style {style!r}: use one of {', '.join(STYLES)}")
        if method not in METHODS:
            raise UserError(f"--calib-method {method}: not one of {', '.join(METHODS)}")
        self.onnx_path, self.calib, self.style = Path(onnx_path), calib, style
        self.method, self.num_samples, self.per_channel = method, int(num_samples), per_channel
        # ONNX Runtime style only: the engine's weight format for its target ISA (backends.onnxruntime.WEIGHT_FORMATS).
        self.weights = weights if style == "onnxruntime" else "s8"
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._source: Path | None = None
        self._tail: list[str] | None = None
        self._cache = self.work_dir / f"calib-{style}-{method}-{num_samples}.json"
        self._cache.unlink(missing_ok=True)  # a cache from an earlier model or data would be reused silently

    def settings(self) -> dict[str, Any]:
        return {"style": self.style, "calib_method": self.method, "calib_samples": self.num_samples,
                "per_channel": self.per_channel, "int8_weights": self.weights}

    def source(self) -> Path:
        """The model every variant is made from: shape-inferred (ORT's pre-processing, node names kept) and
        with no initializer shared between nodes, so excluding one node never changes another's weights."""
        if self._source is None:
            pre = self.work_dir / "pre.onnx"
            if not ort_pre_process(self.onnx_path, pre):  # symbolic shape inference failed: quantize as is
                shutil.copyfile(self.onnx_path, pre)
            self._source = unshare_initializers(pre, self.work_dir / "source.onnx")
        return self._source

    def tail(self) -> list[str]:
        """A detector's prediction convs and decode (quant.float_policy): kept in float, as the
        backends keep them. Read from the model once: every variant of a search excludes the same nodes."""
        if self._tail is None:
            from edgerep.quant.float_policy import detect_head_float_nodes

            self._tail = detect_head_float_nodes(self.onnx_path)
        return self._tail

    def make(self, out_path: Path, *, exclude: list[str] | tuple[str, ...] = (), only: list[str] | None = None) -> Path:
        """Quantize every weighted layer except `exclude`, or (with `only`) just the nodes in `only`."""
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        source = self.source()
        if not self._cache.is_file() and (exclude or only is not None):
            self.make(self.work_dir / "all.onnx")  # calibrate every tensor once, with nothing excluded
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {"ActivationSymmetric": False}
        activation = QuantType.QUInt8
        if self.style == "openvino":
            model = onnx.load(str(source), load_external_data=False)
            extra["OpTypesToExcludeOutputQuantization"] = sorted({n.op_type for n in model.graph.node})
        elif self.style == "tensorrt":
            from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

            from edgerep.backends.tensorrt.qdq import TRT_QUANT_OPS, trt_extra_options

            model = onnx.load(str(source), load_external_data=False)
            extra = trt_extra_options(model)
            activation = QuantType.QInt8
            registry = set(QDQRegistry) | set(QLinearOpsRegistry)
            kwargs["op_types_to_quantize"] = [op for op in TRT_QUANT_OPS if op in registry]
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[self.method]
        reader = None if self._cache.is_file() else self._reader()
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # histogram collectors print progress on stdout; quantize_static logs a hint on the root logger
        with contextlib.redirect_stdout(io.StringIO()), quiet_root_logger():
            quantize_static(str(source), str(out_path), reader, quant_format=QuantFormat.QDQ,
                            per_channel=self.per_channel, activation_type=activation,
                            weight_type=QuantType.QUInt8 if self.weights == "u8" else QuantType.QInt8,
                            reduce_range=self.weights == "s7",
                            calibrate_method=method, nodes_to_exclude=list(exclude) + self.tail(),
                            nodes_to_quantize=list(only) if only is not None else None, extra_options=extra,
                            calibration_cache_path=str(self._cache), **kwargs)
        return out_path

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Per-tensor activation ranges of the calibration (calibrating first if needed)."""
        if not self._cache.is_file():
            self.make(self.work_dir / "all.onnx")
        import json

        raw = json.loads(self._cache.read_text())["data"]

        def scalar(v: Any) -> float:  # numpy arrays are stored as {"data": [...]}, plain floats as numbers
            return float(np.asarray(v["data"] if isinstance(v, dict) else v).reshape(-1)[0])

        return {name: (scalar(t["lowest"]), scalar(t["highest"])) for name, t in raw.items()}

    def _reader(self) -> Any:
        from edgerep.data.sources import batches_reader, sample_batches
        from edgerep.files.onnx_files import onnx_input

        name, shape = onnx_input(self.onnx_path)
        calib, limit = self.calib, self.num_samples
        if bool(shape) and shape[0] is not None:
            batch = shape[0]
        else:
            # Equal batches: ORT's histogram collectors stack the batches of a tensor and fail on a short last one.
            n = min(int(calib.num_samples), limit)
            batch = next(b for b in range(_DYNAMIC_BATCH, 0, -1) if n % b == 0)
        return batches_reader(name, sample_batches(calib, batch, limit, exact=True))


def unshare_initializers(path: Path, out: Path) -> Path:
    """Give every node its own copy of initializers that several nodes use.

    onnxsim merges equal constants (e.g. two zero biases), and quantize_static rewrites a shared initializer
    for all its users at once, so a node kept in float could get another node's quantized bias. Written by
    hand: no ONNX tool splits shared initializers."""
    import onnx

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    seen: set[str] = set()
    changed = False
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name not in inits:
                continue
            if name in seen:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__{node.name or node.op_type}_{i}"
                model.graph.initializer.append(copy)
                node.input[i] = copy.name
                changed = True
            else:
                seen.add(name)
    if not changed:
        return Path(path)
    onnx.save(model, str(out))
    return Path(out)


def qdq_quantized_nodes(qdq_path: Path, nodes: list[str]) -> dict[str, bool]:
    """Whether each node of `nodes` computes in INT8 in a Q/DQ model: its weight comes through a
    DequantizeLinear (a node kept in float reads its float initializer directly)."""
    import onnx

    model = onnx.load(str(qdq_path), load_external_data=False)
    producers = {out: n for n in model.graph.node for out in n.output}
    by_name = {n.name: n for n in model.graph.node}
    result = {}
    for name in nodes:
        node = by_name.get(name)
        if node is None:
            raise KeyError(f"{name}: not a node of {Path(qdq_path).name}")
        weight = node.input[1] if len(node.input) > 1 else ""
        prod = producers.get(weight)
        result[name] = prod is not None and prod.op_type == "DequantizeLinear"
    return result
