"""Device memory for the TensorRT runner and calibrator: pycuda or cuda-python, whichever imports, behind one
small interface (pinned host arrays, device allocations, async copies, a stream, events).

NVIDIA's TensorRT samples moved from pycuda to cuda-python in 10.14 (NVIDIA/TensorRT release/10.14
CHANGELOG.md, "Replace all pycuda usages with cuda-python APIs"). cuda-python installs as a wheel; pycuda
compiles on a Jetson and needs nvcc on PATH (export PATH=/usr/local/cuda/bin:$PATH). The bundle's
check_engine.py carries its own copy of these two classes (it runs on Python 3.6 without edgerep);
tests/backends/tensorrt/test_check_engine_device.py checks that both call the same CUDA names.
Imports pycuda / cuda-python inside the functions only.
"""
from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from edgerep.errors import UserError

BINDINGS = ("pycuda", "cuda-python")
INSTALL_HINT = ("pip install 'cuda-python==<CUDA major>.*' (a wheel), or pycuda (it compiles: on a Jetson "
                "export PATH=/usr/local/cuda/bin:$PATH first)")


def import_cudart() -> Any:
    """cuda-python's runtime module: `cuda.bindings.runtime` (cuda-python 12.6 and later, the only layout in
    13.x), else `cuda.cudart` (11.x - 12.x, as NVIDIA/TensorRT samples/python/common_runtime.py imports it)."""
    import importlib

    try:
        return importlib.import_module("cuda.bindings.runtime")  # by name: cuda-python ships no type hints
    except ImportError:
        return importlib.import_module("cuda.cudart")


def binding_installed() -> str | None:
    """The first of BINDINGS importable here (nothing is initialised), or None."""
    import importlib.util

    for name, modules in (("pycuda", ("pycuda.driver",)), ("cuda-python", ("cuda.bindings.runtime", "cuda.cudart"))):
        for module in modules:
            try:
                if importlib.util.find_spec(module) is not None:
                    return name
            except (ImportError, ValueError):
                continue
    return None


class PycudaMemory:
    """pycuda in the device's primary context (the one TensorRT's runtime uses: pycuda.autoprimaryctx);
    push()/pop() around every use. A DeviceAllocation frees itself when collected: callers keep them."""

    name = "pycuda"

    def __init__(self) -> None:
        import pycuda.driver as cuda

        cuda.init()
        self.cuda = cuda
        self.ctx: Any = cuda.Device(0).retain_primary_context()

    def device(self) -> tuple[str, str]:
        """(GPU name, compute capability "major.minor") of device 0."""
        dev = self.cuda.Device(0)
        major, minor = dev.compute_capability()
        return str(dev.name()), f"{major}.{minor}"

    def push(self) -> None:
        self.ctx.push()

    def pop(self) -> None:
        self.ctx.pop()

    def close(self) -> None:
        if self.ctx is not None:
            self.ctx.detach()
            self.ctx = None

    def host(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.cuda.pagelocked_empty(shape, dtype)

    def free_host(self, array: np.ndarray) -> None:
        pass  # page-locked memory goes with its array

    def alloc(self, nbytes: int) -> Any:
        return self.cuda.mem_alloc(max(1, int(nbytes)))

    def pointer(self, allocation: Any) -> int:
        return int(allocation)

    def free(self, allocation: Any) -> None:
        allocation.free()

    def htod(self, dev: Any, host: np.ndarray, stream: Any) -> None:
        self.cuda.memcpy_htod_async(dev, host, stream)

    def htod_sync(self, dev: Any, host: np.ndarray) -> None:
        self.cuda.memcpy_htod(dev, host)

    def dtoh(self, host: np.ndarray, dev: Any, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(host, dev, stream)

    def stream(self) -> Any:
        return self.cuda.Stream()

    def handle(self, stream: Any) -> int:
        return int(stream.handle)

    def sync(self, stream: Any) -> None:
        stream.synchronize()

    def event(self) -> Any:
        return self.cuda.Event()

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(start.time_till(end))


class CudartMemory:
    """cuda-python's runtime API: every call returns (cudaError_t, results...). The runtime API works in the
    primary context of the current device (cudaSetDevice), which TensorRT uses too: push/pop are no-ops."""

    name = "cuda-python"

    def __init__(self, cudart: Any = None) -> None:
        self.rt = cudart if cudart is not None else import_cudart()
        self.call(self.rt.cudaSetDevice(0), "cudaSetDevice")
        self.call(self.rt.cudaFree(0), "cudaFree(0)")  # creates the context now

    def call(self, result: Any, what: str) -> Any:
        err, rest = result[0], tuple(result[1:])
        if int(err) != 0:
            named = self.rt.cudaGetErrorName(err)
            label = named[1].decode() if int(named[0]) == 0 and isinstance(named[1], bytes) else str(err)
            raise RuntimeError(f"CUDA {what} failed: {label}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def device(self) -> tuple[str, str]:
        """(GPU name, compute capability "major.minor") of device 0 (cudaDeviceProp name, major, minor)."""
        prop = self.call(self.rt.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
        name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
        return name, f"{prop.major}.{prop.minor}"

    def push(self) -> None:
        pass

    def pop(self) -> None:
        pass

    def close(self) -> None:
        pass

    def host(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dt = np.dtype(dtype)
        count = int(np.prod(shape)) if len(shape) else 1
        nbytes = max(1, count * dt.itemsize)
        ptr = self.call(self.rt.cudaMallocHost(nbytes), "cudaMallocHost")
        raw = (ctypes.c_byte * nbytes).from_address(int(ptr))
        return np.frombuffer(raw, dtype=dt, count=count).reshape(shape)

    def free_host(self, array: np.ndarray) -> None:
        self.call(self.rt.cudaFreeHost(array.ctypes.data), "cudaFreeHost")

    def alloc(self, nbytes: int) -> int:
        return int(self.call(self.rt.cudaMalloc(max(1, int(nbytes))), "cudaMalloc"))

    def pointer(self, allocation: Any) -> int:
        return int(allocation)

    def free(self, allocation: Any) -> None:
        self.call(self.rt.cudaFree(allocation), "cudaFree")

    def htod(self, dev: Any, host: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call(self.rt.cudaMemcpyAsync(dev, host.ctypes.data, host.nbytes, kind, stream), "cudaMemcpyAsync")

    def htod_sync(self, dev: Any, host: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call(self.rt.cudaMemcpy(dev, host.ctypes.data, host.nbytes, kind), "cudaMemcpy")

    def dtoh(self, host: np.ndarray, dev: Any, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call(self.rt.cudaMemcpyAsync(host.ctypes.data, dev, host.nbytes, kind, stream), "cudaMemcpyAsync")

    def stream(self) -> Any:
        return self.call(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def handle(self, stream: Any) -> int:
        return int(stream)

    def sync(self, stream: Any) -> None:
        self.call(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def event(self) -> Any:
        return self.call(self.rt.cudaEventCreate(), "cudaEventCreate")

    def record(self, event: Any, stream: Any) -> None:
        self.call(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self.call(self.rt.cudaEventSynchronize(end), "cudaEventSynchronize")
        return float(self.call(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))


DeviceMemory = PycudaMemory | CudartMemory


def open_device_memory(order: tuple[str, ...] = BINDINGS) -> DeviceMemory:
    """The first binding of `order` that imports: PycudaMemory or CudartMemory; neither: UserError."""
    tried = []
    for name in order:
        try:
            return PycudaMemory() if name == "pycuda" else CudartMemory()
        except ImportError as exc:
            tried.append(f"{name} ({exc})")
    raise UserError(f"no CUDA Python binding: tried {', '.join(tried)}; {INSTALL_HINT}")
