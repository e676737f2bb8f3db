"""TensorRT engines on a real GPU: FP16 and INT8 (calibrate and Q/DQ) built from the demo RepVGG's export,
run with the pycuda runner, compared with ONNX Runtime, and guarded by their sidecars.

Marked `tensorrt`; skipped with the reason on machines without tensorrt, pycuda or an NVIDIA GPU.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgerep.backends import get_backend
from edgerep.data import calib_root, open_data
from edgerep.errors import UserError

pytestmark = pytest.mark.tensorrt
BACKEND = get_backend("tensorrt")
REASON = BACKEND.available()
if REASON is not None:
    pytest.skip(f"TensorRT engine tests need tensorrt, pycuda and an NVIDIA GPU: {REASON}", allow_module_level=True)

import tensorrt as trt  # noqa: E402

DIGITS = calib_root() / "digits"


def _profile(tmp: Path, int8_mode: str, dynamic: bool = False) -> object:
    from edgerep.targets import load_target

    major, minor = trt.__version__.split(".")[:2]
    text = f"""
name = "gpu-test"
description = "the GPU of this machine"
backend = "tensorrt"
precisions = ["fp16", "int8"]
opset = 17
dynamic_batch = {str(dynamic).lower()}
[latency]
batch_sizes = [1, 4]
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
    path = tmp / f"gpu-{int8_mode}-{dynamic}.toml"
    path.write_text(text)
    return load_target(path)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from edgerep.export import export_pipeline
    from edgerep.fuse import fuse
    from edgerep.models import load_model

    import torch

    root = tmp_path_factory.mktemp("trt-gpu")
    info = load_model("zoo:repvgg_digits")
    fused = fuse(info.module, torch.randn(*info.input_shape)).model
    result = export_pipeline(info, fused, root / "onnx", opset=17, dynamic_batch=False)
    return root, Path(result.sim_path)


def _ort(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


MODES = ["qdq"] if int(trt.__version__.split(".")[0]) >= 11 else ["calibrate", "qdq"]


@pytest.mark.parametrize("int8_mode", MODES)
def test_fp16_and_int8_engines_match_onnxruntime(export, int8_mode):
    root, sim = export
    profile = _profile(root, int8_mode)
    calib = open_data(DIGITS / "calib.npz", None, role="calib")
    with np.load(DIGITS / "val.npz") as data:
        x = data["x"][:64]
    ref = _ort(sim, x)
    out_dir = root / f"engines-{int8_mode}"
    for precision, min_cos in (("fp16", 0.999), ("int8", 0.98)):
        art = BACKEND.build(sim, precision, out_dir=out_dir, profile=profile,
                            calib=calib if precision == "int8" else None)
        assert art.status == "ok" and art.path.is_file()
        side = json.loads(art.sidecar.read_text())
        assert side["trt_version"] == trt.__version__ and side["precision"] == precision
        assert side["compute_capability"] and side["gpu_name"]
        runner = BACKEND.load(art)
        try:
            out = np.concatenate([runner.run(x[i:i + 1]) for i in range(len(x))])
            assert _cos(out, ref) > min_cos
            times = runner.latency(x[:1], 3, 10)
            assert len(times) == 10 and all(t > 0 for t in times)
        finally:
            runner.close()
        if precision == "int8" and int8_mode == "calibrate":
            assert side["calibration_cache_rejected"] is False  # TensorRT took the host cache as it is
    assert (out_dir / "timing.cache").stat().st_size > 0


def test_sidecar_guard_refuses_a_foreign_engine(export):
    from edgerep.artifacts import write_sidecar

    root, sim = export
    profile = _profile(root, MODES[-1])
    art = BACKEND.build(sim, "fp16", out_dir=root / "guard", profile=profile)
    side = json.loads(art.sidecar.read_text())
    body = {k: v for k, v in side.items() if k not in ("schema", "artifact", "files", "artifact_sha256", "created")}
    body["trt_version"] = "8.0.1" if not trt.__version__.startswith("8.0") else "10.3.0"
    write_sidecar(art.path, body)
    with pytest.raises(UserError, match="built with TensorRT"):
        BACKEND.load(art)


def test_dynamic_batch_engine(export, tmp_path):
    from edgerep.export import export_pipeline
    from edgerep.fuse import fuse
    from edgerep.models import load_model

    import torch

    info = load_model("zoo:repvgg_digits")
    fused = fuse(info.module, torch.randn(*info.input_shape)).model
    sim = Path(export_pipeline(info, fused, tmp_path / "onnx", opset=17, dynamic_batch=True).sim_path)
    profile = _profile(tmp_path, MODES[-1], dynamic=True)
    art = BACKEND.build(sim, "fp16", out_dir=tmp_path / "engines", profile=profile)
    runner = BACKEND.load(art)
    try:
        with np.load(DIGITS / "val.npz") as data:
            x = data["x"][:4]
        assert runner.run(x).shape == (4, 10) and runner.run(x[:1]).shape == (1, 10)
    finally:
        runner.close()


def test_validate_bundle_with_a_real_engine(export, tmp_path):
    from edgerep.commands.validate_bundle import run_validate_bundle
    from edgerep.trt.host import bundle_reference, update_bundle
    from edgerep.validate import Reference

    import shutil

    root, sim = export
    profile = _profile(root, MODES[-1])
    art = BACKEND.build(sim, "fp16", out_dir=tmp_path / "engines", profile=profile)
    bdir = update_bundle(tmp_path / "bundle", onnx_path=sim, profile=profile, precisions=["fp16"])
    val = open_data(DIGITS / "val.npz", None, role="val")
    with np.load(DIGITS / "val.npz") as data:
        ref = _ort(sim, data["x"])
    bundle_reference(bdir, Reference(outputs=ref, labels=val.labels, source=val))
    shutil.copy(art.path, bdir / "model.fp16.engine")
    shutil.copy(art.sidecar, bdir / "model.fp16.engine.json")
    assert run_validate_bundle(bundle=bdir, engine=bdir / "model.fp16.engine") == 0
