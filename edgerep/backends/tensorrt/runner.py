"""Run a TensorRT plan with pycuda or cuda-python (cuda_memory.py): pinned host buffers, one stream, async
copies; latency from CUDA events.

The tensor API (num_io_tensors, get_tensor_name/mode/shape/dtype, set_input_shape, set_tensor_address,
execute_async_v3) from TensorRT 8.5 (NVIDIA/TensorRT release/8.5 python/src/infer/pyCore.cpp; the only API in
10.x), the bindings API (get_binding_index, set_binding_shape, execute_async_v2) before (release/8.2 pyCore.cpp).
Every allocation stays referenced in `_buffers` until it is freed explicitly: pycuda frees device memory when
its DeviceAllocation is collected, cuda-python never frees it by itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgerep.backends.base import RunnerBase
from edgerep.backends.tensorrt.gpu import make_logger, trt_version
from edgerep.errors import UserError


class TensorRTRunner(RunnerBase):
    """Runs a plan: pinned host buffers, one stream, async copies; latency from CUDA events."""

    def __init__(self, engine_path: Path, *, dla_core: int | None = None,
                 output_names: list[str] | None = None) -> None:
        import tensorrt as trt

        from edgerep.backends.tensorrt.cuda_memory import open_device_memory
        from edgerep.backends.tensorrt.versions import api_features

        self.path = Path(engine_path)
        mem = open_device_memory()
        self.mem: Any = mem
        self.trt = trt
        mem.push()
        try:
            self.logger = make_logger()
            runtime = trt.Runtime(self.logger)
            if dla_core is not None:
                runtime.DLA_core = int(dla_core)
            self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise UserError(f"--engine {engine_path}: TensorRT {trt.__version__} cannot deserialize it; rebuild it here")
            self.context = self.engine.create_execution_context()
            self.stream = mem.stream()
            self.tensor_api = api_features(trt_version()).tensor_api
            self.inputs, self.outputs = self._io_names()
            self.input_name = self.inputs[0]
            # run_all's order: the ONNX graph's (`output_names`, recorded at build) when it names exactly the
            # engine's outputs, else the engine's own I/O order
            self.output_names: list[str] = (list(output_names) if output_names and
                                            sorted(output_names) == sorted(self.outputs) else list(self.outputs))
            self._shape: tuple[int, ...] | None = None
            self._buffers: dict[str, tuple[Any, Any]] = {}
        finally:
            mem.pop()

    def _io_names(self) -> tuple[list[str], list[str]]:
        trt, e = self.trt, self.engine
        ins: list[str] = []
        outs: list[str] = []
        if self.tensor_api:
            for i in range(e.num_io_tensors):
                name = e.get_tensor_name(i)
                (ins if e.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outs).append(name)
        else:
            legacy = self._legacy_engine()
            for i in range(legacy.num_bindings):
                (ins if legacy.binding_is_input(i) else outs).append(legacy.get_binding_name(i))
        return ins, outs

    def _legacy_engine(self) -> Any:
        """The engine for the 8.0 - 8.4 bindings API. Typed Any: the 10.x stubs do not describe those calls;
        tests/backends/tensorrt/test_tensorrt_api.py checks them against the names NVIDIA's bindings bind."""
        return self.engine

    def _legacy_context(self) -> Any:
        return self.context

    def _prepare(self, shape: tuple[int, ...]) -> None:
        """Set the input shape and (re)allocate pinned host and device buffers for it."""
        if shape == self._shape:
            return
        trt, mem, e, c = self.trt, self.mem, self.engine, self.context
        self._free()
        le, lc = self._legacy_engine(), self._legacy_context()
        # set_input_shape / set_binding_shape return False for a shape outside the optimization profile
        # (include/NvInferRuntime.h: "\return True on success, false if ... some other error occurred")
        if self.tensor_api:
            if -1 in _dims(e.get_tensor_shape(self.input_name)):  # a dynamic input (optimization profile)
                if not c.set_input_shape(self.input_name, trt.Dims(list(shape))):
                    raise UserError(self._refused(shape, lambda: e.get_tensor_profile_shape(self.input_name, 0)))
        else:
            idx = le.get_binding_index(self.input_name)
            if -1 in _dims(le.get_binding_shape(idx)):
                if not lc.set_binding_shape(idx, shape):
                    raise UserError(self._refused(shape, lambda: le.get_profile_shape(0, idx)))
        for name in self.inputs + self.outputs:
            if self.tensor_api:
                dims, dtype = _dims(c.get_tensor_shape(name)), trt.nptype(e.get_tensor_dtype(name))
            else:
                idx = le.get_binding_index(name)
                dims, dtype = _dims(lc.get_binding_shape(idx)), trt.nptype(le.get_binding_dtype(idx))
            host = mem.host(dims, dtype)
            dev = mem.alloc(host.nbytes)
            self._buffers[name] = (host, dev)
            if self.tensor_api:
                c.set_tensor_address(name, mem.pointer(dev))
        self._shape = shape

    def _refused(self, shape: tuple[int, ...], profile: Any) -> str:
        """The message for a shape TensorRT refuses, with the profile's range when TensorRT gives it."""
        try:
            low, _, high = (list(_dims(d)) for d in profile())
            span = f" (its optimization profile spans {low} to {high})"
        except Exception:  # the range is a courtesy: the refusal is the message
            span = ""
        return (f"--engine {self.path}: TensorRT refused input shape {list(shape)}{span}; use a batch inside the "
                f"profile, or rebuild the engine for this batch")

    def _enqueue(self) -> None:
        if self.tensor_api:
            ok = self.context.execute_async_v3(stream_handle=self.mem.handle(self.stream))
        else:
            le = self._legacy_engine()
            bindings = [0] * le.num_bindings
            for name, (_, dev) in self._buffers.items():
                bindings[le.get_binding_index(name)] = self.mem.pointer(dev)
            ok = self._legacy_context().execute_async_v2(bindings=bindings, stream_handle=self.mem.handle(self.stream))
        if not ok:
            raise RuntimeError("TensorRT could not enqueue the inference (see the TensorRT messages above)")

    def _infer_async(self, batch: np.ndarray) -> None:
        host_in, dev_in = self._buffers[self.input_name]
        np.copyto(host_in, batch.astype(host_in.dtype, copy=False))
        self.mem.htod(dev_in, host_in, self.stream)
        self._enqueue()
        for name in self.outputs:
            host, dev = self._buffers[name]
            self.mem.dtoh(host, dev, self.stream)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The first output (in `output_names` order)."""
        return self.run_all(batch)[0]

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output, in `output_names` order, as float32 copies (the pinned buffers are reused)."""
        self.mem.push()
        try:
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            self._prepare(tuple(batch.shape))
            self._infer_async(batch)
            self.mem.sync(self.stream)
            return [np.array(self._buffers[name][0], dtype=np.float32, copy=True) for name in self.output_names]
        finally:
            self.mem.pop()

    def latency(self, batch: np.ndarray, warmup: int, iterations: int) -> list[float]:
        """Milliseconds per inference (host->device copy, execution, device->host copy) from CUDA events."""
        mem = self.mem
        mem.push()
        try:
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            self._prepare(tuple(batch.shape))
            for _ in range(max(0, warmup)):
                self._infer_async(batch)
            mem.sync(self.stream)
            start, end = mem.event(), mem.event()
            times = []
            for _ in range(max(1, iterations)):
                mem.record(start, self.stream)
                self._infer_async(batch)
                mem.record(end, self.stream)
                times.append(mem.elapsed_ms(start, end))
            return times
        finally:
            mem.pop()

    def _free(self) -> None:
        if self._buffers:
            self.mem.sync(self.stream)  # nothing queued may still use them
        for host, dev in self._buffers.values():
            self.mem.free(dev)
            self.mem.free_host(host)
        self._buffers = {}
        self._shape = None

    def close(self) -> None:
        if getattr(self, "mem", None) is None:
            return
        self.mem.push()
        try:
            self._free()
            del self.context, self.engine  # TensorRT objects go before the CUDA context is detached
        finally:
            self.mem.pop()
            self.mem.close()
            self.mem = None


def _dims(d: Any) -> tuple[int, ...]:
    """A trt.Dims as a tuple (Dims is a sequence with len and indexing in every release)."""
    return tuple(int(d[i]) for i in range(len(d)))
