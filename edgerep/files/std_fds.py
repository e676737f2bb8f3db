"""The process's stdout and stderr file descriptors pointed elsewhere for a while.

Native libraries (onnxsim's C++, OpenVINO, ONNX Runtime) write to file descriptors 1 and 2 directly, past
Python's sys.stdout, so silencing or logging them means moving the descriptors themselves. Ground floor.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def std_fds_to(fd: int) -> Iterator[None]:
    """Point descriptors 1 and 2 at `fd` (an open file's fileno()) until the block ends, then restore them.
    Without descriptors 1 and 2 (a daemon) there is nothing to move: the block runs as it is."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        saved = os.dup(1), os.dup(2)
    except OSError:
        yield
        return
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
