"""TensorRT's INT8 calibration cache, written from host-side ranges and read back.

Format (NVIDIA release/8.0 samples/sampleINT8/README.md): a first line `TRT-<NV_TENSORRT_VERSION>-<algorithm>`,
then one line per tensor `name: <8 hex digits>`, the float32 scale (amax / 127) as IEEE-754 bits, most
significant byte first. Checked against NVIDIA's example `prob: 3c010a14` (softmax output, amax 1.0:
0x3c010a14 = 0.0078759 = 1.0002/127), NVIDIA TAO (`calibration_cache_from_dict`) and NVIDIA ModelOpt
(`struct.unpack("!f", bytes.fromhex(...))`).

Why our own writer: onnxruntime.quantization.write_calibration_table writes ONNX Runtime's TensorRT-EP table
(`calibration.cache` lines `name max` in decimal, no header, max(highest, lowest) rather than the absolute
maximum, plus flatbuffers/JSON files), which TensorRT's builder and trtexec --calib do not read.

TensorRT reuses a cache only when its header matches the running version and the calibrator's algorithm.
Otherwise it calibrates again: through the API with whatever batches the calibrator gives (ours then feeds real
data), while trtexec, whose calibrator allocates no input buffers when a cache file is given (RndInt8Calibrator,
samples/common/sampleEngines.cpp, release/8.5 - 10.3), fails the build (NVIDIA/Deep-Learning-Accelerator-SW#26:
a TRT-8600 header on 10.3). The scales written here
come from ONNX Runtime on the host and do not depend on the TensorRT version, so a cache can be re-headed
for the device's exact version (`retag`); the sidecar says which version it was written for.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgerep.backends.tensorrt.versions import Version, cache_header, parse_cache_header

ALGORITHM = "EntropyCalibration2"  # the calibrator trtexec --calib and our device builder use


def scale_hex(amax: float) -> str:
    """amax -> 8 hex digits of the float32 scale amax/127, big-endian. A zero range (a dead tensor) gets the
    smallest positive normal float32, since a zero scale would divide by zero."""
    scale = np.float32(float(amax) / 127.0)
    if not scale > 0:
        scale = np.finfo(np.float32).tiny
    return struct.pack(">f", float(scale)).hex()


def hex_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text.strip()))[0]


def cache_text(amax: dict[str, float], version: Version, algorithm: str = ALGORITHM) -> str:
    lines = [cache_header(version, algorithm)]
    for name, value in amax.items():
        if "\n" in name or "\r" in name:
            raise ValueError(f"tensor name {name!r} holds a line break and cannot be written to a cache")
        lines.append(f"{name}: {scale_hex(value)}")
    return "\n".join(lines) + "\n"


def write_cache(path: Path, amax: dict[str, float], version: Version, algorithm: str = ALGORITHM) -> Path:
    """Write the cache atomically (a temporary name, then rename)."""
    from edgerep.files.artifacts import atomic_path

    with atomic_path(Path(path)) as tmp:
        tmp.write_text(cache_text(amax, version, algorithm), encoding="ascii")
    return Path(path)


@dataclass
class CacheContents:
    header: str
    code: int
    versions: list[Version]  # the version the header number means; [] for one TensorRT never writes (code_to_versions)
    algorithm: str
    scales: dict[str, float]

    def amax(self) -> dict[str, float]:
        return {k: v * 127.0 for k, v in self.scales.items()}


def parse_cache(text: str) -> CacheContents:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ValueError("empty calibration cache")
    code, versions, algorithm = parse_cache_header(lines[0])
    scales: dict[str, float] = {}
    for n, line in enumerate(lines[1:], start=2):
        # Tensor names may contain ':' (TensorFlow-style "conv1/Conv:0"): the scale follows the last ': '.
        name, sep, value = line.rpartition(": ")
        if not sep or len(value.strip()) != 8:
            raise ValueError(f"line {n}: expected 'name: <8 hex digits>', got {line[:80]!r}")
        if name in scales:
            raise ValueError(f"line {n}: tensor {name!r} appears twice")
        scales[name] = hex_scale(value)
    return CacheContents(header=lines[0].strip(), code=code, versions=versions, algorithm=algorithm, scales=scales)


def read_cache(path: Path) -> CacheContents:
    return parse_cache(Path(path).read_text(encoding="ascii"))


def retag(text: str, version: Version, algorithm: str | None = None) -> str:
    """The same scales under the header for `version` (valid only for host-made caches: their scales do not
    depend on the TensorRT version; a cache TensorRT itself calibrated must be recalibrated instead)."""
    contents = parse_cache(text)
    body = text.split("\n", 1)[1] if "\n" in text else ""
    return cache_header(version, algorithm or contents.algorithm) + "\n" + body
