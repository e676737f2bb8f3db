"""Calibration on the CPU with ONNX Runtime's calibrators, fed by an edgerep DataSource.

ONNX Runtime (onnxruntime.quantization.calibrate) runs the model, augmented to expose every float tensor,
and collects per-tensor statistics: min/max (MinMaxCalibrater), or histograms (EntropyCalibrater,
PercentileCalibrater). The ranges feed both the TensorRT calibration cache (calib_cache.py) and the Q/DQ
model (qdq.py), so the two INT8 paths use the same scales.

Data is fed a chunk at a time (collect_data per chunk; ONNX Runtime merges ranges and histograms across
calls), so the calibration set is never held in memory.

One part is our own: the entropy threshold search. ONNX Runtime's HistogramCollector.get_entropy_threshold
computes the same KL-divergence search (the method of NVIDIA's "8-bit inference with TensorRT", GTC 2017)
with Python loops over bins: about 1 s per tensor at TensorRT's 2048-bin resolution, minutes for a real
network. `entropy_threshold` below does the same arithmetic with numpy per candidate (ONNX Runtime's own
smooth_distribution and entropy functions, identical results; tests compare it with ONNX Runtime's).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgerep.errors import UserError

METHODS = ("entropy", "minmax", "percentile")
# TensorRT's entropy calibrator uses a 2048-bin histogram of |x| and 128 quantized bins. ONNX Runtime's
# histograms are two-sided over [-t, t]: 2048 bins / 128 quantized bins here is half TensorRT's resolution
# per side, chosen for time (about 0.15 s per tensor; 4096/256 takes four times as long).
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 2048, 128
PERCENTILE_BINS, PERCENTILE = 2048, 99.99
CHUNK_SAMPLES = 8  # samples per collect_data call: the histogram calibrators hold every activation of a call


@dataclass
class CalibrationRanges:
    """Per-tensor activation ranges found on the host, in graph order."""

    method: str
    ranges: dict[str, tuple[float, float]]  # tensor name -> (lowest, highest)
    tensors_data: Any  # onnxruntime.quantization.calibrate.TensorsData (for the Q/DQ quantizer)
    num_samples: int
    input_name: str
    settings: dict[str, Any] = field(default_factory=dict)

    def amax(self) -> dict[str, float]:
        """max(|lowest|, |highest|) per tensor: the symmetric range TensorRT quantizes to +-127."""
        return {k: float(max(abs(lo), abs(hi))) for k, (lo, hi) in self.ranges.items()}

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "num_samples": self.num_samples, "input_name": self.input_name,
                "settings": self.settings,
                "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in self.ranges.items()}}


def model_input(onnx_path: Path) -> tuple[str, list[int | None]]:
    """Name and shape (None for a dynamic axis) of the model's single graph input."""
    from edgerep.files.onnx_files import onnx_input

    return onnx_input(onnx_path, single=True)


def _batches(source: Any, batch: int | None, num_samples: int):
    """Yield lists of model-ready batches, about CHUNK_SAMPLES samples per list. A fixed-batch model gets
    exactly its batch size (the last partial batch is dropped: a padded copy would skew the statistics)."""
    step = batch or 16
    chunk: list[np.ndarray] = []
    count = 0
    for x, _ in source.iter_batches(step, limit=num_samples):
        if batch is not None and x.shape[0] != batch:
            continue
        chunk.append(np.ascontiguousarray(x, dtype=np.float32))
        count += x.shape[0]
        if count >= CHUNK_SAMPLES:
            yield chunk
            chunk, count = [], 0
    if chunk:
        yield chunk


def calibrate(onnx_path: Path, source: Any, *, method: str = "entropy", num_samples: int = 300,
              entropy_bins: int = ENTROPY_BINS, entropy_quantized_bins: int = ENTROPY_QUANTIZED_BINS,
              percentile: float = PERCENTILE) -> CalibrationRanges:
    """Run ONNX Runtime's calibrator `method` ("entropy", "minmax", "percentile") over up to `num_samples`
    samples of `source` (an edgerep DataSource) and return the ranges of every float tensor."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, create_calibrator

    from edgerep.data.sources import batches_reader

    if method not in METHODS:
        raise UserError(f"--calib-method {method!r}: use one of {', '.join(METHODS)}")
    input_name, dims = model_input(onnx_path)
    fixed_batch = dims[0] if dims else None
    ort_method = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
                  "percentile": CalibrationMethod.Percentile}[method]
    extra: dict[str, Any] = {}
    if method == "entropy":
        extra = {"num_bins": entropy_bins, "num_quantized_bins": entropy_quantized_bins}
    elif method == "percentile":
        extra = {"num_bins": PERCENTILE_BINS, "percentile": percentile, "symmetric": True}
    used = 0
    with tempfile.TemporaryDirectory(prefix="edgerep-calib-") as tmp:
        calibrator = create_calibrator(Path(onnx_path), None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=ort_method, extra_options=extra)
        for chunk in _batches(source, fixed_batch, num_samples):
            calibrator.collect_data(batches_reader(input_name, chunk))
            used += sum(x.shape[0] for x in chunk)
        if used == 0:
            raise UserError(f"--calib {getattr(source, 'path', '')}: no samples of batch {fixed_batch} to calibrate with")
        if method == "entropy":
            data = {name: _entropy_range(hist, entropy_quantized_bins)
                    for name, hist in calibrator.collector.histogram_dict.items()}
            tensors = TensorsData(CalibrationMethod.Entropy, data)
        else:
            tensors = calibrator.compute_data()
        del calibrator
    order = _graph_order(onnx_path)
    ranges = {name: (float(np.asarray(tensors[name].range_value[0]).min()),
                     float(np.asarray(tensors[name].range_value[1]).max()))
              for name in sorted(tensors.keys(), key=lambda n: order.get(n, len(order)))}
    settings = {"entropy_bins": entropy_bins, "entropy_quantized_bins": entropy_quantized_bins} if method == "entropy" \
        else ({"bins": PERCENTILE_BINS, "percentile": percentile} if method == "percentile" else {})
    return CalibrationRanges(method=method, ranges=ranges, tensors_data=tensors, num_samples=used,
                             input_name=input_name, settings=settings)


def _graph_order(onnx_path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    order: dict[str, int] = {}
    for i in model.graph.input:
        order.setdefault(i.name, len(order))
    for node in model.graph.node:
        for out in node.output:
            order.setdefault(out, len(order))
    return order


def _entropy_range(histogram: tuple, num_quantized_bins: int) -> tuple:
    """ONNX Runtime's collector histogram (hist, edges, min, max, threshold) -> TensorsData 4-tuple."""
    hist, edges, min_value, max_value = histogram[0], histogram[1], histogram[2], histogram[3]
    lo, hi = entropy_threshold(hist, edges, num_quantized_bins)
    if lo < min_value:
        lo = min_value
    if hi > max_value:
        hi = max_value
    return (np.asarray(lo, dtype=edges.dtype), np.asarray(hi, dtype=edges.dtype), hist, edges)


def entropy_threshold(hist: np.ndarray, edges: np.ndarray, num_quantized_bins: int) -> tuple[Any, Any]:
    """The (low, high) edges of the window around zero whose quantized distribution has the smallest KL
    divergence from the clipped histogram: ONNX Runtime's HistogramCollector.get_entropy_threshold, with the
    per-bin Python loops replaced by numpy (same arithmetic, including its integer division of merged bins)."""
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    hist = np.asarray(hist)
    num_bins = hist.size
    zero = num_bins // 2
    half = num_quantized_bins // 2
    cum = np.concatenate([[0], np.cumsum(hist, dtype=np.int64)])
    total = int(cum[-1])
    best_i, best_div = half, np.inf
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, num_bins)
        sliced = hist[start:end].astype(np.int64)
        p = sliced.copy()
        p[0] += cum[start]
        p[-1] += total - cum[end]
        nonzero = (p != 0).astype(np.int64)
        merged = sliced.size // num_quantized_bins
        body = num_quantized_bins * merged
        qbins = sliced[:body].reshape(num_quantized_bins, merged).sum(axis=1)
        qbins[-1] += sliced[body:].sum()
        norm = nonzero[:body].reshape(num_quantized_bins, merged).sum(axis=1)
        per_bin = np.where(norm != 0, qbins / np.where(norm != 0, norm, 1), 0.0)
        q = np.zeros(p.size, dtype=np.int64)
        q[:body] = np.repeat(per_bin, merged).astype(np.int64)  # ONNX Runtime stores into int64: truncation
        ps, qs = smooth_distribution(p), smooth_distribution(q)
        div = np.inf if ps is None or qs is None else float(entropy(ps, qs))
        if div < best_div:  # strict: the first minimum wins, as np.argmin does in ONNX Runtime
            best_i, best_div = i, div
    start, end = zero - best_i, min(zero + best_i + 1, num_bins)
    return edges[start], edges[end]


def device_calibrator(trt: Any, cache: bytes, calib: Any, dims: list[Any], dynamic: tuple[int, int, int] | None,
                      memory: Any = None) -> Any:
    """An IInt8EntropyCalibrator2 that hands TensorRT the host cache; if TensorRT does not accept it (e.g. a header
    it reads differently), it calibrates on real batches of `calib` instead of on nothing. Its device buffer
    comes from `memory` (cuda_memory.open_device_memory(): pycuda or cuda-python) and is an attribute, so it
    lives as long as the calibrator (TensorRT keeps the calibrator: config.int8_calibrator, keep_alive)."""
    from edgerep.backends.tensorrt.cuda_memory import open_device_memory

    mem = memory if memory is not None else open_device_memory()
    batch = dynamic[1] if dynamic else int(dims[0] or 1)
    sample = [int(d) for d in dims[1:]]

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # the base __init__ must be called (TensorRT samples)
            self.written: bytes | None = None
            self.batches_fed = 0
            self.memory = mem
            self._it = calib.iter_batches(batch) if calib is not None else iter(())
            self._device = mem.alloc(int(np.prod([batch, *sample])) * 4)

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            for x, _ in self._it:
                if x.shape[0] != batch:
                    continue
                mem.htod_sync(self._device, np.ascontiguousarray(x, dtype=np.float32))
                self.batches_fed += 1
                return [mem.pointer(self._device)]
            return None

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data: Any) -> None:
            self.written = bytes(data)

    return CacheCalibrator()
