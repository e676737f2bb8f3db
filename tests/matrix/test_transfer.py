"""edgerep.matrix.transfer (a cell's files streamed in chunks and written atomically into -o), the Ray resources a
cell asks for and whether a cluster can hold them, and the reuse check on a delivered cell's file list. No Ray
needed: the chunks are bytes, the cluster a list of node resources as Ray reports them."""
from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import pytest

from edgerep.matrix import transfer
from edgerep.matrix.cells import Cell, device_resource, reusable, write_cell_state
from edgerep.matrix.executors import cell_demand, fits, placement_error
from edgerep.matrix.transfer import PARTIAL, TransferError, WriteError


def make_cell(folder: Path) -> None:
    (folder / "engines").mkdir(parents=True)
    (folder / "engines" / "model.onnx").write_bytes(os.urandom(3 * 2**20 + 17))  # several chunks and a tail
    (folder / "empty.txt").write_bytes(b"")
    (folder / "report.json").write_text(json.dumps({"path": str(folder / "engines" / "model.onnx")}))
    (folder / "cell.json").write_text("{}")


def test_manifest_then_chunks_rebuild_the_folder_exactly(tmp_path):
    src, dest = tmp_path / "scratch", tmp_path / "out"
    make_cell(src)
    files = transfer.manifest(src, skip=["cell.json"])
    assert [f["path"] for f in files] == ["empty.txt", "engines/model.onnx", "report.json"]
    moved = transfer.receive(dest, files, transfer.read_chunks(src, files, chunk_bytes=1 << 20))
    assert moved == sum(f["size"] for f in files)
    for f in files:
        assert (dest / f["path"]).read_bytes() == (src / f["path"]).read_bytes()
    assert not (dest / "cell.json").exists()  # the receiver writes the state itself, last
    assert not list(dest.rglob(f"*{PARTIAL}*"))


def test_receiving_a_big_file_holds_about_one_chunk(tmp_path):
    src, dest = tmp_path / "scratch", tmp_path / "out"
    src.mkdir()
    (src / "big.onnx").write_bytes(os.urandom(40 * 2**20))
    files = transfer.manifest(src)
    tracemalloc.start()
    try:
        transfer.receive(dest, files, transfer.read_chunks(src, files, chunk_bytes=1 << 20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, peak  # 40 MB moved, never more than a few 1 MB chunks alive
    assert (dest / "big.onnx").stat().st_size == 40 * 2**20


def test_a_damaged_chunk_leaves_no_file_under_its_name(tmp_path):
    src, dest = tmp_path / "scratch", tmp_path / "out"
    make_cell(src)
    files = transfer.manifest(src, skip=["cell.json"])
    chunks = list(transfer.read_chunks(src, files, chunk_bytes=1 << 20))
    chunks[1] = bytes([chunks[1][0] ^ 1]) + chunks[1][1:]  # one bit flipped in the engine
    with pytest.raises(TransferError, match="engines/model.onnx: sha256 differs"):
        transfer.receive(dest, files, iter(chunks))
    assert (dest / "empty.txt").exists()  # complete files before it stay: they are whole
    assert not (dest / "engines" / "model.onnx").exists() and not list(dest.rglob(f"*{PARTIAL}*"))


def test_a_short_or_long_stream_fails(tmp_path):
    src = tmp_path / "scratch"
    make_cell(src)
    files = transfer.manifest(src, skip=["cell.json"])
    chunks = list(transfer.read_chunks(src, files))
    with pytest.raises(TransferError, match="bytes short"):
        transfer.receive(tmp_path / "a", files, iter(chunks[:-1]))
    assert not (tmp_path / "a" / "report.json").exists() and not list((tmp_path / "a").rglob(f"*{PARTIAL}*"))
    with pytest.raises(TransferError, match="more bytes than the manifest"):
        transfer.receive(tmp_path / "b", files, iter(chunks + [b"x"]))


def test_a_folder_in_the_way_is_a_write_error_naming_the_file(tmp_path):
    src, dest = tmp_path / "scratch", tmp_path / "out"
    make_cell(src)
    (dest / "engines" / "model.onnx").mkdir(parents=True)
    files = transfer.manifest(src, skip=["cell.json"])
    with pytest.raises(WriteError, match=r"engines/model.onnx: cannot write \(Is a directory\)"):
        transfer.receive(dest, files, transfer.read_chunks(src, files))
    assert not list(dest.rglob(f"*{PARTIAL}*"))


def test_clear_partials_removes_what_a_killed_receiver_left(tmp_path):
    (tmp_path / "engines").mkdir()
    left = tmp_path / "engines" / f"model.onnx{PARTIAL}123"
    left.write_bytes(b"half")
    (tmp_path / "report.json").write_text("{}")
    transfer.clear_partials(tmp_path)
    assert not left.exists() and (tmp_path / "report.json").exists()


def test_rewrite_paths_changes_text_files_only(tmp_path):
    make_cell(tmp_path / "s")
    binary = (tmp_path / "s" / "engines" / "model.onnx").read_bytes()
    transfer.rewrite_paths(tmp_path / "s", str(tmp_path / "s"), "/out/cells/x")
    assert json.loads((tmp_path / "s" / "report.json").read_text()) == {"path": "/out/cells/x/engines/model.onnx"}
    assert (tmp_path / "s" / "engines" / "model.onnx").read_bytes() == binary


def test_scratch_lives_under_the_nodes_root_and_only_that_is_dropped(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEREP_SCRATCH", str(tmp_path / "root"))
    folder = transfer.new_scratch("cell")
    assert folder.parent == tmp_path / "root" and folder.name.startswith("cell.")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    transfer.drop_scratch(outside)  # not a scratch folder of this node: kept
    transfer.drop_scratch(folder)
    assert outside.is_dir() and not folder.exists()


# --- resources -------------------------------------------------------------------------------------

CPU_JOB = {"cell": "m--onnxruntime-cpu", "backend": "onnxruntime", "target_arg": "onnxruntime-cpu"}
ORIN_JOB = {"cell": "m--jetson-orin-nano", "backend": "tensorrt", "target_arg": "jetson-orin-nano"}
TRT_JOB = {"cell": "m--tensorrt-10", "backend": "tensorrt", "target_arg": "tensorrt-10"}


def test_device_resource_names_the_jetson_a_profile_describes():
    assert device_resource("jetson-orin-nano") == "jetson_orin_nano"
    assert device_resource("jetson-agx-orin") == "jetson_agx_orin"
    assert device_resource("tensorrt-10") is None  # any GPU
    assert device_resource("onnxruntime-cpu") is None


def test_cell_demand_cpu_gpu_and_device():
    assert cell_demand(CPU_JOB, threads=2, num_gpus=1, resources={}) == {"num_cpus": 2, "num_gpus": 0.0, "resources": {}}
    assert cell_demand(ORIN_JOB, threads=1, num_gpus=1, resources={"node_b": 1}) == {
        "num_cpus": 1, "num_gpus": 1.0, "resources": {"node_b": 1, "jetson_orin_nano": 1.0}}
    assert cell_demand(TRT_JOB, threads=1, num_gpus=1, resources={})["resources"] == {}
    # num_gpus = 0: TensorRT cells build device bundles on any CPU node
    assert cell_demand(ORIN_JOB, threads=1, num_gpus=0, resources={}) == {"num_cpus": 1, "num_gpus": 0.0, "resources": {}}


CPU_NODE = {"CPU": 2.0, "memory": 1e9}
GPU_NODE = {"CPU": 8.0, "GPU": 1.0}
ORIN_NODE = {"CPU": 6.0, "GPU": 1.0, "jetson_orin_nano": 1.0}


def test_fits_checks_every_resource():
    want = cell_demand(ORIN_JOB, threads=1, num_gpus=1, resources={})
    assert fits(want, ORIN_NODE) and not fits(want, GPU_NODE) and not fits(want, CPU_NODE)
    assert fits(cell_demand(CPU_JOB, threads=2, num_gpus=1, resources={}), CPU_NODE)
    assert not fits(cell_demand(CPU_JOB, threads=4, num_gpus=1, resources={}), CPU_NODE)


def demands(*jobs: dict, threads: int = 1) -> list:
    return [(j, cell_demand(j, threads=threads, num_gpus=1, resources={})) for j in jobs]


def test_placement_error_says_what_is_missing_in_one_line():
    assert placement_error(demands(CPU_JOB, TRT_JOB), [CPU_NODE, GPU_NODE]) is None
    why = placement_error(demands(CPU_JOB, TRT_JOB, ORIN_JOB), [CPU_NODE])
    assert why is not None and why.startswith("2 TensorRT cell(s) need a GPU node and no node of the cluster has")
    why = placement_error(demands(ORIN_JOB), [CPU_NODE, GPU_NODE])  # a GPU, but not that device
    assert why is not None and "cell m--jetson-orin-nano asks for CPU=1, GPU=1, jetson_orin_nano=1" in why
    why = placement_error(demands(CPU_JOB, threads=4), [CPU_NODE])
    assert why is not None and "asks for CPU=4" in why and "[ray] num_cpus" in why
    assert "\n" not in why


# --- reuse of a delivered cell ---------------------------------------------------------------------


def test_a_delivered_cell_is_reused_only_while_its_listed_files_are_whole(tmp_path):
    cell = Cell(model="m", target="onnxruntime-cpu", target_arg="onnxruntime-cpu", backend="onnxruntime",
                precisions=["fp32"], unsupported=[], options={}, key="k1")
    make_cell(tmp_path)
    files = transfer.manifest(tmp_path, skip=["cell.json"])
    write_cell_state(tmp_path, {"key": "k1", "phase": "done", "status": "ok", "report": "report.json", "files": files})
    assert reusable(cell, tmp_path, force=False) is not None
    with open(tmp_path / "engines" / "model.onnx", "r+b") as f:
        f.truncate(100)  # a file cut short (a copy that broke off, a disk that filled)
    assert reusable(cell, tmp_path, force=False) is None
    (tmp_path / "engines" / "model.onnx").unlink()
    assert reusable(cell, tmp_path, force=False) is None
