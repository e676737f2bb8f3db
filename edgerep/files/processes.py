"""Whether a process id still names a running process: the question behind a killed run's leftovers (its
`.partial-<pid>` temporaries, its output-folder lock). Ground floor: no edgerep imports."""
from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (this process included; another user's process counts as running). A killed process
    nobody reaped (its parent died with it, and a container's pid 1 may never reap it) still answers
    kill(pid, 0), but it writes nothing any more: a zombie counts as dead."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Linux only (/proc): the state letter after the command's closing parenthesis."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return bool(fields) and fields[0] in ("Z", "X")
