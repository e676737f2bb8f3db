"""Target profiles the TensorRT GPU tests write for the machine's own TensorRT (test_tensorrt_engine.py, next to
this file).

Kept apart from those tests, which skip at import without a GPU, so that test_tensorrt_api.py loads every profile
written here on any machine: a profile the loader rejects cannot hide behind the GPU skip again.
"""
from __future__ import annotations

from pathlib import Path


def gpu_opset(trt_version: str) -> int:
    """The ONNX opset for this TensorRT: 19 from 11 (its INT8 graph has FP16 Q/DQ scales, opset 19+), else 17."""
    return 19 if int(trt_version.split(".")[0]) >= 11 else 17


def gpu_profile_text(name: str, trt_version: str, int8_mode: str, dynamic: bool) -> str:
    """A tensorrt profile for TensorRT `trt_version` ("10.3.0.26": its major.minor is used). The loader wants
    the name equal to the file name, and batch sizes other than 1 only with dynamic_batch."""
    major, minor = trt_version.split(".")[:2]
    batches = "[1, 4]" if dynamic else "[1]"
    return f"""
name = "{name}"
description = "the GPU of this machine, TensorRT {major}.{minor}"
backend = "tensorrt"
precisions = ["fp16", "int8"]
opset = {gpu_opset(trt_version)}
dynamic_batch = {str(dynamic).lower()}
[latency]
batch_sizes = {batches}
warmup = 5
iterations = 20
[gates.fp16]
min_cosine = 0.999
[gates.int8]
min_cosine = 0.98
[tensorrt]
version = "{major}.{minor}"
workspace_mb = 256
int8_mode = "{int8_mode}"
[calibration]
method = "entropy"
num_samples = 64
"""


def write_gpu_profile(folder: Path, trt_version: str, int8_mode: str, dynamic: bool = False) -> Path:
    name = f"gpu-{int8_mode}-{'dynamic' if dynamic else 'static'}"
    path = Path(folder) / f"{name}.toml"
    path.write_text(gpu_profile_text(name, trt_version, int8_mode, dynamic))
    return path


def gpu_int8_modes(trt_version: str) -> list[str]:
    """INT8 modes the GPU tests build on this TensorRT: both up to 10.x, Q/DQ only from 11."""
    return ["qdq"] if int(trt_version.split(".")[0]) >= 11 else ["calibrate", "qdq"]
