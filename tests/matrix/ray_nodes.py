"""A Ray cluster of two nodes on this machine, started with the `ray` CLI as a user would (`ray start --head`, then
`ray start --address`), each node with its own temp dir, its own resource label ({"node_a": 1} / {"node_b": 1})
and its own scratch root ($EDGEREP_SCRATCH in the node's environment). For tests/matrix/test_ray_nodes.py and
scripts/bench_matrix.py.

Every process of a node is found by its temp dir on its command line (the raylet, its agents, the log monitor)
plus their descendants (the workers), so a node can be killed alone and the cluster stopped without `ray stop`,
which would stop every Ray process on the machine, other users' too.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Token authentication is on by default for `ray start` from Ray 2.5x; these nodes are on loopback, for a test.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def processes_of(marker: str) -> list[int]:
    """The processes whose command line holds `marker`, and all their descendants."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    parents = {pid: _ppid(pid) for pid in pids}
    found = {pid for pid in pids if marker in _cmdline(pid) and pid != os.getpid()}
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return sorted(found)


def kill_all(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class Cluster:
    root: Path  # short, under /tmp: Ray's socket paths live in the temp dirs and must fit in 107 bytes
    port: int = field(default_factory=free_port)
    head_cpus: int = 1
    worker_cpus: int = 2

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def temp_dir(self, node: str) -> Path:
        return self.root / node

    def scratch(self, node: str) -> Path:
        return self.root / f"scratch-{node}"

    def _start(self, node: str, args: list[str]) -> None:
        self.temp_dir(node).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **RAY_ENV, "EDGEREP_SCRATCH": str(self.scratch(node))}
        cmd = ["ray", "start", *args, "--resources", json.dumps({f"node_{node}": 1}),
               "--temp-dir", str(self.temp_dir(node)), "--object-store-memory", str(100 * 2**20),
               "--disable-usage-stats"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")

    def start_head(self) -> None:
        self._start("a", ["--head", "--port", str(self.port), "--num-cpus", str(self.head_cpus),
                          "--include-dashboard", "false"])

    def start_worker(self) -> None:
        self._start("b", ["--address", self.address, "--num-cpus", str(self.worker_cpus)])
        self.wait_nodes(2)

    def wait_nodes(self, count: int, timeout: float = 60) -> None:
        """Until the head lists `count` alive nodes (`ray status` would print the same from the GCS)."""
        code = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False); "
                "print(sum(1 for n in ray.nodes() if n['Alive']))")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = subprocess.run([sys.executable, "-c", code, self.address], capture_output=True, text=True, timeout=60,
                                  env={**os.environ, **RAY_ENV})
            if proc.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(1)
        raise RuntimeError(f"the cluster at {self.address} did not reach {count} alive nodes")

    def kill_worker(self) -> list[int]:
        """SIGKILL every process of node b (its raylet, agents and workers), as when the machine dies."""
        pids = processes_of(f"{self.temp_dir('b')}/")
        kill_all(pids)
        return pids

    def stop(self) -> None:
        for node in ("b", "a"):
            kill_all(processes_of(f"{self.temp_dir(node)}/"), signal.SIGTERM)
        time.sleep(1)
        for node in ("b", "a"):
            kill_all(processes_of(f"{self.temp_dir(node)}/"))
        shutil.rmtree(self.root, ignore_errors=True)


def two_nodes(head_cpus: int = 1, worker_cpus: int = 2) -> Cluster:
    """Start the head (node a) and node b; the caller stops it (Cluster.stop) in a finally."""
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="er-ray-", dir="/tmp")), head_cpus=head_cpus,
                      worker_cpus=worker_cpus)
    try:
        cluster.start_head()
        cluster.start_worker()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def driver_env(pin: str = "node_b") -> dict[str, str]:
    """The environment of an `edgerep matrix --ray` driver whose cells are all pinned to one node."""
    from edgerep.matrix.executors import TEST_RESOURCES_ENV

    return {**RAY_ENV, TEST_RESOURCES_ENV: json.dumps({pin: 1})}
