"""How many threads a runtime may use in this process, so parallel workers do not oversubscribe the cores.

`edgerep matrix` runs several builds at once; each worker calls cap_threads(cores // workers) before importing
any runtime. The OpenMP/BLAS variables cover torch, NNCF and numpy; ONNX Runtime and OpenVINO size their own
pools and read runtime_threads() when they open a session (backends/onnxruntime.py, backends/openvino.py).
A process that never calls cap_threads (a plain `edgerep build`, the latency stage) leaves every runtime at its
default, the whole machine.
"""
from __future__ import annotations

import os

ENV = "EDGEREP_NUM_THREADS"
_LIBRARY_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def runtime_threads() -> int | None:
    """The thread cap of this process (None: no cap, the runtime's default)."""
    try:
        value = int(os.environ.get(ENV, ""))
    except ValueError:
        return None
    return value if value > 0 else None


def cap_threads(threads: int) -> None:
    """Cap every runtime in this process to `threads` threads (call it before the runtimes open sessions)."""
    threads = max(1, int(threads))
    os.environ[ENV] = str(threads)
    for name in _LIBRARY_VARS:
        os.environ[name] = str(threads)
    import sys

    if "torch" in sys.modules:  # torch read OMP_NUM_THREADS at import; tell it directly
        sys.modules["torch"].set_num_threads(threads)


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
