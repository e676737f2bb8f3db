"""Lint an ONNX model for one TensorRT version's ONNX parser, before anyone reaches a device.

What it checks, each finding naming the node and a fix:
  * the opset against the parser's range (and the profile's cap);
  * operators the parser lists as unsupported, or does not list at all, and custom-domain operators;
  * the parser's published restrictions on attributes and inputs (operators.md "Restrictions" column),
    checked where they can be checked statically; the others are shown as notes on the nodes they concern;
  * INT64 weights (TensorRT 8.x casts them down to INT32; values beyond INT32 break);
  * dynamic dimensions without an optimization profile, and a DLA core with a dynamic batch (DLA is static);
  * per-channel Q/DQ below opset 13 (the operators' `axis` is from 13), in the graph or from int8_mode qdq.
The tables come from edgerep/backends/tensorrt/data/onnx_parser_ops.json (onnx/onnx-tensorrt docs/operators.md at the
commits NVIDIA's TensorRT release branches pin; see its `source` per version).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgerep.backends.tensorrt.versions import OpsTable, Version, int8_modes, ops_table, parse_version, version_str
from edgerep.errors import UserError
from edgerep.files.onnx_files import model_opset

ERROR, WARNING, INFO = "error", "warning", "info"
_SEVERITY_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}


@dataclass
class Finding:
    severity: str  # error | warning | info
    code: str  # short stable id, e.g. "unsupported-op"
    node: str  # the ONNX node name (or "<model>", "<input NAME>", "<profile>")
    op_type: str
    message: str
    fix: str


@dataclass
class LintReport:
    model: str
    trt_version: str
    table: str  # the parser table used
    opset: int | None
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    def exit_code(self) -> int:
        return 1 if self.errors else 0

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "trt_version": self.trt_version, "table": self.table, "opset": self.opset,
                "source": self.source, "notes": self.notes, "errors": len(self.errors),
                "warnings": len(self.warnings), "findings": [asdict(f) for f in self.findings]}


# --- the graph, as lint needs it -----------------------------------------------------------------


class _Graph:
    def __init__(self, model: Any) -> None:
        g = model.graph
        self.model = model
        self.initializers = {t.name: t for t in g.initializer}
        self.producers: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = {}
        for node in g.node:
            for out in node.output:
                if out:
                    self.producers[out] = node
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)
        self.graph_outputs = {o.name for o in g.output}

    def is_constant(self, name: str) -> bool:
        """An initializer, a Constant node's output, or a DequantizeLinear of a constant (Q/DQ weights)."""
        if name in self.initializers:
            return True
        node = self.producers.get(name)
        if node is None:
            return False
        if node.op_type == "Constant":
            return True
        if node.op_type in ("DequantizeLinear", "QuantizeLinear", "Identity", "Cast"):
            return bool(node.input) and self.is_constant(node.input[0])
        return False

    def constant_value(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def used(self, name: str) -> bool:
        return bool(name) and (name in self.consumers or name in self.graph_outputs)


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def node_label(node: Any, index: int) -> str:
    if node.name:
        return node.name
    out = node.output[0] if node.output else "?"
    return f"<{node.op_type} #{index} -> {out}>"


# --- restriction rules: (op types, restriction text pattern, checker) ----------------------------
# A checker returns (message, fix) when the node breaks the restriction, else None. A restriction the
# table states for an op in the model that no rule checks becomes an "info" note with its text.

Check = Callable[[Any, _Graph, str], "tuple[str, str] | None"]


def _input_must_be_constant(index: int, what: str) -> Check:
    def check(node: Any, g: _Graph, text: str) -> tuple[str, str] | None:
        if len(node.input) > index and node.input[index] and not g.is_constant(node.input[index]):
            return (f"input `{what}` ({node.input[index]}) is computed at run time; the parser needs it constant",
                    "export with a static shape and run the simplifier (onnxsim folds it into an initializer)")
        return None
    return check


def _spatial_2d_3d(node: Any, g: _Graph, text: str) -> tuple[str, str] | None:
    kernel = _attr(node, "kernel_shape")
    rank = len(kernel) if kernel else None
    if rank is None and len(node.input) > 1 and node.input[1] in g.initializers:
        rank = len(g.initializers[node.input[1]].dims) - 2
    if rank is not None and rank not in (2, 3):
        return (f"{rank}D {node.op_type}; the parser takes 2D or 3D only",
                "reshape the 1D case to 2D (N,C,1,L) in the model before export")
    return None


def _no_indices_output(node: Any, g: _Graph, text: str) -> tuple[str, str] | None:
    if len(node.output) > 1 and g.used(node.output[1]):
        return ("uses the `Indices` output of MaxPool, which the parser does not produce",
                "do not use return_indices=True in the exported model")
    return None


def _dilations_ones(node: Any, g: _Graph, text: str) -> tuple[str, str] | None:
    d = _attr(node, "dilations")
    if d and any(int(x) != 1 for x in d):
        return (f"dilations {list(d)}; the parser needs none or all ones", "use an undilated pooling")
    return None


def _zero_point_zero(index: int) -> Check:
    def check(node: Any, g: _Graph, text: str) -> tuple[str, str] | None:
        if len(node.input) > index and node.input[index]:
            zp = g.constant_value(node.input[index])
            if zp is None or np.any(zp != 0):
                return ("zero point is not 0 (asymmetric quantization); TensorRT quantization is symmetric",
                        "quantize with symmetric activations and weights (edgerep's Q/DQ for TensorRT does)")
        return None
    return check


def _backticked(text: str, label: str) -> set[str] | None:
    m = re.search(re.escape(label) + r"[^:]*:\s*(.*?)(?:\.;|\.$|;|$)", text)
    if not m:
        return None
    return set(re.findall(r"`([^`]+)`", m.group(1)))


def _resize(node: Any, g: _Graph, text: str) -> tuple[str, str] | None:
    problems = []
    checks = [("coordinate_transformation_mode", "half_pixel", "Supported resize transformation modes"),
              ("mode", "nearest", "Supported resize modes"),
              ("nearest_mode", "round_prefer_floor", "Supported nearest modes"),
              ("keep_aspect_ratio_policy", "stretch", "Supported aspect ratio policy")]
    for attr, default, label in checks:
        allowed = _backticked(text, label)
        value = _attr(node, attr, default)
        if allowed and value not in allowed:
            problems.append(f"{attr}={value!r} (supported: {', '.join(sorted(allowed))})")
    if "Antialiasing is not supported" in text and int(_attr(node, "antialias", 0) or 0) != 0:
        problems.append("antialias=1")
    if problems:
        return ("; ".join(problems), "use bilinear/nearest interpolation with half_pixel or align_corners in the model")
    return None


def _topk_sorted(node: Any, g: _Graph, text: str) -> tuple[str, str] | None:
    if int(_attr(node, "sorted", 1)) != 1:
        return ("sorted=0; the parser needs sorted=1", "export TopK with sorted=True")
    return None


def _scatter_reduction(node: Any, g: _Graph, text: str) -> tuple[str, str] | None:
    red = _attr(node, "reduction", "none")
    if red not in (None, "none"):
        return (f"reduction={red!r} is not supported", "replace the reducing scatter with supported ops")
    return None


def _first_output_only(node: Any, g: _Graph, text: str) -> tuple[str, str] | None:
    if any(g.used(o) for o in node.output[1:]):
        return ("uses outputs beyond the first (`Y`)", "use only the normalized output")
    return None


def _einsum(node: Any, g: _Graph, text: str) -> tuple[str, str] | None:
    eq = str(_attr(node, "equation", ""))
    if "..." in eq and "Ellipsis" in text:
        return (f"equation {eq!r} uses an ellipsis", "write the equation with explicit indices")
    return None


def _constant_attrs(node: Any, g: _Graph, text: str) -> tuple[str, str] | None:
    bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
    if bad:
        return (f"Constant with {', '.join(bad)}", "use a dense numeric constant")
    return None


_REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
               "ReduceProd", "ReduceSum", "ReduceSumSquare")

RULES: list[tuple[tuple[str, ...], str, Check]] = [
    (("Squeeze", "Unsqueeze") + _REDUCE_OPS, r"`axes` must be", _input_must_be_constant(1, "axes")),
    (("Slice", "Pad"), r"`axes` must be", _input_must_be_constant(3, "axes")),
    (("CumSum",), r"`axis` must be", _input_must_be_constant(1, "axis")),
    (("TopK",), r"`K` input must be an initializer", _input_must_be_constant(1, "K")),
    (("TopK",), r"`sorted` must be 1", _topk_sorted),
    (("Conv", "ConvTranspose"), r"Weights `W` must be an initiali", _input_must_be_constant(1, "W")),
    (("Conv", "ConvTranspose", "AveragePool", "MaxPool"), r"2D or 3D", _spatial_2d_3d),
    (("MaxPool",), r"`Indices` output tensor unsupported", _no_indices_output),
    (("MaxPool", "AveragePool", "LpPool"), r"`dilations` must be empty or all ones", _dilations_ones),
    (("DequantizeLinear",), r"`x_zero_point` must be zero", _zero_point_zero(2)),
    (("QuantizeLinear",), r"`y_zero_point` must be 0", _zero_point_zero(2)),
    (("Resize",), r"Supported resize", _resize),
    (("ScatterND",), r"`reduction`", _scatter_reduction),
    (("LayerNormalization",), r"Only the first output", _first_output_only),
    (("Einsum",), r"Ellipsis", _einsum),
    (("Constant",), r"`sparse_value`", _constant_attrs),
]


# --- the lint ------------------------------------------------------------------------------------


def lint_onnx(model: Any, trt_version: str | Version, *, profile_opset: int | None = None,
              dynamic_batch: bool = False, int8_mode: str | None = None, precisions: list[str] | None = None,
              dla_core: int | None = None, compute_capability: str | None = None) -> LintReport:
    """Lint `model` (an onnx.ModelProto or a path) for TensorRT `trt_version`'s ONNX parser.

    `profile_opset` is the profile's opset cap; `dynamic_batch` says an optimization profile will be made for
    the batch axis; `int8_mode`/`precisions`/`dla_core`/`compute_capability` let it flag profile settings that
    version or device cannot build well. A model whose external data points outside its folder is refused."""
    import onnx

    path = None
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise UserError(f"--model {path}: file not found")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise UserError(f"--model {path}: not a readable ONNX file ({type(exc).__name__})") from None
        name = str(path)
    else:
        name = model.graph.name or "<model>"
    v = parse_version(trt_version) if isinstance(trt_version, str) else trt_version
    table = ops_table(v)
    opset = model_opset(model)
    report = LintReport(model=name, trt_version=version_str(v), table=table.key, opset=opset,
                        notes=list(table.notes), source=table.source)
    if path is not None:
        _check_external_data(report, model, path)
    _check_opset(report, table, opset, profile_opset)
    _check_profile(report, v, int8_mode, precisions, dla_core, compute_capability, dynamic_batch=dynamic_batch,
                   profile_opset=profile_opset)
    g = _Graph(model)
    _check_nodes(report, table, g)
    _check_qdq_opset(report, g, opset)
    _check_int64(report, table, g)
    _check_dynamic(report, model, dynamic_batch)
    report.findings.sort(key=lambda f: _SEVERITY_ORDER[f.severity])
    return report


def _check_opset(report: LintReport, table: OpsTable, opset: int | None, profile_opset: int | None) -> None:
    if opset is None:
        report.findings.append(Finding(ERROR, "no-opset", "<model>", "", "the model imports no default ONNX opset",
                                       "re-export the model with torch.onnx.export"))
        return
    if table.max_opset is not None and opset > table.max_opset:
        report.findings.append(Finding(
            ERROR, "opset-too-new", "<model>", "",
            f"opset {opset} is newer than the TensorRT {report.trt_version} parser's maximum, opset {table.max_opset}",
            f"re-export with opset {min(table.max_opset, profile_opset or table.max_opset)} (the target profile's opset)"))
    elif profile_opset is not None and opset > profile_opset:
        report.findings.append(Finding(
            WARNING, "opset-above-profile", "<model>", "",
            f"opset {opset} is above the profile's cap, opset {profile_opset}",
            f"re-export with opset {profile_opset}"))
    if table.min_opset is not None and opset < table.min_opset:
        report.findings.append(Finding(
            ERROR, "opset-too-old", "<model>", "",
            f"opset {opset} is older than the parser's minimum, opset {table.min_opset}",
            f"re-export with opset >= {table.min_opset}"))


# Compute capabilities with native INT8 (DP4A from 6.1, tensor cores from 7.2/7.5): 6.1 and >= 7.0.
# Maxwell (5.x, Jetson Nano 5.3), Pascal 6.0 (P100) and 6.2 (Jetson TX2) have none: TensorRT builds INT8 there
# anyway with "Int8 support requested on hardware without native Int8 support, performance will be negatively
# affected" (TensorRT support matrix, hardware precision table; NVIDIA/TensorRT#3157: "Pascal does not natively
# support INT8").
def has_native_int8(compute_capability: str | None) -> bool | None:
    """None when unknown."""
    if not compute_capability:
        return None
    try:
        major, minor = (int(x) for x in str(compute_capability).split(".")[:2])
    except ValueError:
        return None
    return (major, minor) == (6, 1) or major >= 7


def _check_profile(report: LintReport, v: Version, int8_mode: str | None, precisions: list[str] | None,
                   dla_core: int | None, compute_capability: str | None = None, *, dynamic_batch: bool = False,
                   profile_opset: int | None = None) -> None:
    from edgerep.backends.tensorrt.versions import api_features, dla_support

    wants_int8 = precisions is None or "int8" in precisions
    if dla_core is not None and dynamic_batch:
        report.findings.append(Finding(
            ERROR, "dla-dynamic", "<profile>", "",
            f"dynamic_batch = true with dla_core = {dla_core}: the DLA runs static shapes only (the profile's min, "
            f"opt and max must be equal; TensorRT docs, DLA Supported Layers and Restrictions), so the network would "
            f"run on the GPU (or fail to build) while the engine is labelled DLA",
            "set dynamic_batch = false (export with a fixed batch), or drop dla_core for GPU engines"))
    if wants_int8 and int8_mode == "qdq" and profile_opset is not None and profile_opset < QDQ_AXIS_OPSET:
        report.findings.append(Finding(
            ERROR, "qdq-per-channel-opset", "<profile>", "",
            f"int8_mode = 'qdq' at opset {profile_opset}: the Q/DQ model's weights are quantized per channel, and "
            f"QuantizeLinear/DequantizeLinear take a per-channel `axis` only from opset {QDQ_AXIS_OPSET}",
            f"set opset >= {QDQ_AXIS_OPSET} in the profile, or int8_mode = \"calibrate\" (TensorRT 8.x - 10.x)"))
    if int8_mode and wants_int8 and int8_mode not in int8_modes(v):
        report.findings.append(Finding(
            ERROR, "int8-mode", "<profile>", "",
            f"int8_mode = {int8_mode!r} needs implicit quantization, removed in TensorRT 11",
            "set int8_mode = \"qdq\" in the profile's [tensorrt] table"))
    if dla_core is not None:
        ok, source = dla_support(v)
        if not ok:
            report.findings.append(Finding(
                ERROR, "dla", "<profile>", "", f"TensorRT {version_str(v)} does not support DLA ({source})",
                "remove dla_core from the profile, or use a TensorRT release with DLA (8.x, 10.0 - 10.7, 11.4.1+)"))
        elif wants_int8 and int8_mode == "qdq" and api_features(v).calibrators:
            report.findings.append(Finding(
                ERROR, "qdq-on-dla", "<profile>", "",
                f"int8_mode = 'qdq' with dla_core = {dla_core}: the DLA runs INT8 only from a calibration cache "
                f"(implicit quantization) on TensorRT {version_str(v)}, so the Q/DQ layers would run on the GPU "
                f"while the engine is labelled DLA (NVIDIA/TensorRT#2222)",
                "set int8_mode = \"calibrate\" (the cache carries the same host ranges), or drop dla_core"))
    if wants_int8 and has_native_int8(compute_capability) is False:
        report.findings.append(Finding(
            WARNING, "int8-emulated", "<profile>", "",
            f"compute capability {compute_capability} has no native INT8: TensorRT builds INT8 anyway ('Int8 support "
            f"requested on hardware without native Int8 support') and the engine is slower than FP16",
            "build FP16 for this device (drop int8 from the profile's precisions)"))


QDQ_AXIS_OPSET = 13  # QuantizeLinear/DequantizeLinear-13 added `axis` (per-channel scales); 10 took scalars only


def _check_qdq_opset(report: LintReport, g: _Graph, opset: int | None) -> None:
    """Per-channel Q/DQ (an `axis` attribute, or a scale with more than one value) below opset 13, where the
    operators' scale must be a scalar: onnx's checker and TensorRT's parser (which reads the opset's schema)
    refuse the node."""
    if opset is None or opset >= QDQ_AXIS_OPSET:
        return
    for i, node in enumerate(g.model.graph.node):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.domain not in ("", "ai.onnx"):
            continue
        scale = g.constant_value(node.input[1]) if len(node.input) > 1 else None
        per_channel = _attr(node, "axis") is not None or (scale is not None and scale.size > 1)
        if per_channel:
            report.findings.append(Finding(
                ERROR, "qdq-per-channel-opset", node_label(node, i), node.op_type,
                f"per-channel {node.op_type} at opset {opset}; a per-channel axis exists from opset {QDQ_AXIS_OPSET}",
                f"re-export and quantize at opset >= {QDQ_AXIS_OPSET}, or quantize per tensor"))


def _check_nodes(report: LintReport, table: OpsTable, g: _Graph) -> None:
    noted: set[tuple[str, str]] = set()
    for i, node in enumerate(g.model.graph.node):
        label, op = node_label(node, i), node.op_type
        if node.domain not in ("", "ai.onnx"):
            report.findings.append(Finding(
                ERROR, "custom-op", label, op,
                f"operator {node.domain}::{op} is not an ONNX operator; the parser needs a TensorRT plugin for it",
                "export without custom operators, or register a plugin on the device"))
            continue
        if op in table.unsupported:
            report.findings.append(Finding(
                ERROR, "unsupported-op", label, op,
                f"{op} is not supported by the TensorRT {report.trt_version} ONNX parser (operators.md, table {table.key})",
                _replacement_hint(op)))
            continue
        if op not in table.supported:
            report.findings.append(Finding(
                ERROR, "unknown-op", label, op,
                f"{op} is not in the TensorRT {report.trt_version} parser's operator list (table {table.key})",
                "re-export with the profile's opset so the exporter uses older operators, or target a newer TensorRT"))
            continue
        text = table.restrictions.get(op)
        if not text:
            continue
        checked = False
        for ops, pattern, check in RULES:
            if op in ops and re.search(pattern, text):
                checked = True
                result = check(node, g, text)
                if result:
                    report.findings.append(Finding(ERROR, "restriction", label, op, result[0], result[1]))
        if not checked and (op, text) not in noted:
            noted.add((op, text))
            severity = WARNING if "ignored" in text else INFO
            report.findings.append(Finding(severity, "restriction-note", label, op,
                                           f"parser restriction (not checked here): {text}",
                                           "check this node by hand if the build fails"))


def _replacement_hint(op: str) -> str:
    hints = {
        "Mod": "replace x % y by x - floor(x / y) * y in the model",
        "NonZero": "avoid data-dependent shapes (torch.nonzero / boolean masks); use torch.where",
        "OneHot": "build the one-hot with torch.eye(n)[index] (a Gather) instead of F.one_hot",
        "Reciprocal": "write 1 / x as a Div",
        "RoiAlign": "target a newer TensorRT or use the RoiAlign plugin",
        "Hardmax": "use ArgMax and a Gather, or target TensorRT 10",
        "IsInf": "compare with abs(x) == inf via Equal",
        "MeanVarianceNormalization": "write it as ReduceMean / Sub / Div",
        "Unique": "move the unique step to post-processing",
        "Det": "move the determinant to post-processing",
        "LayerNormalization": "export with opset <= 16 so LayerNorm becomes ReduceMean/Sub/Pow/Sqrt/Div, or target TensorRT 10",
    }
    return hints.get(op, "replace the operator in the model, move it to post-processing, or target a newer TensorRT")


def _check_int64(report: LintReport, table: OpsTable, g: _Graph) -> None:
    from onnx import TensorProto, numpy_helper

    if table.int64_native:
        return
    small = 0
    for name, init in g.initializers.items():
        if init.data_type != TensorProto.INT64:
            continue
        consumers = g.consumers.get(name, [])
        label = node_label(consumers[0], 0) if consumers else f"<initializer {name}>"
        op = consumers[0].op_type if consumers else ""
        arr = numpy_helper.to_array(init)
        i32 = np.iinfo(np.int32)
        if arr.size and (arr.max() > i32.max or arr.min() < i32.min):
            # Slice ends of INT64_MAX mean "to the end" and are clamped by the parser; other values really break.
            if op == "Slice" and np.all((arr <= i32.max) | (arr == np.iinfo(np.int64).max)) and \
                    np.all((arr >= i32.min) | (arr == np.iinfo(np.int64).min)):
                continue
            report.findings.append(Finding(
                ERROR, "int64-range", label, op,
                f"INT64 initializer {name} holds values beyond INT32, and TensorRT {report.trt_version} casts INT64 to INT32",
                "keep indices and shapes within INT32 in the model"))
        elif arr.size > 1024:
            report.findings.append(Finding(
                WARNING, "int64-weights", label, op,
                f"INT64 initializer {name} ({arr.size} values) is cast down to INT32 by the parser",
                "store the tensor as INT32 in the model"))
        else:
            small += 1
    if small:
        report.findings.append(Finding(
            INFO, "int64-small", "<model>", "",
            f"{small} small INT64 initializer(s) (shapes, axes, indices) are cast to INT32 by the parser; "
            f"their values fit, so this is harmless", "none needed"))
    for inp in g.model.graph.input:
        if inp.name in g.initializers:
            continue
        if inp.type.tensor_type.elem_type == TensorProto.INT64:
            report.findings.append(Finding(
                WARNING, "int64-input", f"<input {inp.name}>", "",
                f"graph input {inp.name} is INT64; TensorRT {report.trt_version} takes it as INT32",
                "feed INT32 on the device or make the input float"))


def _check_dynamic(report: LintReport, model: Any, dynamic_batch: bool) -> None:
    inits = {t.name for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits or not inp.type.HasField("tensor_type"):
            continue
        dims = inp.type.tensor_type.shape.dim
        for axis, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            what = d.dim_param or "?"
            if axis == 0 and dynamic_batch:
                report.findings.append(Finding(
                    INFO, "dynamic-batch", f"<input {inp.name}>", "",
                    f"dynamic batch axis ({what}); the build makes an optimization profile from the profile's batch sizes",
                    "none needed"))
                continue
            fix = ("set dynamic_batch = true in the target profile (edgerep then makes an optimization profile)"
                   if axis == 0 else "export with a fixed input size (--input-shape)")
            report.findings.append(Finding(
                ERROR, "dynamic-shape", f"<input {inp.name}>", "",
                f"axis {axis} of input {inp.name} is dynamic ({what}) and no optimization profile covers it",
                fix))


def _check_external_data(report: LintReport, model: Any, path: Path) -> None:
    """External-data tensors: a `location` must name a file inside the model's folder (an absolute path or
    `../` escaping it is how the onnx external-data path-traversal CVEs, e.g. CVE-2024-27318, start, so it is
    refused as bad input), and the file must exist and hold the bytes the tensor asks for (TensorRT's parser
    reads them on the device and fails otherwise). Only the metadata is read here, never the data."""
    from onnx.external_data_helper import _get_all_tensors

    folder = path.resolve().parent
    for tensor in _get_all_tensors(model):
        if tensor.data_location != onnx_external():
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise UserError(f"--model {path}: tensor {tensor.name!r} points its external data at {location!r}, outside "
                            f"the model's folder {folder}; refusing to read it (re-save the model with its data beside it)")
        if not target.is_file():
            report.findings.append(Finding(
                ERROR, "external-data-missing", f"<initializer {tensor.name}>", "",
                f"external data file {location} is missing (expected beside {path.name})",
                "copy the model's data file(s) next to it, or re-save with onnx.save(..., save_as_external_data=False)"))
            continue
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        if end > target.stat().st_size:
            report.findings.append(Finding(
                ERROR, "external-data-short", f"<initializer {tensor.name}>", "",
                f"external data file {location} has {target.stat().st_size} bytes, the tensor needs up to byte {end}",
                "copy the complete data file (it was truncated)"))


def onnx_external() -> int:
    from onnx import TensorProto

    return TensorProto.EXTERNAL
