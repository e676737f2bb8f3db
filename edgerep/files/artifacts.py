"""Writing artifacts safely and describing them.

Every file edgerep produces is written under a temporary name in the same folder and renamed when
complete (os.replace is atomic on one filesystem), so an interrupted run never leaves a file that
looks finished. Every engine gets a sidecar JSON ("<artifact>.json") saying how it was made.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from edgerep.errors import UserError

SIDECAR_SCHEMA = 1
_CHUNK = 1 << 20


@dataclass
class Artifact:
    """One built engine (or a stand-in that was skipped)."""

    backend: str
    precision: str
    path: Path | None  # the engine file (for OpenVINO the .xml; the .bin sits beside it)
    sidecar: Path | None = None
    status: str = "ok"  # ok | failed | skipped
    reason: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # backend-specific details for the report



def _partial_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.partial-{os.getpid()}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"atomic_path: nothing was written to {tmp}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_files(main_path: Path) -> Iterator[Path]:
    """For artifacts made of several files (model.xml + model.bin, model.onnx + model.onnx.data).

    Yields `<tmpdir>/<main name>` inside a temporary folder beside `main_path`; tools write the main file
    and its companions there under their final names (so references between them stay right). On
    success the companions are moved first and the main file last, so the main file's presence means
    the set is complete. On error the folder is removed.
    """
    main_path = Path(main_path)
    main_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = main_path.parent / f".{main_path.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    try:
        tmp_main = tmp_dir / main_path.name
        yield tmp_main
        if not tmp_main.exists():
            raise RuntimeError(f"atomic_files: nothing was written to {tmp_main}")
        for item in sorted(tmp_dir.iterdir()):
            if item.name != main_path.name:
                os.replace(item, main_path.parent / item.name)
        os.replace(tmp_main, main_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write `obj` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default)
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def file_sha256(path: Path) -> str:
    """Hex sha256 of one file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths: Iterable[Path]) -> str:
    """One hash over several files (e.g. an OpenVINO .xml and its .bin), in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode() + b"\0")
        digest.update(bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()


def array_sha256(arr: np.ndarray) -> str:
    """Hash of an array's dtype, shape and contents (C order)."""
    arr = np.ascontiguousarray(arr)
    digest = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    digest.update(arr.data)
    return digest.hexdigest()


def package_versions(*names: str) -> dict[str, str | None]:
    """Installed distribution versions (None when missing), for sidecars and reports."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def companion_files(artifact_path: Path) -> list[Path]:
    """Files an artifact needs beside it: OpenVINO's .bin, ONNX external data."""
    artifact_path = Path(artifact_path)
    candidates = [artifact_path.with_name(artifact_path.name + ".data")]
    if artifact_path.suffix == ".xml":
        candidates.insert(0, artifact_path.with_suffix(".bin"))
    return [c for c in candidates if c.is_file()]


def sidecar_path(artifact_path: Path) -> Path:
    artifact_path = Path(artifact_path)
    return artifact_path.with_name(artifact_path.name + ".json")


def write_sidecar(artifact_path: Path, info: dict) -> Path:
    """Write "<artifact>.json" beside the artifact: `info` plus the artifact's own hash and a timestamp.

    Call it after the artifact is in place: the sidecar is written last, so a sidecar whose
    artifact_sha256 matches the file means the pair is complete.
    """
    artifact_path = Path(artifact_path)
    files = [artifact_path, *companion_files(artifact_path)]
    body = {
        "schema": SIDECAR_SCHEMA,
        "artifact": artifact_path.name,
        "files": [p.name for p in files],
        "artifact_sha256": sha256_files(files),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **info,
    }
    path = sidecar_path(artifact_path)
    write_json_atomic(path, body)
    return path


def update_sidecar(artifact_path: Path, **fields: Any) -> None:
    """Add fields to a complete sidecar (e.g. where the engine was validated); a missing or stale one is left."""
    body = read_sidecar(artifact_path)
    if body is not None:
        write_json_atomic(sidecar_path(artifact_path), {**body, **fields})


def read_sidecar(artifact_path: Path) -> dict | None:
    """The sidecar of an artifact, or None when it is missing or does not match the files beside it."""
    artifact_path = Path(artifact_path)
    path = sidecar_path(artifact_path)
    if not path.is_file() or not artifact_path.is_file():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    files = [artifact_path.with_name(name) for name in body.get("files", [artifact_path.name])]
    if not all(p.is_file() for p in files) or body.get("artifact_sha256") != sha256_files(files):
        return None
    return body


def load_artifact(artifact_path: Path) -> Artifact:
    """Rebuild an Artifact (backend, precision, info) from an engine file and its sidecar."""

    artifact_path = Path(artifact_path)
    if not artifact_path.is_file():
        raise UserError(f"{artifact_path}: engine file not found")
    body = read_sidecar(artifact_path)
    if body is None:
        raise UserError(
            f"{artifact_path}: its sidecar {sidecar_path(artifact_path).name} is missing or does not match the file; rebuild it"
        )
    for key in ("backend", "precision"):
        if key not in body:
            raise UserError(f"{sidecar_path(artifact_path)}: no {key!r} field; rebuild the engine")
    return Artifact(backend=body["backend"], precision=body["precision"], path=artifact_path,
                    sidecar=sidecar_path(artifact_path), info=body)
