"""One writer per output folder: an advisory lock on DIR/.edgerep.lock while a command writes into DIR.

Two runs writing one folder interleave their files (one model's engines under the other's manifest, a closing
line pointing at a report the other run has replaced). So every command that writes a folder (build, matrix,
sensitivity, fuse, export) holds an exclusive `fcntl.flock` on a file inside it from before its first write
until it returns; a second writer stops at once with a UserError naming the folder and the run that holds it.

The kernel drops a flock when its holder dies (even by SIGKILL), so a dead run never blocks the next one: the
file it leaves names it, and the next run notes that it takes the lock over. A run that ends normally removes
the file, so nothing that lists the folder afterwards sees it (the matrix's node-local cell folders included;
a killed cell leaves it: ship nothing named LOCK_NAME). Ground floor: no edgerep imports but errors.
"""
from __future__ import annotations

import functools
import inspect
import json
import os
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar, cast

from edgerep.errors import UserError
from edgerep.files.processes import pid_alive

try:
    import fcntl
except ImportError:  # Windows has no flock; msvcrt's byte-range locks are not worth a second code path: no lock there
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".edgerep.lock"
_COMMAND_CHARS = 200  # a command line longer than this is cut in the message


@dataclass
class _Held:
    fd: int
    pid: int  # the process that took it: a forked child inherits the table but is not the holder
    created: list[Path]  # the folders the lock made (deepest first), removed again if the run writes nothing
    mtime_ns: int  # the folder's mtime once the lock file was in: unchanged at the end = nothing written
    depth: int = 1


_held: dict[str, _Held] = {}  # real path of a folder -> this process's lock on it (nested takes are free)


@contextmanager
def output_lock(folder: Path | str | None) -> Iterator[None]:
    """Hold the lock on `folder` (created if missing) for the block; None: no folder, no lock.

    Raises UserError at once when another live process holds it. Taking it again inside the block (the build
    command, then the pipeline under it) is free. A folder that cannot be created or written gets no lock: the
    command's own write fails there and says so in its words. A run refused before its first write leaves no
    folder behind, as before there were locks."""
    if folder is None or fcntl is None:
        yield
        return
    folder = Path(folder)
    key = os.path.realpath(folder)
    held = _held.get(key)
    if held is not None and held.pid == os.getpid():
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
        return
    taken = _acquire(folder)
    if taken is None:
        yield
        return
    _held[key] = taken
    try:
        yield
    finally:
        del _held[key]
        _release(folder, taken)


F = TypeVar("F", bound=Callable[..., Any])


def locks_output(folder_of: str | Callable[[dict[str, Any]], Path | str | None]) -> Callable[[F], F]:
    """Run a command's function (keyword arguments) holding output_lock on its output folder: the keyword named
    `folder_of`, or what `folder_of` returns for the keywords (defaults filled in)."""
    def decorate(func: F) -> F:
        defaults = {name: p.default for name, p in inspect.signature(func).parameters.items()
                    if p.default is not inspect.Parameter.empty}

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            values = {**defaults, **kwargs}
            folder = values.get(folder_of) if isinstance(folder_of, str) else folder_of(values)
            with output_lock(folder):
                return func(*args, **kwargs)

        return cast(F, run)

    return decorate


def _acquire(folder: Path) -> _Held | None:
    """The open, locked lock file of `folder`, our details written in it; None when no file can be made there."""
    assert fcntl is not None
    path = folder / LOCK_NAME
    for _ in range(50):
        created = _missing_folders(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's details stay readable
        except FileNotFoundError:  # a run that wrote nothing removed the folder meanwhile
            continue
        except OSError:  # read-only, under a file, not a folder: nothing we write can land there either
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd, wait=1.0)
            os.close(fd)
            raise UserError(_busy_message(folder, holder)) from None
        except OSError:  # a filesystem without locks (some network mounts): run unlocked, as before
            os.close(fd)
            return None
        # The run before us removes the file on its way out: if it did after we opened it, we hold the lock of
        # a file no one else will open; start over on the one now at `path`.
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if not current:
            os.close(fd)
            continue
        previous = _read_holder(fd, wait=0.0)
        _write_holder(fd)
        if previous is not None:
            _note_takeover(folder, previous)
        return _Held(fd=fd, pid=os.getpid(), created=created, mtime_ns=os.stat(folder).st_mtime_ns)
    raise UserError(f"{folder}: could not take its lock {LOCK_NAME} (it kept being replaced); run again")


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def _release(folder: Path, held: _Held) -> None:
    """Remove the lock file (ours only: the same file still there) and, when the run added or removed nothing
    beside it, the folders the lock made; then let the lock go (closing the file drops the flock)."""
    path = folder / LOCK_NAME
    try:
        untouched = os.stat(folder).st_mtime_ns == held.mtime_ns
        if os.path.samestat(os.fstat(held.fd), os.stat(path)):
            os.unlink(path)
        for made in held.created if untouched else []:
            made.rmdir()  # fails on a folder someone else filled meanwhile: then it and its parents stay
    except OSError:
        pass
    os.close(held.fd)


def _holder_details() -> dict[str, Any]:
    now = time.time()
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line(), "started_unix": now,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now))}


def _command_line() -> str:
    """This process's command line as the user typed it: `edgerep ARGS` for `python -m edgerep(.cli)` too."""
    argv = list(sys.argv) or [""]
    head = Path(argv[0])
    if argv[0] == "-c":
        name = "python -c"
    elif head.name == "edgerep" or head.parent.name == "edgerep":  # the console script, or edgerep/cli.py, __main__.py
        name = "edgerep"
    else:
        name = head.parent.name if head.name == "__main__.py" else head.name.removesuffix(".py")
    text = " ".join([name, *(shlex.quote(a) for a in argv[1:])]).strip()
    return text if len(text) <= _COMMAND_CHARS else text[: _COMMAND_CHARS - 3] + "..."


def _write_holder(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_holder_details()) + "\n").encode(), 0)
    except OSError:  # a full disk: the lock holds without its details; the command's own writes will say why
        pass


def _read_holder(fd: int, *, wait: float) -> dict[str, Any] | None:
    """The details in the lock file, or None. `wait`: seconds to give a holder that has locked the file but not
    yet written them."""
    deadline = time.monotonic() + wait
    while True:
        try:
            body = json.loads(os.pread(fd, 1 << 16, 0).decode("utf-8", "replace") or "null")
        except (OSError, ValueError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("pid"), int):
            return body
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _who(holder: dict[str, Any]) -> str:
    here = holder.get("host") in (None, socket.gethostname())
    started = holder.get("started_unix")
    since = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float))
             else str(holder.get("started") or "an unknown time"))
    where = "" if here else f" on {holder.get('host')}"
    return f"pid {holder['pid']}{where} (`{holder.get('command') or '?'}`, since {since})"


def _busy_message(folder: Path, holder: dict[str, Any] | None) -> str:
    who = _who(holder) if holder is not None else f"another run (its {LOCK_NAME} does not say which yet)"
    return f"{folder}: in use by {who}; wait for it or pass another -o"


def _note_takeover(folder: Path, previous: dict[str, Any]) -> None:
    """One line on stderr: the lock file named a run that no longer holds it (killed, or its machine went down)."""
    pid = previous["pid"]
    if previous.get("host") not in (None, socket.gethostname()):
        state = "which no longer holds it"
    else:
        state = "which no longer runs" if not pid_alive(pid) else "which no longer holds it"
    sys.stderr.write(f"note: {folder}: taking over the lock of {_who(previous)}, {state}\n")
    sys.stderr.flush()
