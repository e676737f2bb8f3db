"""Where the cells of `edgerep matrix` run: a local process pool (the default) or Ray tasks (`--ray`).

Both run the same two functions of edgerep.matrix in two phases, so timing never shares the cores:
  1. build_cell for every cell, in parallel. Locally: `workers` spawned processes, each capped to
     cores // workers runtime threads. On Ray: one task per cell declaring
     num_cpus (threads capped to it) and, for TensorRT targets, num_gpus.
  2. time_cell for every built cell, one cell per machine at a time. Locally: one uncapped process after the
     pool has finished. On Ray: a task pinned to the node that built the cell and declaring all of that node's
     CPUs, so Ray runs nothing else there while it times.
We write no scheduler of our own: concurrent.futures and Ray do the queueing.
"""
from __future__ import annotations

import socket
from typing import Any, Callable

from edgerep.errors import UserError, one_line

RAY_CONNECT_TIMEOUT_S = 5.0  # TCP connect to the head
RAY_PROBE_TIMEOUT_S = 20.0  # joining it, in a child process
Callback = Callable[[dict[str, Any]], None]


# --- local process pool ----------------------------------------------------------------------------


class LocalExecutor:
    """A pool of `workers` processes; runtime threads per worker = usable cores // workers."""

    name = "local"

    def __init__(self, workers: int | None) -> None:
        from edgerep.cpu.threads import usable_cores

        cores = usable_cores()
        self.workers = max(1, workers if workers else min(cores, 4))
        self.threads = max(1, cores // self.workers)

    def describe(self) -> dict[str, Any]:
        return {"mode": "local", "workers": self.workers, "threads_per_worker": self.threads}

    def build(self, jobs: list[dict[str, Any]], done: Callback) -> None:
        from edgerep.matrix.cells import build_cell

        broken = self._pool_run(build_cell, jobs, done, workers=self.workers, capped=True)
        # A worker that died (segfault, OOM kill) takes the pool down with every cell in flight: rerun those one
        # at a time in fresh pools, so only the cell that kills its worker is recorded as crashed.
        for job in broken:
            if self._pool_run(build_cell, [job], done, workers=1, capped=True):
                done(_crashed(job, "the worker process died (killed or out of memory)"))

    def time(self, jobs: list[dict[str, Any]], done: Callback) -> None:
        from edgerep.matrix.cells import time_cell

        for job in self._pool_run(time_cell, jobs, done, workers=1, capped=False):
            done({"cell": job["cell"], "latency": {}, "stages": [], "node": socket.gethostname(),
                  "reason": "latency not measured: the timing process died"})

    def _pool_run(self, fn: Any, jobs: list[dict[str, Any]], done: Callback, *, workers: int,
                  capped: bool) -> list[dict[str, Any]]:
        """Run fn over jobs in a spawned pool; returns the jobs lost to a dead worker."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        if not jobs:
            return []
        ctx = multiprocessing.get_context("spawn")  # fork after torch/OpenMP started threads can deadlock
        lost = []
        # Threads are capped, not pinned to cores: on a shared machine a pinned worker cannot move off a busy core.
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                                 initargs=(self.threads if capped else None,)) as pool:
            futures = {pool.submit(fn, job): job for job in jobs}
            for fut in as_completed(futures):
                try:
                    done(fut.result())
                except BrokenProcessPool:
                    lost.append(futures[fut])
        return lost


def _init_worker(threads: int | None) -> None:
    if threads is None:
        return
    from edgerep.cpu.threads import cap_threads

    cap_threads(threads)


def _crashed(job: dict[str, Any], reason: str) -> dict[str, Any]:
    return {"cell": job["cell"], "key": job["key"], "status": "crashed", "reason": reason, "report": None,
            "engine_batch": None, "stages": [], "node": None, "seconds": None}


# --- Ray -------------------------------------------------------------------------------------------


def connect_ray(address: str | None) -> Any:
    """Join (or start) a Ray cluster: None or "local" starts one on this machine, "auto" joins the one running
    here, anything else is host:port or ray://host:port. An address that does not answer fails within
    RAY_CONNECT_TIMEOUT_S with one line (Ray itself would retry for minutes)."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray: ray is not installed; pip install 'edgerep[ray]'") from None
    if ray.is_initialized():  # a caller (a test, a notebook) already connected
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address in (None, "", "local"):
        ray.init(**kwargs)
        return ray
    if address != "auto":  # a refused or silent port fails here within seconds
        host, port = _host_port(address)
        try:
            socket.create_connection((host, port), timeout=RAY_CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise UserError(f"--ray {address}: no answer from {host}:{port} within {RAY_CONNECT_TIMEOUT_S:g} s "
                            f"({exc.strerror or exc}); start the head with `ray start --head` and pass its address"
                            ) from None
    _probe_ray(address)
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"--ray {address}: cannot join the Ray cluster ({str(exc).strip().splitlines()[0][:200]}); "
                        f"start one with `ray start --head`, or pass --ray alone for a local one") from None
    return ray


def _probe_ray(address: str) -> None:
    """Join the cluster once in a child process with a deadline: a port that answers but is no Ray head makes
    ray.init retry (and log) for a long time, and a thread stuck in ray.init cannot be stopped."""
    import subprocess
    import sys

    code = ("import sys, ray; ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, "
            "configure_logging=False); ray.shutdown()")
    try:
        proc = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True,
                              timeout=RAY_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"--ray {address}: no Ray cluster answered within {RAY_PROBE_TIMEOUT_S:g} s; check the address "
                        f"(`ray status` on the head node) or pass --ray alone for a local cluster") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if "Error" in ln or "error" in ln] or ["unknown error"]
        raise UserError(f"--ray {address}: cannot join the Ray cluster ({lines[-1].strip()[:200]}); start one with "
                        f"`ray start --head`, or pass --ray alone for a local one")


def _host_port(address: str) -> tuple[str, int]:
    text = address.split("://", 1)[-1]
    default = 10001 if address.startswith("ray://") else 6379
    host, _, port = text.rpartition(":")
    if not host:
        return text, default
    try:
        return host, int(port)
    except ValueError:
        raise UserError(f"--ray {address}: expected host:port, ray://host:port, auto, or nothing") from None


class RayExecutor:
    """Cells as Ray tasks. Artifacts go straight into the output folder, which every node must reach (a shared
    path such as NFS; on one machine any folder is)."""

    name = "ray"

    def __init__(self, address: str | None, *, num_cpus: float = 1.0, num_gpus: float = 1.0) -> None:
        self.ray = connect_ray(address)
        self.address = address or "local"
        self.num_cpus = max(num_cpus, 0.001)
        self.num_gpus = num_gpus

    def describe(self) -> dict[str, Any]:
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        return {"mode": "ray", "address": self.address, "nodes": len(nodes),
                "cpus": sum(n.get("Resources", {}).get("CPU", 0) for n in nodes),
                "num_cpus_per_cell": self.num_cpus}

    def build(self, jobs: list[dict[str, Any]], done: Callback) -> None:
        ray = self.ray
        task = ray.remote(_ray_build_cell)
        refs = {}
        for job in jobs:
            gpus = self.num_gpus if job.get("backend") == "tensorrt" else 0
            job = {**job, "threads": max(1, int(self.num_cpus))}
            refs[task.options(num_cpus=self.num_cpus, num_gpus=gpus, max_retries=1).remote(job)] = job
        self._drain(refs, done, lambda job, exc: _crashed(job, f"Ray task failed: {one_line(exc)}"))

    def time(self, jobs: list[dict[str, Any]], done: Callback) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.ray
        cpus = {n["NodeID"]: n.get("Resources", {}).get("CPU", 1) for n in ray.nodes() if n.get("Alive")}
        task = ray.remote(_ray_time_cell)
        refs = {}
        for job in jobs:
            node = job.get("node_id") if job.get("node_id") in cpus else None
            options: dict[str, Any] = {"max_retries": 0}
            if node is not None:  # the node that built it, all of its CPUs: nothing else runs there meanwhile
                options.update(num_cpus=cpus[node],
                               scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False))
            refs[task.options(**options).remote(job)] = job
        self._drain(refs, done, lambda job, exc: {"cell": job["cell"], "latency": {}, "stages": [], "node": None,
                                                   "reason": f"latency not measured: {one_line(exc)}"})

    def _drain(self, refs: dict[Any, dict[str, Any]], done: Callback, on_error: Any) -> None:
        ray = self.ray
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    done(ray.get(ref))
                except Exception as exc:  # RayTaskError, WorkerCrashedError, node lost
                    done(on_error(refs[ref], exc))


def _ray_build_cell(job: dict[str, Any]) -> dict[str, Any]:
    import ray

    from edgerep.matrix.cells import build_cell

    outcome = build_cell(job)
    outcome["node_id"] = ray.get_runtime_context().get_node_id()
    return outcome


def _ray_time_cell(job: dict[str, Any]) -> dict[str, Any]:
    from edgerep.matrix.cells import time_cell

    return time_cell(job)



