"""`edgerep matrix --ray` on two Ray nodes that share no output folder (issue 22): a head (node a) and a second
node (node b) started on this machine with the `ray` CLI, each with its own temp dir and scratch root; every cell
is pinned to node b, the driver's -o is a folder no node builds in. In order, on one cluster:

  0. a matrix with a TensorRT cell on a cluster without a GPU is refused in one line before anything starts;
  1. node b is killed (SIGKILL of its raylet, agents and workers) while it builds: the driver ends on its own,
     and -o holds nothing that looks finished;
  2. node b is started again and the same command completes: every file arrives (size and sha256 as listed),
     the report is complete and names -o, the scratch folders are gone;
  3. the same command again reuses every cell and moves nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.digits_demo import needs_demo
from tests.matrix.matrix_files import matrix_toml
from tests.paths import REPO

pytestmark = [needs_demo, pytest.mark.slow]

CELL = "repvgg_digits--onnxruntime-cpu"
MATRIX = matrix_toml([{"name": "repvgg_digits", "spec": "zoo:repvgg_digits"}], ["onnxruntime-cpu"], ["fp32", "int8"],
                     calib_samples=64, val_samples=100)
GPU_MATRIX = matrix_toml([{"name": "repvgg_digits", "spec": "zoo:repvgg_digits"}],
                         ["onnxruntime-cpu", "jetson-orin-nano"], ["fp32", "fp16", "int8"], val_samples=50)


def driver_cmd(cluster, toml: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "edgerep.cli", "matrix", str(toml), "--ray", cluster.address, "-o", str(out)]


def driver_env() -> dict[str, str]:
    from tests.matrix.ray_nodes import driver_env as pinned

    path = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)
    return {**os.environ, **pinned("node_b"), "PYTHONPATH": path}


def tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'edgerep[ray]')")
    if shutil.which("ray") is None:
        pytest.skip("the `ray` command is not on PATH")
    from tests.matrix.ray_nodes import two_nodes

    root = tmp_path_factory.mktemp("ray-nodes")
    toml, gpu_toml, out = root / "m.toml", root / "gpu.toml", root / "out"
    toml.write_text(MATRIX)
    gpu_toml.write_text(GPU_MATRIX)
    result: dict = {"out": out}
    t_start = time.monotonic()
    cluster = two_nodes()
    result["cluster"] = cluster
    try:
        t0 = time.monotonic()
        result["gpu"] = subprocess.run(driver_cmd(cluster, gpu_toml, root / "gpu-out"), env=driver_env(),
                                       capture_output=True, text=True, timeout=120)
        result["gpu_seconds"] = time.monotonic() - t0

        # 1. node b dies in the middle of the build
        proc = subprocess.Popen(driver_cmd(cluster, toml, out), env=driver_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 180
            building = None
            while building is None and proc.poll() is None and time.monotonic() < deadline:
                building = next(cluster.scratch("b").glob(f"{CELL}.*/onnx/model.onnx"), None)
                time.sleep(0.1)
            result["killed_mid_build"] = building is not None and proc.poll() is None
            result["killed_pids"] = cluster.kill_worker()
            t0 = time.monotonic()
            _, err = proc.communicate(timeout=240)
            result["killed"] = {"code": proc.returncode, "err": err, "seconds": time.monotonic() - t0}
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        result["after_kill"] = tree(out)
        result["after_kill_state"] = json.loads((out / "cells" / CELL / "cell.json").read_text()) \
            if (out / "cells" / CELL / "cell.json").is_file() else None
        leftover = set(cluster.scratch("b").iterdir()) if cluster.scratch("b").is_dir() else set()

        # 2. node b back: the same command completes
        cluster.start_worker()
        result["resumed"] = subprocess.run(driver_cmd(cluster, toml, out), env=driver_env(), capture_output=True,
                                           text=True, timeout=300)
        result["resumed_doc"] = json.loads((out / "matrix.json").read_text())
        result["scratch_b_after"] = set(cluster.scratch("b").iterdir()) - leftover
        result["scratch_a_used"] = cluster.scratch("a").exists()
        result["mtimes"] = {p: (out / p).stat().st_mtime_ns for p in tree(out)}

        # 3. unchanged: nothing built, nothing moved
        result["again"] = subprocess.run(driver_cmd(cluster, toml, out), env=driver_env(), capture_output=True,
                                         text=True, timeout=300)
        result["again_doc"] = json.loads((out / "matrix.json").read_text())
        result["mtimes_again"] = {p: (out / p).stat().st_mtime_ns for p in result["mtimes"]}
    finally:
        cluster.stop()
    result["seconds"] = time.monotonic() - t_start
    return result


def test_tensorrt_cells_without_a_gpu_node_are_refused_before_anything_starts(runs):
    from tests.cli_helpers import error_line

    proc = runs["gpu"]
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc.stderr)
    assert "1 TensorRT cell(s) need a GPU node and no node of the cluster has a GPU" in line
    assert "[ray] num_gpus = 0" in line
    gpu_out = runs["out"].parent / "gpu-out" / "cells"
    assert not gpu_out.exists() or not any(gpu_out.iterdir())  # no cell started, not even the CPU one


def test_killed_worker_node_leaves_nothing_that_looks_finished(runs):
    from edgerep.matrix.transfer import PARTIAL

    assert runs["killed_mid_build"], "node b was not caught mid-build"
    assert runs["killed_pids"]
    killed = runs["killed"]
    assert killed["code"] == 1, killed["err"]  # the driver ended by itself: the cell is recorded as crashed
    assert "CRASHED repvgg_digits on onnxruntime-cpu" in killed["err"]
    assert not [p for p in runs["after_kill"] if PARTIAL in p]
    state = runs["after_kill_state"]
    assert state is not None and state["status"] == "crashed" and state["phase"] == "done"
    assert "no alive node" in state["reason"] or "failed twice" in state["reason"]
    assert not state.get("report") and f"cells/{CELL}/report.json" not in runs["after_kill"]
    assert not any(p.startswith(f"cells/{CELL}/engines/") for p in runs["after_kill"])


def test_rerun_after_the_node_is_back_delivers_every_file(runs):
    from edgerep.files.artifacts import file_sha256

    proc, doc, out = runs["resumed"], runs["resumed_doc"], runs["out"]
    assert proc.returncode == 0, proc.stderr
    assert doc["run"]["mode"] == "ray" and doc["run"]["nodes"] == 2
    assert [(r["precision"], r["passed"]) for r in doc["records"]] == [("fp32", True), ("int8", True)]
    assert all(r["latency_ms"]["p50"] > 0 and r["accuracy"]["top1"] >= 95.0 for r in doc["records"])
    cell = out / "cells" / CELL
    state = json.loads((cell / "cell.json").read_text())
    assert state["phase"] == "done" and state["status"] == "ok"
    listed = {f["path"]: f for f in state["files"]}
    assert {"report.json", "report.md", "engines/model.fp32.onnx", "engines/model.int8.onnx", "onnx/model.sim.onnx",
            "logs/build.log", "latency_accuracy.png"} <= set(listed)
    for rel, entry in listed.items():
        assert (cell / rel).stat().st_size == entry["size"] and file_sha256(cell / rel) == entry["sha256"], rel
    moved = doc["run"]["transfer"]
    assert moved["cells"] == 1 and moved["bytes"] >= sum(f["size"] for f in state["files"] if f["size"] > 1 << 20)
    report = json.loads((cell / "report.json").read_text())
    assert report["latency"]["measured"] is True and "node that built it" in report["latency"]["how"]
    text = (cell / "report.json").read_text() + (cell / "engines" / "model.int8.onnx.json").read_text()
    assert str(cell) in text and "scratch-" not in text  # paths name -o, never the node's scratch
    assert not runs["scratch_b_after"]  # the timing task removed the cell's scratch folder
    assert not runs["scratch_a_used"]  # nothing ran on the head: the cells were pinned to node b
    md = (out / "matrix.md").read_text()
    assert "| repvgg_digits | pass" in md and (out / "matrix.png").stat().st_size > 10_000


def test_unchanged_rerun_reuses_every_cell_and_moves_nothing(runs):
    proc, doc = runs["again"], runs["again_doc"]
    assert proc.returncode == 0, proc.stderr
    assert all(c["reused"] for c in doc["cells"])
    assert doc["run"]["transfer"]["bytes"] == 0 and doc["run"]["transfer"]["cells"] == 0
    engines = {p for p in runs["mtimes"] if "/engines/" in p}
    assert engines and all(runs["mtimes_again"][p] == runs["mtimes"][p] for p in engines)
