"""Moving a cell's files between a Ray node's scratch folder and the driver's output folder, without a shared
filesystem and without holding a whole file in memory.

A sender lists the folder first (a manifest: relative path, size, sha256 per file), then streams every file in
the manifest's order as chunks of CHUNK_BYTES. The receiver writes each file under a temporary name in the
destination, hashing as it writes, and renames it only when its size and sha256 match the manifest; anything
else deletes the temporary file and raises TransferError. So a file under its final name is always complete,
and the caller (edgerep.matrix.executors) writes the cell's state (cell.json) only after the last file.

Nothing here imports Ray: the chunks are plain bytes, whatever carries them.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

from edgerep.files.output_lock import LOCK_NAME

CHUNK_BYTES = 4 << 20  # a few MB: big enough that per-object overhead is small, small enough to hold a handful
PARTIAL = ".transfer-"  # temporary names: <name>.transfer-<pid>
TEXT_SUFFIXES = (".json", ".md", ".log", ".txt")  # the files that may name the folder they were written in


class TransferError(RuntimeError):
    """A file did not arrive whole (short, long, or a different sha256)."""


class WriteError(RuntimeError):
    """The destination folder refused a file (a full disk, a folder in the way): sending again would not help."""


def manifest(root: Path, *, skip: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Every file under `root` (sorted, relative paths with '/'), with its size and sha256; `skip` names
    relative paths to leave out (the cell's state, which the receiver writes itself)."""
    from edgerep.files.artifacts import file_sha256

    root = Path(root)
    skipped = set(skip)
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in skipped or PARTIAL in path.name or path.name == LOCK_NAME:  # a killed run's lock is no artifact
            continue
        entries.append({"path": rel, "size": path.stat().st_size, "sha256": file_sha256(path)})
    return entries


def read_chunks(root: Path, entries: list[dict[str, Any]], chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The bytes of every file of `entries`, in order, chunk by chunk (an empty file gives no chunk)."""
    for entry in entries:
        with open(Path(root) / entry["path"], "rb") as f:
            while True:
                chunk = f.read(chunk_bytes)
                if not chunk:
                    break
                yield chunk


def receive(dest: Path, entries: list[dict[str, Any]], chunks: Iterator[bytes]) -> int:
    """Write the files of `entries` into `dest` from the chunk stream; returns the bytes written. Each file is
    renamed into place only once it matches its manifest entry; on any error its temporary file is removed and
    the error propagates (files already renamed are complete and stay)."""
    dest = Path(dest)
    total = 0
    pending = b""  # the part of a chunk that belongs to the next file (chunks never span files when we send them,
    # but a receiver should not depend on how the sender cut the stream)
    for entry in entries:
        final = dest / entry["path"]
        tmp = final.with_name(f"{final.name}{PARTIAL}{os.getpid()}")
        digest = hashlib.sha256()
        need = int(entry["size"])
        try:
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                f = open(tmp, "wb")
            except OSError as exc:
                raise WriteError(f"{final}: cannot write ({exc.strerror or exc})") from None
            with f:
                while need > 0:
                    if not pending:
                        pending = next(chunks, b"")
                        if not pending:
                            raise TransferError(f"{entry['path']}: the stream ended {need} bytes short")
                    piece, pending = pending[:need], pending[need:]
                    try:
                        f.write(piece)
                    except OSError as exc:
                        raise WriteError(f"{final}: cannot write ({exc.strerror or exc})") from None
                    digest.update(piece)
                    need -= len(piece)
            if digest.hexdigest() != entry["sha256"]:
                raise TransferError(f"{entry['path']}: sha256 differs from the manifest")
            try:
                os.replace(tmp, final)
            except OSError as exc:
                raise WriteError(f"{final}: cannot write ({exc.strerror or exc})") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        total += int(entry["size"])
    if pending or next(chunks, b""):
        raise TransferError("the stream holds more bytes than the manifest lists")
    return total


def clear_partials(folder: Path) -> None:
    """Remove temporary files a killed receiver left behind."""
    folder = Path(folder)
    if folder.is_dir():
        for path in folder.rglob(f"*{PARTIAL}*"):
            if path.is_file():
                path.unlink(missing_ok=True)


def rewrite_paths(root: Path, old: str, new: str) -> None:
    """Replace the folder name `old` by `new` in the text files under `root` (reports, sidecars, logs), so a
    cell built in scratch reads as if it had been built where it is delivered."""
    from edgerep.files.artifacts import atomic_path

    if old == new:
        return
    for path in Path(root).rglob("*"):
        if not path.is_file() or path.suffix not in TEXT_SUFFIXES:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if old in text:
            with atomic_path(path) as tmp:
                tmp.write_text(text.replace(old, new), encoding="utf-8")


def scratch_root() -> Path:
    """Where this node builds cells: $EDGEREP_SCRATCH (set in the environment of `ray start`), else a folder in
    the node's temp dir."""
    import tempfile

    return Path(os.environ.get("EDGEREP_SCRATCH") or Path(tempfile.gettempdir()) / "edgerep-scratch")


def new_scratch(name: str) -> Path:
    import tempfile

    root = scratch_root()
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}.", dir=root))


def drop_scratch(folder: str | Path | None) -> None:
    """Remove a scratch folder (only one under this node's scratch root)."""
    if not folder:
        return
    folder = Path(folder)
    if folder.resolve().parent == scratch_root().resolve():
        shutil.rmtree(folder, ignore_errors=True)
