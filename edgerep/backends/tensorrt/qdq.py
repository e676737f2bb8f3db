"""Reduced-precision ONNX models for TensorRT's explicit modes, made on the host.

* `make_qdq`: an INT8 Q/DQ model in TensorRT's conventions, by onnxruntime.quantization.quantize_static with
  the host calibration's ranges: symmetric INT8 (zero point 0, scale = amax/127), per-channel weights
  (axis 0 for Conv, output axis for MatMul/ConvTranspose), per-tensor activations, Q/DQ only on the inputs of
  the operators TensorRT runs in INT8 (outputs stay float; TensorRT fuses), float weights behind a Q->DQ pair
  (the form QAT exports and TensorRT 8.x parses), float bias. The option set follows NVIDIA ModelOpt's
  TensorRT settings for ONNX Runtime's quantizer (modelopt/onnx/quantization, `trt_guided_options`).
  It is what TensorRT builds the INT8 engine from in "qdq" mode (the only INT8 mode from TensorRT 11), and
  run in ONNX Runtime on the CPU it predicts that engine's accuracy.
* `make_fp16`: the FP16 graph (float32 inputs/outputs kept) for TensorRT 11, whose strongly typed networks take
  precision from the graph. NVIDIA's documented tool is ModelOpt AutoCast (modelopt.onnx.autocast
  .convert_to_mixed_precision; `pip install 'edgerep[modelopt]'`), which keeps in FP32 the nodes whose values on
  calibration data exceed FP16's useful range; without it, ONNX Runtime's float16 converter with the same rule
  computed here (`overflow_nodes`). Either graph is then checked: onnx.checker, and run in ONNX Runtime on the CPU
  against the FP32 model on a calibration batch (`check_fp16_graph`). The result names the tool.
* `make_qdq_fp16`: TensorRT 11's INT8 model: the Q/DQ model with its float parts in FP16 (FP16 scales: opset >= 19),
  so layers left unquantized run FP16, not FP32. AutoCast's convert_to_f16 (what ModelOpt's own INT8 quantizer
  does for high_precision_dtype="fp16") when installed, else ONNX Runtime's converter; checked the same way.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgerep.backends.tensorrt.versions import FP16_QDQ_MIN_OPSET, PER_CHANNEL_QDQ_MIN_OPSET
from edgerep.errors import UserError
from edgerep.files.onnx_files import int8_float_nodes, model_opset, quiet_root_logger

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
    opset = model_opset(model)
    if per_channel and opset is not None and opset < PER_CHANNEL_QDQ_MIN_OPSET:
        raise UserError(f"{onnx_path.name}: opset {opset} (the profile's `opset`) has no per-channel "
                        f"QuantizeLinear/DequantizeLinear (their `axis` comes with opset {PER_CHANNEL_QDQ_MIN_OPSET}); "
                        f"set opset = {PER_CHANNEL_QDQ_MIN_OPSET} or higher in the profile and rebuild")
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
                            nodes_to_exclude=int8_float_nodes(exclude, tail), calibrate_method=method,
                            extra_options=extra, **kwargs)
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


# AutoCast's default data_max (modelopt/onnx/autocast/convert.py DEFAULT_DATA_MAX: "For 512, the unit in last place
# (ULP) is 0.5"): a node whose inputs or outputs reach it on calibration data stays FP32. The fallback uses the same.
FP16_DATA_MAX = 512.0
FP16_MIN_NORMAL = float(np.finfo(np.float16).tiny)  # 6.1e-5: smaller Q/DQ scales would be FP16 subnormals
# The check of a converted graph against the FP32 model: it catches a broken conversion (overflow to inf, a cast in
# the wrong place), not FP16's rounding; the profile's fp16/int8 gates judge the engine itself.
FP16_CHECK_MIN_COSINE = 0.99


@dataclass
class Fp16Graph:
    """What made an FP16 graph and what its check found (for the sidecar and the report)."""

    path: Path
    tool: str  # "modelopt-autocast <version>" or "onnxruntime-float16 <version>"
    fp32_nodes: list[str] = field(default_factory=list)  # nodes kept in FP32 (ranges beyond FP16_DATA_MAX)
    check: dict[str, Any] = field(default_factory=dict)  # onnx.checker + ONNX Runtime vs FP32 on a batch
    clamped_scales: int = 0  # Q/DQ scales raised to FP16's smallest normal

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "tool": self.tool, "fp32_nodes": list(self.fp32_nodes), "check": dict(self.check),
                "clamped_scales": self.clamped_scales}


def autocast_available() -> str | None:
    """ModelOpt's version when modelopt.onnx.autocast imports here, else None."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import modelopt  # type: ignore[import-not-found]  # noqa: F401
            from modelopt.onnx.autocast import convert_to_mixed_precision  # type: ignore[import-not-found]  # noqa: F401
    except Exception:  # not installed, or its [onnx] dependencies are missing
        return None
    import importlib.metadata

    try:
        return importlib.metadata.version("nvidia-modelopt")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


Feeds = list[dict[str, np.ndarray]]  # calibration batches: input name -> array


def overflow_nodes(model: Any, feeds: Feeds, limit: float = FP16_DATA_MAX) -> list[str]:
    """Nodes of the FP32 `model` with a float input or output whose magnitude reaches `limit` on any of `feeds`
    (AutoCast's data_max rule), found by running every intermediate tensor out of ONNX Runtime on the CPU."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    inits = {t.name for t in probe.graph.initializer}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in present:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
                present.add(name)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    peak: dict[str, float] = {}
    for feed in feeds:
        values = {**dict(zip(names, session.run(names, feed))), **feed}
        for k, v in values.items():
            if isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.size:
                peak[k] = max(peak.get(k, 0.0), float(np.max(np.abs(v))))
    out = []
    for node in model.graph.node:
        tensors = [t for t in [*node.input, *node.output] if t and t not in inits]
        if any(peak.get(t, 0.0) >= limit for t in tensors):
            out.append(node.name)
    return out


def check_fp16_graph(half_path: Path, reference_path: Path, feeds: Feeds) -> dict[str, Any]:
    """onnx.checker on the converted graph, then both run in ONNX Runtime on the CPU on `feeds`: every output must
    be finite and have cosine >= FP16_CHECK_MIN_COSINE with the reference's (all batches together). Raises
    UserError naming the file."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(half_path), full_check=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the CPU runs FP16 nodes through inserted casts; its notes are not ours
    run: dict[str, dict[str, np.ndarray]] = {}
    for key, path in (("half", half_path), ("ref", reference_path)):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        outs = [session.run(None, feed) for feed in feeds]
        run[key] = {n: np.concatenate([np.asarray(o[i]).reshape(-1) for o in outs]) for i, n in enumerate(names)}
    cosines: dict[str, float] = {}
    for name, ref in run["ref"].items():
        got = np.asarray(run["half"][name], dtype=np.float64).ravel()
        want = np.asarray(ref, dtype=np.float64).ravel()
        if not np.all(np.isfinite(got)):
            raise UserError(f"{half_path}: output {name} is not finite in ONNX Runtime (FP16 overflow); keep the "
                            f"overflowing nodes in FP32 (pip install 'edgerep[modelopt]' for AutoCast) or use a "
                            f"TensorRT 10 profile")
        denom = float(np.linalg.norm(got) * np.linalg.norm(want))
        cosines[name] = float(np.dot(got, want) / denom) if denom > 0 else float(np.array_equal(got, want))
    worst = min(cosines, key=lambda k: cosines[k]) if cosines else None
    if worst is not None and cosines[worst] < FP16_CHECK_MIN_COSINE:
        raise UserError(f"{half_path}: output {worst} has cosine {cosines[worst]:.4f} with {reference_path.name} in "
                        f"ONNX Runtime (below {FP16_CHECK_MIN_COSINE}): the FP16 conversion broke the model; pass "
                        f"the nodes to keep in float with --ignored-nodes, install AutoCast (pip install "
                        f"'edgerep[modelopt]'), or use a TensorRT 10 profile")
    return {"onnx_checker": "ok", "onnxruntime_cpu": "ok",
            "samples": int(sum(next(iter(feed.values())).shape[0] for feed in feeds)),
            "min_cosine": round(min(cosines.values()), 6) if cosines else None}


def _save_checked(model: Any, out_path: Path) -> None:
    import onnx

    from edgerep.files.artifacts import atomic_path

    onnx.checker.check_model(model)
    with atomic_path(Path(out_path)) as partial:
        onnx.save(model, str(partial))


def _ort_half(model: Any, fp32_nodes: list[str]) -> Any:
    """ONNX Runtime's float16 converter (float32 inputs/outputs kept, `fp32_nodes` left in FP32), topologically sorted."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    half = OnnxModel(convert_float_to_float16(model, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST),
                                              node_block_list=list(fp32_nodes)))
    half.topological_sort()  # the converter appends the input Casts at the end of the node list
    return half.model


def make_fp16(onnx_path: Path, out_path: Path, feeds: Feeds | None = None, *, opset: int | None = None,
              keep_fp32: list[str] | None = None, prefer_autocast: bool = True) -> Fp16Graph:
    """The FP16 graph of `onnx_path` at `out_path` (atomic), made by AutoCast when it is installed (and
    `prefer_autocast`), else by ONNX Runtime's converter, then checked on `feeds` (check_fp16_graph).
    `keep_fp32`: node names to leave in FP32 besides those whose ranges exceed FP16_DATA_MAX. Without `feeds`,
    seeded random inputs (sample_feeds)."""
    import onnx

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if feeds is None:
        feeds = sample_feeds(onnx_path, None)[0]
    model = onnx.load(str(onnx_path))
    keep = list(keep_fp32 or [])
    modelopt_version = autocast_available() if prefer_autocast else None
    with tempfile.TemporaryDirectory(prefix="edgerep-fp16-") as tmp:
        if modelopt_version is not None:
            from modelopt.onnx.autocast import convert_to_mixed_precision  # type: ignore[import-not-found]

            calib = Path(tmp) / "calib"  # AutoCast's reference runner reads a folder of .npz files, one a batch
            calib.mkdir()
            for i, feed in enumerate(feeds):
                np.savez(calib / f"batch{i:04d}.npz", **feed)  # type: ignore[arg-type]
            with contextlib.redirect_stdout(io.StringIO()):
                half = convert_to_mixed_precision(
                    onnx_path=str(onnx_path), low_precision_type="fp16", keep_io_types=True,
                    nodes_to_exclude=[_exact(n) for n in keep], data_max=FP16_DATA_MAX,
                    calibration_data=str(calib), opset=opset or model_opset(model), providers=["cpu"])
            tool = f"modelopt-autocast {modelopt_version}"
            fp32 = _fp32_compute_nodes(half)
        else:
            fp32 = sorted(set(keep) | set(overflow_nodes(model, feeds)))
            half = _ort_half(model, fp32)
            tool = f"onnxruntime-float16 {_ort_version()}"
        _save_checked(half, out_path)
    check = check_fp16_graph(out_path, onnx_path, feeds)
    return Fp16Graph(path=out_path, tool=tool, fp32_nodes=fp32, check=check)


def make_qdq_fp16(qdq_path: Path, fp32_model: Path, out_path: Path, feeds: Feeds, *,
                  prefer_autocast: bool = True) -> Fp16Graph:
    """TensorRT 11's INT8 model: the Q/DQ model `qdq_path` with its float parts (and Q/DQ scales) in FP16, so the
    layers without Q/DQ run FP16 under strong typing. Needs opset >= FP16_QDQ_MIN_OPSET. `fp32_model` (the model
    the Q/DQ was made from) gives the ranges that keep overflowing nodes in FP32."""
    import onnx
    from onnx import numpy_helper

    qdq_path, out_path = Path(qdq_path), Path(out_path)
    model = onnx.load(str(qdq_path))
    opset = model_opset(model)
    if opset is None or opset < FP16_QDQ_MIN_OPSET:
        raise UserError(f"{qdq_path.name}: opset {opset} (the profile's `opset`) cannot hold FP16 Q/DQ scales, "
                        f"which TensorRT 11's INT8 graph needs (QuantizeLinear/DequantizeLinear take float16 from "
                        f"opset {FP16_QDQ_MIN_OPSET}); set opset = {FP16_QDQ_MIN_OPSET} or higher in the profile")
    # Scales below FP16's smallest normal would become subnormal (or 0): raise them to it (coarser, never 0).
    scale_names = {n.input[1] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    clamped = 0
    for init in model.graph.initializer:
        if init.name in scale_names and init.data_type == onnx.TensorProto.FLOAT:
            arr = numpy_helper.to_array(init)
            small = arr < FP16_MIN_NORMAL
            if np.any(small):
                clamped += int(small.sum())
                init.CopyFrom(numpy_helper.from_array(np.where(small, np.float32(FP16_MIN_NORMAL), arr)
                                                      .astype(np.float32), init.name))
    modelopt_version = autocast_available() if prefer_autocast else None
    if modelopt_version is not None:
        from modelopt.onnx.autocast import convert_to_f16  # type: ignore[import-not-found]

        with contextlib.redirect_stdout(io.StringIO()):
            half = convert_to_f16(model, low_precision_type="fp16", keep_io_types=True, opset=opset)
        tool, fp32 = f"modelopt-autocast {modelopt_version} (convert_to_f16)", _fp32_compute_nodes(half)
    else:
        names = {n.name for n in model.graph.node}
        fp32 = sorted(n for n in overflow_nodes(onnx.load(str(fp32_model)), feeds) if n in names)
        half, tool = _ort_half(model, fp32), f"onnxruntime-float16 {_ort_version()}"
    _save_checked(half, out_path)
    check = check_fp16_graph(out_path, qdq_path, feeds)
    return Fp16Graph(path=out_path, tool=tool, fp32_nodes=list(fp32), check=check, clamped_scales=clamped)


def _exact(name: str) -> str:
    """AutoCast's nodes_to_exclude are regular expressions: one that matches `name` only."""
    import re

    return f"^{re.escape(name)}$"


def _fp32_compute_nodes(model: Any) -> list[str]:
    """Nodes of a converted graph that still compute in FP32: a non-Cast node with a float32 output."""
    import onnx

    float32 = {v.name for v in [*model.graph.value_info, *model.graph.output]
               if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    return sorted(n.name for n in model.graph.node
                  if n.op_type not in ("Cast", "QuantizeLinear", "DequantizeLinear") and any(o in float32 for o in n.output))


# --- the FP16 graphs of a TensorRT 11 build, made once per input --------------------------------------------


def sample_feeds(onnx_path: Path, calib: Any, *, batches: int = 8) -> tuple[Feeds, str]:
    """Up to `batches` batches to check (and, for AutoCast, range) an FP16 conversion: from the calibration data
    when given, else seeded standard-normal inputs (weaker: real ranges differ). Returns (feeds, where from)."""
    from edgerep.backends.tensorrt.calibrate import model_input

    name, dims = model_input(Path(onnx_path))
    batch = int(dims[0]) if dims[0] else 1
    if calib is not None:
        feeds = [{name: np.ascontiguousarray(x, dtype=np.float32)}
                 for x, _ in calib.iter_batches(batch, limit=batch * batches) if x.shape[0] == batch]
        if feeds:
            return feeds[:batches], f"calibration data ({calib.sha256()[:12]})"
    rng = np.random.default_rng(0)
    shape = [batch, *[int(d) if d else 1 for d in dims[1:]]]
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(batches)], "random normal (seed 0)"


def prepare_fp16_graph(onnx_path: Path, work_dir: Path, calib: Any, *, source_sha256: str | None = None,
                       qdq_of: Path | None = None) -> dict[str, Any]:
    """For TensorRT 11: model.fp16.onnx (from `onnx_path`), or with `qdq_of` (the Q/DQ model of `onnx_path`)
    model.qdq.fp16.onnx, in `work_dir` with a sidecar naming the tool and the check; reused while its inputs and
    the tool are unchanged. Returns the sidecar body with "path"."""
    from edgerep.files.artifacts import file_sha256, read_sidecar, write_sidecar

    onnx_path = Path(onnx_path)
    src = Path(qdq_of) if qdq_of is not None else onnx_path
    out = Path(work_dir) / ("model.qdq.fp16.onnx" if qdq_of is not None else "model.fp16.onnx")
    tool_key = autocast_available() or f"ort-{_ort_version()}"
    key = {"source_sha256": source_sha256 or file_sha256(src), "calib_sha256": calib.sha256() if calib is not None else None,
           "tool_key": tool_key}
    side = read_sidecar(out)
    if side and all(side.get(k) == v for k, v in key.items()) and out.is_file():
        return {**side, "path": str(out)}
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    feeds, fed = sample_feeds(onnx_path, calib)
    if qdq_of is not None:
        graph = make_qdq_fp16(src, onnx_path, out, feeds)
    else:
        graph = make_fp16(onnx_path, out, feeds)
    body = {"kind": "onnx-qdq-fp16" if qdq_of is not None else "onnx-fp16", "precision": "int8" if qdq_of else "fp16",
            **key, "tool": graph.tool, "fp32_nodes": graph.fp32_nodes, "check": {**graph.check, "data": fed},
            "clamped_scales": graph.clamped_scales, "opset": model_opset(_load(out))}
    write_sidecar(out, body)
    return {**body, "path": str(out)}


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=False)
