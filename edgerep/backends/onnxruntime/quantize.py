"""INT8 Q/DQ with ONNX Runtime's static quantizer: calibration streamed from the data, written atomically,
and the int16-saturation check of the result."""
from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgerep.backends.common import check_ignored_nodes
from edgerep.data.sources import calib_batch_count, sample_batches
from edgerep.errors import UserError
from edgerep.files.artifacts import atomic_files, companion_files
from edgerep.files.onnx_files import onnx_input, ort_pre_process, quiet_root_logger

# Weight formats of ONNX Runtime's CPU INT8 kernels (ONNX Runtime docs, quantization, "Data type selection" and
# "When to use reduce-range"): without VNNI, U8S8 uses vpmaddubsw, which adds two u8*s8 products into a
# saturating int16; 7-bit weights (reduce_range) keep every pair within 2*255*64 = 32640 <= 32767, and U8U8
# takes a non-saturating path. Either makes the integer result the same on every x86 ISA.
WEIGHT_FORMATS = {
    "s8": "int8 weights, full range (U8S8; exact only where the CPU has VNNI, AMX or is ARM64)",
    "s7": "int8 weights in 7 bits (reduce_range; no int16 saturation on any CPU)",
    "u8": "uint8 weights (U8U8; no int16 saturation on any CPU)",
}


_SATURATION_FREE = ("s7", "u8")


# Samples whose intermediate tensors ORT's calibrators hold at once (CalibStridedMinMax): bounds memory,
# since the histogram calibrators keep every intermediate output of a collect_data call.
_CALIB_CHUNK_SAMPLES = 8
_CALIB_METHODS = ("minmax", "entropy", "percentile")  # what quantize_static calibrates with


_DYNAMIC_CALIB_BATCH = 8


class _StreamingReader:
    """A CalibrationDataReader over a DataSource that never holds more than one batch.

    It implements __len__ and set_range so quantize_static's "CalibStridedMinMax" option can feed it in
    chunks (ORT calls set_range in order, so the stream just continues).
    """

    def __init__(self, calib: Any, input_name: str, batch_size: int, limit: int, exact: bool) -> None:
        self.calib, self.input_name, self.batch_size, self.limit, self.exact = calib, input_name, batch_size, limit, exact
        self.total = calib_batch_count(calib, batch_size, limit, exact=exact)
        self._stream: Iterator[np.ndarray] | None = None
        self._pos = 0
        self._end = self.total

    def __len__(self) -> int:
        return self.total

    def _restart(self) -> None:
        self._stream = sample_batches(self.calib, self.batch_size, self.limit, exact=self.exact)
        self._pos = 0

    def set_range(self, start_index: int, end_index: int) -> None:
        if self._stream is None or start_index < self._pos:
            self._restart()
        while self._stream is not None and self._pos < start_index:  # skip forward (not used by ORT's in-order loop)
            next(self._stream, None)
            self._pos += 1
        self._end = end_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._stream is None:
            self._restart()
        if self._stream is None or self._pos >= self._end:
            return None
        batch = next(self._stream, None)
        if batch is None:
            return None
        self._pos += 1
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._stream = None


def _stride(total: int, batch_size: int) -> int:
    """The largest chunk (in batches) dividing `total` that keeps at most _CALIB_CHUNK_SAMPLES samples."""
    cap = max(1, _CALIB_CHUNK_SAMPLES // batch_size)
    return max(d for d in range(1, min(cap, total) + 1) if total % d == 0)


def quantize_qdq(onnx_path: Path, out_path: Path, calib: Any, *, method: str = "minmax", num_samples: int = 300,
                 ignored_nodes: list[str] | None = None, head_float_nodes: list[str] | None = None,
                 activation_type: str = "uint8",
                 symmetric_activations: bool = False, per_channel: bool = True, weights: str = "s8",
                 extra_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Quantize an ONNX model to INT8 Q/DQ with ONNX Runtime's static quantizer, written atomically.

    Weights QInt8 per output channel; activations QUInt8 (ONNX Runtime's fast U8S8 path on x86 CPUs) or
    QInt8 (`activation_type="int8"`, with `symmetric_activations=True` for TensorRT). Calibration streams
    `num_samples` samples of `calib` (MinMax, Entropy or Percentile). `ignored_nodes` and `head_float_nodes`
    (ONNX node names: the user's, and the default policy's from quant.float_policy) stay in float. `weights`: a
    key of WEIGHT_FORMATS. Returns the settings used, for the sidecar.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in _CALIB_METHODS:
        raise UserError(f"--calib-method {method}: not one of {', '.join(_CALIB_METHODS)}")
    if weights not in WEIGHT_FORMATS:
        raise UserError(f"int8_weights {weights!r}: use one of {', '.join(WEIGHT_FORMATS)}")
    if activation_type not in ("uint8", "int8"):
        raise UserError(f"activation_type {activation_type!r}: use 'uint8' or 'int8'")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    ignored = check_ignored_nodes(onnx_path, ignored_nodes)
    tail = [n for n in check_ignored_nodes(onnx_path, head_float_nodes) if n not in ignored]  # quant.float_policy's
    input_name, shape = onnx_input(onnx_path)
    fixed = shape[0] if shape else None
    exact = fixed is not None
    batch = fixed if fixed is not None else _DYNAMIC_CALIB_BATCH
    reader = _StreamingReader(calib, input_name, batch, num_samples, exact)
    if len(reader) == 0:
        raise UserError(f"--calib {calib.path}: {calib.num_samples} samples, fewer than the model's batch of {batch}")
    stride = _stride(len(reader), batch)
    external = bool(companion_files(onnx_path))
    options = {"CalibStridedMinMax": stride, "ActivationSymmetric": symmetric_activations, **(extra_options or {})}
    method_enum = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}[method]
    work = Path(tempfile.mkdtemp(prefix=".ortq-", dir=out_path.parent if out_path.parent.exists() else None))
    try:
        pre_processed = ort_pre_process(onnx_path, work / "pre.onnx", external=external)
        # Symbolic shape inference fails on some graphs (a detector's dynamic-batch decode): the model is then
        # quantized as it is, which ORT handles; the sidecar records it.
        source = work / "pre.onnx" if pre_processed else onnx_path
        if ignored:
            source = _unshare_initializers(source, work / "unshared.onnx", set(ignored), external)
        with atomic_files(out_path) as tmp, contextlib.redirect_stdout(io.StringIO()), quiet_root_logger():
            # ORT's histogram collector prints progress on stdout, which would corrupt `--json` output.
            quantize_static(
                str(source), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                weight_type=QuantType.QUInt8 if weights == "u8" else QuantType.QInt8, reduce_range=weights == "s7",
                activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
                calibrate_method=method_enum, nodes_to_exclude=ignored + tail, use_external_data_format=external,
                extra_options=options,
            )
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"onnxruntime INT8: quantize_static failed on {onnx_path.name} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"format": "QDQ", "weights": f"{'uint8' if weights == 'u8' else 'int8'} "
                                       f"{'per-channel' if per_channel else 'per-tensor'}"
                                       f"{', 7-bit (reduce_range)' if weights == 's7' else ''}",
            "int8_weights": weights,
            "activations": activation_type, "symmetric_activations": symmetric_activations,
            "calib_method": method, "calib_samples": min(int(calib.num_samples), num_samples),
            "calib_batch": batch, "ignored_nodes": ignored,
            # a detector's prediction convs and decode, kept in float by default (quant.float_policy)
            "float_head_nodes": len(tail), "shape_inference": pre_processed}


def int16_saturation_check(qdq_path: Path) -> dict[str, Any]:
    """Whether any u8*s8 weight pair of a Q/DQ model can overflow int16 on a CPU without VNNI.

    A static bound, not a run: activations are u8 (0..255), so the worst pair sum of one output channel is
    255 * (the two largest |w| of that channel). Hand-written because no runtime reports it; it proves a
    7-bit model ISA-independent and names the layers of a full-range model at risk."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq_path))
    inits = {t.name: t for t in model.graph.initializer}
    at_risk: list[str] = []
    worst = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[0]])
        if w.dtype != np.int8 or w.ndim < 2:
            continue  # uint8 weights take the non-saturating U8U8 path; int32 biases are not multiplied
        # Conv weights are (Cout, Cin/g, k...): one row per output channel. A 2-D MatMul/Gemm weight may be
        # (K, N) or (N, K), so take the two largest of the whole tensor: a bound that can only over-estimate.
        flat = np.abs(w.reshape(w.shape[0], -1) if w.ndim > 2 else w.reshape(1, -1)).astype(np.int32)
        top2 = np.sort(flat, axis=1)[:, -2:].sum(axis=1) if flat.shape[1] > 1 else flat[:, 0]
        bound = int(255 * top2.max())
        worst = max(worst, bound)
        if bound > 32767:
            at_risk.append(node.input[0])
    return {"worst_pair_sum": worst, "int16_max": 32767, "weights_at_risk": len(at_risk),
            "first_at_risk": at_risk[:5], "isa_independent": not at_risk}


def _unshare_initializers(path: Path, out: Path, nodes: set[str], external: bool) -> Path:
    """Give ignored nodes their own copy of initializers they share with quantized nodes.

    onnxsim merges identical constants (e.g. equal folded biases), and quantize_static replaces a shared
    initializer by its dequantized version for every consumer, so an ignored node would silently get an
    INT32-quantized bias. A private copy keeps the ignored node's weights exactly in float.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    changed = False
    for node in graph.node:
        if node.name not in nodes:
            continue
        for i, name in enumerate(node.input):
            if name in inits and users[name] > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__float_{len(graph.initializer)}"
                graph.initializer.append(copy)
                node.input[i] = copy.name
                users[name] -= 1
                changed = True
    if not changed:
        return path
    onnx.save_model(model, str(out), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=out.name + ".data")
    return out
