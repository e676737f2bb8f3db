"""An OpenVINO IR compiled for the CPU with the properties it was validated with, outputs mapped by port name."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgerep.backends.base import INFERENCE_PRECISION_ENV, RUNTIME_DEFAULT, RunnerBase
from edgerep.backends.common import time_calls
from edgerep.backends.openvino.compile_props import HINT, config_for, precision_name, precision_warning
from edgerep.backends.openvino.compile_props import inference_precision as inference_precision  # re-exported
from edgerep.cpu.threads import runtime_threads
from edgerep.errors import UserError, first_line


class OpenVINORunner(RunnerBase):
    """A model compiled for the CPU; `run`, `run_all` and `latency` use synchronous infer requests.

    Compiled with `config` (an engine's compile.json: {"device", "properties"}) exactly, else at
    `inference_precision`; `edgerep validate --inference-precision` (INFERENCE_PRECISION_ENV) replaces the hint,
    and `edgerep matrix` workers add their thread cap. `inference_precision` is then what the compiled model says
    it runs at, `validated_at` what the engine was validated at.

    Outputs are found by their tensor names on the compiled model's ports (the ONNX frontend keeps the ONNX
    output names), in the order of `output_names` when given (the ONNX graph's, recorded at build), else in
    port order; never by the order of the result dict."""

    def __init__(self, path: Path, inference_precision: str = "f32", *, output_names: list[str] | None = None,
                 config: dict[str, Any] | None = None, config_file: str | None = None,
                 validated_at: str | None = None) -> None:
        import openvino as ov

        config = config or config_for(inference_precision)
        properties: dict[str, Any] = dict(config["properties"])
        self.configured = properties.get(HINT)
        self.validated_at = validated_at or self.configured or "f32"
        self.asked = os.environ.get(INFERENCE_PRECISION_ENV) or None
        if self.asked == RUNTIME_DEFAULT:
            properties.pop(HINT, None)
        elif self.asked is not None:
            properties[HINT] = self.asked
        threads = runtime_threads()  # set by `edgerep matrix` workers so parallel cells share the cores
        if threads is not None:
            properties["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = ov.Core().compile_model(str(path), config["device"], properties)
        except Exception as exc:
            raise UserError(f"{path}: OpenVINO cannot compile it ({type(exc).__name__}: {first_line(exc)})") from None
        self.request = self.compiled.create_infer_request()
        self.input_name = self.compiled.input(0).get_any_name()
        self.output_names, self._ports = _output_ports(self.compiled, output_names, path)
        self.inference_precision = precision_name(self.compiled.get_property(HINT))
        self.config_file = config_file
        self.path = path

    def precision_warning(self) -> str | None:
        return precision_warning(Path(self.path).name, validated=self.validated_at, actual=self.inference_precision,
                                 asked=self.asked, config_file=self.config_file,
                                 configured=None if self.config_file is None else self.configured)

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
