"""An OpenVINO IR compiled for the CPU, run with the precision it was validated at, outputs mapped by port name."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgerep.backends.base import RunnerBase
from edgerep.backends.common import time_calls
from edgerep.cpu.threads import runtime_threads
from edgerep.errors import UserError, first_line


def inference_precision(precision: str) -> str:
    if precision != "fp16":
        return "f32"
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "f16" if "FP16" in caps else "f32"


class OpenVINORunner(RunnerBase):
    """A model compiled for the CPU; `run`, `run_all` and `latency` use synchronous infer requests.

    Outputs are found by their tensor names on the compiled model's ports (the ONNX frontend keeps the ONNX
    output names), in the order of `output_names` when given (the ONNX graph's, recorded at build), else in
    port order; never by the order of the result dict."""

    def __init__(self, path: Path, inference_precision: str = "f32", *, output_names: list[str] | None = None) -> None:
        import openvino as ov
        import openvino.properties.hint as hints

        core = ov.Core()
        config: dict[Any, Any] = {hints.inference_precision: inference_precision}
        threads = runtime_threads()  # set by `edgerep matrix` workers so parallel cells share the cores
        if threads is not None:
            import openvino.properties as props

            config[props.inference_num_threads] = threads
        try:
            self.compiled = core.compile_model(str(path), "CPU", config)
        except Exception as exc:
            raise UserError(f"{path}: OpenVINO cannot compile it ({type(exc).__name__}: {first_line(exc)})") from None
        self.request = self.compiled.create_infer_request()
        self.input_name = self.compiled.input(0).get_any_name()
        self.output_names, self._ports = _output_ports(self.compiled, output_names, path)
        self.inference_precision = inference_precision
        self.path = path

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The first output."""
        result = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(result[self._ports[0]], dtype=np.float32)  # copy: the request reuses its buffer

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output, in `output_names` order."""
        result = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return [np.array(result[port], dtype=np.float32) for port in self._ports]

    def latency(self, batch: np.ndarray, warmup: int, iterations: int) -> list[float]:
        feed = {0: np.ascontiguousarray(batch, dtype=np.float32)}
        return time_calls(lambda: self.request.infer(feed), warmup, iterations)

    def close(self) -> None:
        self.request = None
        self.compiled = None


def _output_ports(compiled: Any, wanted: list[str] | None, path: Path) -> tuple[list[str], list[Any]]:
    """(names, ports) of the compiled model's outputs: in `wanted` order, each port found by its tensor names;
    without `wanted` (an IR built before the names were recorded), in port order under each port's first name."""
    ports = list(compiled.outputs)
    if not wanted:
        return [_port_name(p, i) for i, p in enumerate(ports)], ports
    by_name = {name: port for port in ports for name in port.get_names()}
    missing = [name for name in wanted if name not in by_name]
    if missing or len(wanted) != len(ports):
        raise UserError(f"{path}: the compiled model's outputs {[_port_name(p, i) for i, p in enumerate(ports)]} "
                        f"do not match the ONNX outputs {wanted} recorded at build (missing: {missing}); rebuild it")
    return list(wanted), [by_name[name] for name in wanted]


def _port_name(port: Any, index: int) -> str:
    try:
        return str(port.get_any_name())
    except RuntimeError:  # a port without tensor names
        return f"output{index}"
