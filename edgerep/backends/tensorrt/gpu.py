"""The running TensorRT and CUDA device: version, GPU facts for the sidecar guard, and a logger that keeps the
builder's messages. Imports tensorrt and the CUDA binding (pycuda or cuda-python) inside the functions only.
"""
from __future__ import annotations

import re
import sys
from typing import Any

from edgerep.backends.tensorrt.versions import Version, parse_version

# ILogger.Severity values (NvInferRuntimeBase.h / NvInferRuntimeCommon.h, release/8.0 - 10.x)
INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = 0, 1, 2, 3, 4
LAYER_PLACEMENT = re.compile(r"\[(DlaLayer|GpuLayer)\]\s*(.*)")


def trt_version() -> Version:
    import tensorrt as trt

    return parse_version(trt.__version__)


def running_environment() -> dict[str, Any]:
    """TensorRT version, GPU name and compute capability of this machine (for the sidecar guard)."""
    import tensorrt as trt

    from edgerep.backends.tensorrt.cuda_memory import open_device_memory

    memory = open_device_memory()  # pycuda or cuda-python, whichever is installed
    try:
        # both read the name from the CUDA API (cuDeviceGetName / cudaDeviceProp.name): guard.CUDA_NAME
        name, capability = memory.device()
    finally:
        memory.close()
    return {"trt_version": trt.__version__, "gpu_name": name, "gpu_name_source": "cuda",
            "compute_capability": capability}


# Where a Jetson's TensorRT comes from: JetPack's Debian packages, not PyPI (whose tensorrt wheels are for x86-64
# and SBSA servers, and shadow JetPack's package in a venv).
JETSON_TENSORRT = ("on a Jetson use JetPack's TensorRT: sudo apt install python3-libnvinfer, and make any venv with "
                   "--system-site-packages (pip install tensorrt / 'edgerep[tensorrt]' would pull PyPI's wheel instead)")
# pycuda has no aarch64 wheel: pip compiles it, which needs nvcc and the CUDA headers and libraries.
JETSON_PYCUDA = ("on a Jetson pycuda compiles from source: export PATH=/usr/local/cuda/bin:$PATH "
                 "CPATH=/usr/local/cuda/include LIBRARY_PATH=/usr/local/cuda/lib64, then pip install pycuda")


def on_jetson(release_file: str = "/etc/nv_tegra_release", model_file: str = "/proc/device-tree/model") -> bool:
    """Whether this machine is a Jetson (L4T writes /etc/nv_tegra_release; the device tree names the board)."""
    import os

    if os.path.exists(release_file):
        return True
    try:
        with open(model_file, "rb") as f:
            return b"jetson" in f.read().lower()
    except OSError:
        return False


def install_hint(package: str, *, jetson: bool) -> str:
    """How to install `package` ("tensorrt" or "pycuda") for edgerep here."""
    if package == "tensorrt":
        return JETSON_TENSORRT if jetson else "pip install 'edgerep[tensorrt]'"
    return JETSON_PYCUDA if jetson else "pip install 'cuda-python==<CUDA major>.*' (a wheel) or pycuda"


def unavailable_reason(*, jetson: bool | None = None) -> str | None:
    """None when tensorrt, a CUDA binding (pycuda or cuda-python) and a GPU are usable here, else why not and how to
    fix it. Never raises."""
    jetson = on_jetson() if jetson is None else jetson
    missing = ("tensorrt is not installed here; engines are built on the device ("
               + install_hint("tensorrt", jetson=jetson) + ")")
    try:
        import tensorrt
    except ImportError:
        return missing
    # tensorrt-stubs (the dev extra) installs a tensorrt/ folder of .pyi files only, which imports as an empty
    # namespace package: without __version__ it is not TensorRT
    if not hasattr(tensorrt, "__version__"):
        return missing
    from edgerep.backends.tensorrt.cuda_memory import binding_installed, open_device_memory

    if binding_installed() is None:
        return "neither pycuda nor cuda-python is installed; " + install_hint("pycuda", jetson=jetson)
    try:
        memory = open_device_memory()
        memory.close()
    except Exception as exc:  # no driver, no device
        return f"no usable CUDA GPU ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def keep_message(level: int, msg: str) -> bool:
    """Messages the capture keeps: INFO and above, and the DLA/GPU layer placement at any level. TensorRT 8.x
    logs "[DlaLayer] ..." / "[GpuLayer] ..." at INFO; 10.x may log them at VERBOSE ("[V] [TRT] [DlaLayer]"),
    which an INFO filter would drop, leaving the DLA split empty."""
    return level <= INFO or bool(LAYER_PLACEMENT.search(msg))


def layer_split(lines: list[tuple[int, str]]) -> tuple[list[str], list[str]]:
    """(layers placed on the DLA, layers on the GPU) from the builder's log lines."""
    dla: list[str] = []
    gpu: list[str] = []
    for _, msg in lines:
        m = LAYER_PLACEMENT.search(msg)
        if m:
            (dla if m.group(1) == "DlaLayer" else gpu).append(m.group(2).strip())
    return dla, gpu


def make_logger() -> Any:
    """A trt.ILogger that keeps the messages `keep_message` selects and prints warnings and errors.
    Subclasses must call the base __init__ (TensorRT Python API, ILogger)."""
    import tensorrt as trt

    class Capture(trt.ILogger):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[tuple[int, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)
            if keep_message(level, msg):
                self.lines.append((level, msg))
            if level <= WARNING:
                print(f"[TensorRT] {msg}", file=sys.stderr)

    return Capture()
