"""TensorRT engines on a real GPU: FP16 and INT8 (calibrate and Q/DQ) built from the demo RepVGG's export,
run with the pycuda runner, compared with ONNX Runtime, guarded by their sidecars, a rejected calibration
cache, a foreign timing cache, the bundle's check_engine.py and `validate --bundle` on a .engine.

Marked `tensorrt`: on a machine with tensorrt, pycuda and an NVIDIA GPU, `python -m pytest -m tensorrt` runs
them; elsewhere they skip with the reason. The profiles they write come from trt_gpu_profiles.py (next to this
file), which test_tensorrt_api.py loads on every machine.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgerep.backends import get_backend
from edgerep.errors import UserError
from tests.backends.tensorrt.trt_gpu_profiles import gpu_int8_modes, gpu_opset, write_gpu_profile
from tests.digits_demo import DIGITS, digits_data, export_demo

pytestmark = pytest.mark.tensorrt
BACKEND = get_backend("tensorrt")
REASON = BACKEND.available()
if REASON is not None:
    pytest.skip(f"TensorRT engine tests need tensorrt, pycuda and an NVIDIA GPU: {REASON}", allow_module_level=True)

import tensorrt as trt  # noqa: E402

MODES = gpu_int8_modes(trt.__version__)


def _profile(tmp: Path, int8_mode: str, dynamic: bool = False):
    from edgerep.targets import load_target

    return load_target(write_gpu_profile(tmp, trt.__version__, int8_mode, dynamic))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt-gpu")
    _, _, sim = export_demo(root / "onnx", opset=gpu_opset(trt.__version__), dynamic_batch=False)
    return root, sim


def _ort(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _val(n: int = 64) -> np.ndarray:
    with np.load(DIGITS / "val.npz") as data:
        return data["x"][:n]


@pytest.mark.parametrize("int8_mode", MODES)
def test_fp16_and_int8_engines_match_onnxruntime(export, int8_mode):
    root, sim = export
    profile = _profile(root, int8_mode)
    calib = digits_data("calib")
    x = _val()
    ref = _ort(sim, x)
    out_dir = root / f"engines-{int8_mode}"
    plans = {}
    for precision, min_cos in (("fp16", 0.999), ("int8", 0.98)):
        art = BACKEND.build(sim, precision, out_dir=out_dir, profile=profile,
                            calib=calib if precision == "int8" else None)
        assert art.status == "ok" and art.path.is_file()
        side = json.loads(art.sidecar.read_text())
        assert side["trt_version"] == trt.__version__ and side["precision"] == precision
        assert side["compute_capability"] and side["gpu_name"]
        plans[precision] = art.path.read_bytes()
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
            # the same scales in the Q/DQ prediction: the engine agrees with it closely
            qdq = _ort(Path(art.info["qdq"]), x)
            assert _cos(out, qdq) > 0.99
    assert plans["int8"] != plans["fp16"]  # the INT8 flag/graph changed the engine
    assert (out_dir / "timing.cache").stat().st_size > 0


def test_sidecar_guard_refuses_a_foreign_engine(export):
    from edgerep.files.artifacts import write_sidecar

    root, sim = export
    profile = _profile(root, MODES[-1])
    art = BACKEND.build(sim, "fp16", out_dir=root / "guard", profile=profile)
    side = json.loads(art.sidecar.read_text())
    body = {k: v for k, v in side.items() if k not in ("schema", "artifact", "files", "artifact_sha256", "created")}
    body["trt_version"] = "8.0.1" if not trt.__version__.startswith("8.0") else "10.3.0"
    write_sidecar(art.path, body)
    with pytest.raises(UserError, match="built with TensorRT"):
        BACKEND.load(art)


def test_foreign_timing_cache_is_replaced_and_the_engine_keeps_its_sidecar(export, tmp_path, capfd):
    """A timing cache TensorRT rejects: a warning naming the file, a build without it, a new cache, and an engine
    with its sidecar (the guard then loads it)."""
    root, sim = export
    profile = _profile(root, MODES[-1])
    out_dir = tmp_path / "engines"
    out_dir.mkdir()
    (out_dir / "timing.cache").write_bytes(b"not a timing cache" * 64)
    art = BACKEND.build(sim, "fp16", out_dir=out_dir, profile=profile)
    assert "timing.cache: TensorRT rejected this timing cache" in capfd.readouterr().err
    assert (out_dir / "timing.cache").read_bytes() != b"not a timing cache" * 64
    runner = BACKEND.load(art)  # the sidecar is there and matches
    runner.close()


@pytest.mark.skipif("calibrate" not in MODES, reason="TensorRT 11 has no calibrators")
def test_rejected_calibration_cache_calibrates_on_real_batches(export, tmp_path):
    """A cache TensorRT does not take (here: another calibrator's algorithm in its header): the calibrator then
    feeds real batches, the sidecar says the cache was rejected, and the engine is still accurate."""
    from edgerep.backends.tensorrt import host
    from edgerep.files.artifacts import read_sidecar, write_sidecar

    root, sim = export
    profile = _profile(root, "calibrate")
    calib = digits_data("calib")
    out_dir = tmp_path / "engines"
    cal = profile.calibration
    int8 = host.prepare_int8(sim, profile, calib, out_dir / host.HOST_DIR, method=cal.method,
                             num_samples=cal.num_samples)
    cache = Path(int8["cache"])
    side = read_sidecar(cache)
    lines = cache.read_text().splitlines()
    lines[0] = lines[0].rsplit("-", 1)[0] + "-MinMaxCalibration"
    cache.write_text("\n".join(lines) + "\n")
    write_sidecar(cache, {k: v for k, v in side.items() if k not in ("schema", "artifact", "files", "artifact_sha256",
                                                                     "created")})
    art = BACKEND.build(sim, "int8", out_dir=out_dir, profile=profile, calib=calib)
    assert json.loads(art.sidecar.read_text())["calibration_cache_rejected"] is True
    x = _val()
    runner = BACKEND.load(art)
    try:
        out = np.concatenate([runner.run(x[i:i + 1]) for i in range(len(x))])
    finally:
        runner.close()
    assert _cos(out, _ort(sim, x)) > 0.98


def test_dynamic_batch_engine(export, tmp_path):
    _, _, sim = export_demo(tmp_path / "onnx", opset=gpu_opset(trt.__version__), dynamic_batch=True)
    profile = _profile(tmp_path, MODES[-1], dynamic=True)
    art = BACKEND.build(sim, "fp16", out_dir=tmp_path / "engines", profile=profile)
    runner = BACKEND.load(art)
    try:
        x = _val(4)
        assert runner.run(x).shape == (4, 10) and runner.run(x[:1]).shape == (1, 10)
    finally:
        runner.close()


def test_validate_bundle_and_check_engine_with_a_real_engine(export, tmp_path):
    from edgerep.backends.tensorrt.host import bundle_reference, update_bundle
    from edgerep.commands.validate_bundle import run_validate_bundle
    from edgerep.validate.engine import Reference

    root, sim = export
    profile = _profile(root, MODES[-1])
    art = BACKEND.build(sim, "fp16", out_dir=tmp_path / "engines", profile=profile)
    bdir = update_bundle(tmp_path / "bundle", onnx_path=sim, profile=profile, precisions=["fp16"])
    val = digits_data("val")
    with np.load(DIGITS / "val.npz") as data:
        ref = _ort(sim, data["x"])
    bundle_reference(bdir, Reference(outputs=ref, labels=val.labels, source=val))
    shutil.copy(art.path, bdir / "model.fp16.engine")
    shutil.copy(art.sidecar, bdir / "model.fp16.engine.json")
    assert run_validate_bundle(bundle=bdir, engine=bdir / "model.fp16.engine") == 0
    # the standalone device script runs the same engine with the API of this TensorRT version
    proc = subprocess.run([sys.executable, "check_engine.py", "model.fp16.engine"], capture_output=True, text=True,
                          cwd=str(bdir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["passed"] and result["accuracy"]["cosine"] > 0.999
