"""An ONNX model run on ONNX Runtime's CPU execution provider, every output by name."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgerep.backends.base import RunnerBase
from edgerep.backends.common import time_calls
from edgerep.cpu.threads import runtime_threads
from edgerep.errors import UserError


class OrtRunner(RunnerBase):
    """Runs an ONNX model on ONNX Runtime's CPU execution provider.

    `simulate_qdq`: run Q/DQ pairs as float ops (session.disable_quant_qdq) instead of fusing them into
    integer kernels. The result is the quantization error alone, the same on every CPU: what a *prediction*
    of another runtime's INT8 engine needs (sensitivity, TensorRT's Q/DQ row), since this CPU's integer
    kernels may saturate where the target's do not."""

    def __init__(self, path: Path, *, simulate_qdq: bool = False) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if simulate_qdq:
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        threads = runtime_threads()  # set by `edgerep matrix` workers so parallel cells share the cores
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise UserError(f"{path}: ONNX Runtime cannot load it ({type(exc).__name__}: {str(exc)[:200]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]  # ONNX graph order
        self.path = path

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The first output."""
        out = self.session.run(self.output_names[:1], {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32)

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output, in ONNX order (self.output_names)."""
        outs = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return [np.asarray(o, dtype=np.float32) for o in outs]

    def latency(self, batch: np.ndarray, warmup: int, iterations: int) -> list[float]:
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        return time_calls(lambda: self.session.run(None, feed), warmup, iterations)

    def close(self) -> None:
        self.session = None
