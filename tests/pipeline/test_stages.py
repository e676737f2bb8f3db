"""The build's stages one at a time (edgerep.pipeline.stages): each takes explicit inputs and gives explicit outputs, and the
cache keys change exactly when an input that matters changes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgerep.errors import UserError
from edgerep.pipeline import stages
from edgerep.targets import load_target


def test_plan_stage_refuses_before_any_work():
    plan = stages.plan_stage("onnxruntime-cpu", None, backend_options={}, max_drop=None)
    assert plan.precisions == ["fp32", "int8"] and plan.backend.name == "onnxruntime"
    with pytest.raises(UserError, match="--precision fp16: target onnxruntime-cpu"):
        stages.plan_stage("onnxruntime-cpu", "fp16", backend_options={}, max_drop=None)
    with pytest.raises(UserError, match="--dla-core: only for TensorRT targets"):
        stages.plan_stage("openvino-cpu", None, backend_options={"dla_core": 0}, max_drop=None)


def test_load_data_and_onnx_key_follow_the_weights():
    log = stages.StageLog(None)
    kwargs = dict(weights=None, input_shape=None, num_classes=None, trust_pickle=False, seed=0)
    a = stages.load_stage(log, "zoo:repvgg_digits", **kwargs)
    b = stages.load_stage(log, "zoo:repvgg_digits", **kwargs)
    profile = load_target("openvino-cpu")
    key = dict(fuse_tol=1e-4, export_tol=1e-4, simplifier="onnxsim")
    assert stages.onnx_key(a, profile, **key) == stages.onnx_key(b, profile, **key)
    with torch.no_grad():
        next(b.info.module.parameters()).add_(1e-3)
    b = stages.Loaded(b.info, stages.state_sha256(b.info.module))
    assert stages.onnx_key(a, profile, **key) != stages.onnx_key(b, profile, **key)
    assert stages.onnx_key(a, profile, **key) != stages.onnx_key(a, load_target("jetson-nano"), **key)  # opset 13
    data = stages.data_stage(log, a.info, calib=None, val=None, need_calib=True, preprocess={})
    assert data.calib is not None and data.val_source.has_labels
    assert [s["name"] for s in log.stages] == ["load", "load", "data"]


def test_onnx_stage_reuses_its_product(tmp_path: Path):
    log = stages.StageLog(None)
    loaded = stages.load_stage(log, "zoo:repvgg_digits", weights=None, input_shape=None, num_classes=None,
                               trust_pickle=False, seed=0)
    profile = load_target("onnxruntime-cpu")
    kwargs = dict(force=False, seed=0, fuse_tol=1e-4, export_tol=1e-4, simplifier="onnxsim")
    manifest = stages.prepare_output(tmp_path)
    first = stages.onnx_stage(log, loaded, profile, tmp_path, manifest, **kwargs)
    again = stages.onnx_stage(log, loaded, profile, tmp_path, stages.read_manifest(tmp_path), **kwargs)
    assert first.sim_sha256 == again.sim_sha256 and first.sim_path.is_file()
    assert [(s["name"], s["status"]) for s in log.stages[1:]] == [
        ("fuse", "done"), ("export", "built"), ("fuse", "reused"), ("export", "reused")]
    backend = stages.plan_stage("onnxruntime-cpu", None, backend_options={}, max_drop=None).backend
    k32 = stages.engine_key(first, backend, "fp32", {}, None, profile)
    assert k32 != stages.engine_key(first, backend, "int8", {}, None, profile)
    assert k32 == stages.engine_key(again, backend, "fp32", {}, None, profile)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombies are read from Linux's /proc")
def test_a_killed_unreaped_writer_leaves_no_temporaries_behind(tmp_path):
    """A run killed with its parent (a matrix driver and its pool worker) can stay a zombie when nothing reaps it
    (a container's pid 1): kill(pid, 0) still answers, yet its half-written files are stale and the next run drops
    them, while a live writer's are kept."""
    import os
    import signal
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.05)  # killed, not yet reaped: a zombie
        dead = tmp_path / "onnx" / f".model.onnx.partial-{child.pid}"
        live = tmp_path / "onnx" / f".model.onnx.partial-{os.getpid()}"
        for path in (dead, live):
            path.mkdir(parents=True)
        stages.remove_stale_partials(tmp_path)
        assert not dead.exists() and live.exists()
    finally:
        child.wait()
