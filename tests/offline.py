"""Run Python in a fresh interpreter with the network refused, and say what tried to reach it."""
from __future__ import annotations

import os
import subprocess
import sys

_REFUSE = """
import socket
calls = []
def refuse(*args, **kwargs):
    calls.append(args[:1])
    raise OSError("network disabled by the test")
socket.getaddrinfo = refuse
socket.socket.connect = lambda self, *a: refuse(*a)
socket.create_connection = refuse
"""


def network_calls(code: str) -> str:
    """Run `code` in a fresh interpreter (Ultralytics' YOLO_* variables unset: edgerep sets them itself) with every
    socket lookup or connection refused; returns its stdout, ending in "calls [...]": what tried to go out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLO_")}
    proc = subprocess.run([sys.executable, "-c", _REFUSE + code + '\nprint("calls", calls)\n'], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout
