"""Atomic writes, hashes and sidecars (edgerep.files.artifacts)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from edgerep.errors import UserError
from edgerep.files.artifacts import (
    array_sha256,
    atomic_files,
    atomic_path,
    file_sha256,
    load_artifact,
    package_versions,
    read_sidecar,
    sha256_files,
    write_json_atomic,
    write_sidecar,
)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if "partial" in p.name)


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "engine.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # not visible until the block ends
    assert target.read_bytes() == b"new"
    assert _leftovers(tmp_path) == []


def test_atomic_path_failure_leaves_old_file_and_no_partial(tmp_path):
    target = tmp_path / "engine.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []

    fresh = tmp_path / "never.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(fresh) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert not fresh.exists() and _leftovers(tmp_path) == []


def test_atomic_path_requires_something_written(tmp_path):
    with pytest.raises(RuntimeError, match="nothing was written"):
        with atomic_path(tmp_path / "x.json"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_atomic_files_moves_companions_then_main(tmp_path):
    main = tmp_path / "sub" / "model.xml"
    with atomic_files(main) as tmp:
        assert tmp.name == "model.xml" and tmp.parent != main.parent
        tmp.write_text("<xml/>")
        tmp.with_suffix(".bin").write_bytes(b"\0" * 16)
    assert main.read_text() == "<xml/>" and (main.parent / "model.bin").stat().st_size == 16
    assert sorted(p.name for p in main.parent.iterdir()) == ["model.bin", "model.xml"]


def test_atomic_files_failure_leaves_nothing(tmp_path):
    main = tmp_path / "model.xml"
    with pytest.raises(ValueError):
        with atomic_files(main) as tmp:
            tmp.write_text("<xml/>")
            tmp.with_suffix(".bin").write_bytes(b"\0")
            raise ValueError("converter crashed")
    assert list(tmp_path.iterdir()) == []


def test_write_json_atomic_round_trip(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1, "p": tmp_path, "x": np.float32(0.5), "arr": np.arange(3)})
    assert json.loads(path.read_text()) == {"a": 1, "p": str(tmp_path), "x": 0.5, "arr": [0, 1, 2]}


def test_hashes(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"hello" * 100000)
    assert file_sha256(a) == hashlib.sha256(b"hello" * 100000).hexdigest()
    b = tmp_path / "b.bin"
    b.write_bytes(b"x")
    assert sha256_files([a, b]) != sha256_files([b, a])
    x = np.arange(12, dtype=np.float32)
    assert array_sha256(x) == array_sha256(x.copy())
    assert array_sha256(x) != array_sha256(x.reshape(3, 4))  # shape matters
    assert array_sha256(x) != array_sha256(x.astype(np.float64))  # dtype matters
    assert array_sha256(x[::2]) == array_sha256(np.ascontiguousarray(x[::2]))


def test_package_versions():
    found = package_versions("numpy", "surely-not-a-package-xyz")
    assert found["numpy"] == np.__version__
    assert found["surely-not-a-package-xyz"] is None


def test_sidecar_written_read_and_invalidated(tmp_path):
    xml = tmp_path / "model.fp32.xml"
    xml.write_text("<net/>")
    (tmp_path / "model.fp32.bin").write_bytes(b"\1\2\3")
    side = write_sidecar(xml, {"backend": "openvino", "precision": "fp32", "settings": {"k": 1}})
    assert side.name == "model.fp32.xml.json"
    body = read_sidecar(xml)
    assert body["files"] == ["model.fp32.xml", "model.fp32.bin"]
    assert body["backend"] == "openvino" and body["settings"] == {"k": 1}
    art = load_artifact(xml)
    assert (art.backend, art.precision, art.path) == ("openvino", "fp32", xml)

    (tmp_path / "model.fp32.bin").write_bytes(b"\1\2\4")  # the weights changed after the build
    assert read_sidecar(xml) is None
    with pytest.raises(UserError, match="does not match"):
        load_artifact(xml)


def test_load_artifact_without_sidecar(tmp_path):
    path = tmp_path / "model.fp32.onnx"
    with pytest.raises(UserError, match="not found"):
        load_artifact(path)
    path.write_bytes(b"onnx")
    with pytest.raises(UserError, match="sidecar"):
        load_artifact(path)
