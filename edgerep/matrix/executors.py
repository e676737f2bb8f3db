"""Where the cells of `edgerep matrix` run: a local process pool (the default) or Ray tasks (`--ray`).

Both run the same two functions of edgerep.matrix in two phases, so timing never shares the cores:
  1. build_cell for every cell, in parallel. Locally: `workers` spawned processes, each capped to
     cores // workers runtime threads, writing straight into -o. On Ray: one task per cell declaring the CPUs
     its threads are capped to (and, for TensorRT targets, a GPU and the device's resource); it builds in a
     scratch folder on its node and streams the files back to the driver, which alone writes -o.
  2. time_cell for every built cell, one cell per machine at a time. Locally: one uncapped process after the
     pool has finished. On Ray: a task pinned to the node that built the cell and declaring all of that node's
     CPUs, so Ray runs nothing else there while it times the engines still in its scratch.
We write no scheduler of our own: concurrent.futures and Ray do the queueing; Ray's object store carries the files.
"""
from __future__ import annotations

import socket
from typing import Any, Callable

from edgerep.errors import UserError, one_line
from edgerep.matrix.transfer import WriteError

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


TEST_RESOURCES_ENV = "EDGEREP_RAY_TEST_RESOURCES"  # JSON {"name": amount} every cell also asks for (tests pin cells)
WATCH_S = 2.0  # how often a wait for Ray looks at the cluster: a task no alive node can hold is failed, not awaited
BACKPRESSURE = 8  # chunks a cell's task may have in the object store before the driver has read them


def cell_demand(job: dict[str, Any], *, threads: int, num_gpus: float, resources: dict[str, float]) -> dict[str, Any]:
    """What one cell asks Ray for: the CPUs its runtimes are capped to; a TensorRT cell also `num_gpus` and, when
    its target is a named device (a Jetson profile), one unit of that device's resource (such a node starts with
    `ray start --resources '{"jetson_orin_nano": 1}'`). `resources`: asked by every cell (tests pin cells)."""
    from edgerep.matrix.cells import device_resource

    wanted = dict(resources)
    gpus = 0.0
    if job.get("backend") == "tensorrt" and num_gpus > 0:
        gpus = float(num_gpus)
        kind = device_resource(job["target_arg"])
        if kind:
            wanted[kind] = 1.0
    return {"num_cpus": threads, "num_gpus": gpus, "resources": wanted}


def fits(demand: dict[str, Any], have: dict[str, float]) -> bool:
    """Whether a node with the resources `have` (Ray's totals) can run a task asking `demand`."""
    want = {"CPU": demand["num_cpus"], "GPU": demand["num_gpus"], **demand["resources"]}
    return all(have.get(k, 0.0) >= v for k, v in want.items() if v)


def placement_error(demands: list[tuple[dict[str, Any], dict[str, Any]]], nodes: list[dict[str, float]]) -> str | None:
    """Why some cell (job, demand) cannot run on any of `nodes` (their resources), or None."""
    for job, want in demands:
        if any(fits(want, have) for have in nodes):
            continue
        if want["num_gpus"] and not any(have.get("GPU") for have in nodes):
            count = sum(1 for j, w in demands if w["num_gpus"])
            return (f"{count} TensorRT cell(s) need a GPU node and no node of the cluster has a GPU; join one "
                    f"(`ray start --address=...` on a GPU machine) or set [ray] num_gpus = 0 in the matrix to build "
                    f"device bundles on CPU nodes")
        asked = ", ".join(f"{k}={v:g}" for k, v in {"CPU": want["num_cpus"], "GPU": want["num_gpus"],
                                                     **want["resources"]}.items() if v)
        return (f"cell {job['cell']} asks for {asked} and no node of the cluster has that; start a node with those "
                f"resources (`ray start --resources`) or lower [ray] num_cpus in the matrix")
    return None


class RayExecutor:
    """Cells as Ray tasks, on nodes that share no folder with the driver.

    Build: a task per cell builds in a scratch folder on its node (transfer.new_scratch), then streams back, as a
    Ray generator, a manifest and the cell's files in chunks; the driver writes them into the cell's folder in -o
    (transfer.receive: temporary names, renamed once size and sha256 match) and writes cell.json last. A task or
    transfer that fails is run once more, then the cell is recorded as crashed; a retried cell starts clean.
    Time: a task pinned to the node that built the cell, holding all of that node's CPUs, times the engines still
    in its scratch (nothing moves but the numbers) and removes the scratch. When that scratch is gone (the node
    left, or the run was killed between the phases) the driver ships the cell's files from -o to a node that can
    run the cell and times them there. Timing where the engines were built keeps TensorRT cells on their GPU.
    """

    name = "ray"

    def __init__(self, address: str | None, *, num_cpus: float = 1.0, num_gpus: float = 1.0) -> None:
        import json
        import os

        self.ray = connect_ray(address)
        self.address = address or "local"
        self.threads = max(1, int(num_cpus))  # a CPU cell asks for exactly the cores its runtimes are capped to
        self.num_gpus = num_gpus
        try:
            self.resources: dict[str, float] = json.loads(os.environ.get(TEST_RESOURCES_ENV) or "{}")
        except ValueError:
            raise UserError(f"${TEST_RESOURCES_ENV}: not JSON; set it like '{{\"node_b\": 1}}' or unset it") from None
        self.moved = {"cells": 0, "files": 0, "bytes": 0, "seconds": 0.0, "retries": 0, "shipped_for_timing": 0}

    def describe(self) -> dict[str, Any]:
        nodes = self._alive()
        return {"mode": "ray", "address": self.address, "nodes": len(nodes),
                "cpus": sum(n.get("Resources", {}).get("CPU", 0) for n in nodes.values()),
                "num_cpus_per_cell": self.threads, "transfer": dict(self.moved)}

    # --- resources ---------------------------------------------------------------------------------

    def demand(self, job: dict[str, Any]) -> dict[str, Any]:
        return cell_demand(job, threads=self.threads, num_gpus=self.num_gpus, resources=self.resources)

    def _alive(self) -> dict[str, dict[str, Any]]:
        return {n["NodeID"]: n for n in self.ray.nodes() if n.get("Alive")}

    @staticmethod
    def _fits(demand: dict[str, Any], node: dict[str, Any]) -> bool:
        return fits(demand, node.get("Resources", {}))

    def _check_placeable(self, jobs: list[dict[str, Any]]) -> None:
        """Refuse, before anything starts, a matrix whose cells no node of the cluster can run."""
        why = placement_error([(job, self.demand(job)) for job in jobs],
                              [n.get("Resources", {}) for n in self._alive().values()])
        if why:
            raise UserError(f"--ray {self.address}: {why}")

    def _options(self, want: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"num_cpus": want["num_cpus"], "num_gpus": want["num_gpus"]}
        if want["resources"]:
            out["resources"] = want["resources"]
        return out

    # --- build ---------------------------------------------------------------------------------------

    def build(self, jobs: list[dict[str, Any]], done: Callback) -> None:
        if not jobs:
            return
        self._check_placeable(jobs)
        # max_calls=1: a fresh worker per cell, so one cell's thread cap never carries into the next task.
        task = self.ray.remote(max_calls=1)(_ray_build_cell)

        def submit(job: dict[str, Any]) -> Any:
            return task.options(num_returns="streaming", max_retries=0,
                                _generator_backpressure_num_objects=BACKPRESSURE,
                                **self._options(self.demand(job))).remote(job)

        pending = [(submit(job), job, 0) for job in jobs]
        while pending:
            ready, _ = self.ray.wait([p[0] for p in pending], num_returns=1, timeout=WATCH_S)
            if not ready:
                pending = self._drop_unplaceable(pending, done, lambda job, why: _crashed(job, why))
                continue
            item = next(p for p in pending if p[0] is ready[0] or p[0] == ready[0])
            pending.remove(item)
            gen, job, tries = item
            try:
                outcome = self._receive(gen, job)
            except WriteError as exc:  # -o refused a file: a second build would meet the same disk
                self._cancel(gen)
                outcome = {**_crashed(job, str(exc)), "status": "error"}
            except Exception as exc:  # the task failed, its node died, or a file arrived damaged
                self._cancel(gen)
                if tries == 0:
                    self.moved["retries"] += 1
                    pending.append((submit(job), job, 1))
                    continue
                outcome = _crashed(job, f"Ray task or its transfer failed twice: {one_line(exc)}")
            done(outcome)

    def _receive(self, gen: Any, job: dict[str, Any]) -> dict[str, Any]:
        """Write one cell's streamed files into its folder in -o; cell.json comes last, so a cell whose transfer
        broke off has no state that vouches for it (the next run builds it again)."""
        import time
        from pathlib import Path

        from edgerep.matrix.cells import CELL_STATE, write_cell_state
        from edgerep.matrix.transfer import clear_partials, receive

        ray = self.ray
        head = ray.get(next(gen))
        outcome, files = head["outcome"], head["files"]
        t0 = time.perf_counter()
        dest = Path(job["cell_dir"])
        try:
            dest.mkdir(parents=True, exist_ok=True)
            (dest / CELL_STATE).unlink(missing_ok=True)  # the previous state must not vouch for files being replaced
            clear_partials(dest)
        except OSError as exc:
            raise WriteError(f"{dest}: cannot write ({exc.strerror or exc})") from None
        moved = receive(dest, files, (ray.get(ref) for ref in gen))
        self.moved["cells"] += 1
        self.moved["files"] += len(files)
        self.moved["bytes"] += moved
        self.moved["seconds"] += time.perf_counter() - t0
        outcome["files"] = [{"path": f["path"], "size": f["size"], "sha256": f["sha256"]} for f in files]
        write_cell_state(dest, {**outcome, "phase": "accuracy" if outcome.get("report") else "done"})
        return outcome

    def _drop_unplaceable(self, pending: list[tuple[Any, dict[str, Any], Any]], done: Callback,
                          fail: Callable[[dict[str, Any], str], dict[str, Any]]) -> list[tuple[Any, dict[str, Any], Any]]:
        """Fail the waiting tasks that no alive node can run any more (a node left the cluster): Ray would keep
        them queued for ever."""
        nodes = self._alive()
        keep = []
        for item in pending:
            ref, job, extra = item
            pinned = job.get("_pinned")
            if (nodes.get(pinned) is not None) if pinned else any(self._fits(self.demand(job), n) for n in nodes.values()):
                keep.append(item)
                continue
            self._cancel(ref)
            done(fail(job, "no alive node of the Ray cluster can run it any more (a node left the cluster)"))
        return keep

    def _cancel(self, ref: Any) -> None:
        try:
            self.ray.cancel(ref)  # a generator still streaming stops, and its scratch is removed
        except Exception:  # already finished, or gone with its node
            pass

    # --- time ----------------------------------------------------------------------------------------

    def time(self, jobs: list[dict[str, Any]], done: Callback) -> None:
        pending: list[tuple[Any, dict[str, Any], Any]] = []

        def failed(job: dict[str, Any], why: str) -> dict[str, Any]:
            return {"cell": job["cell"], "latency": {}, "stages": [], "node": None, "reason": f"latency not measured: {why}"}

        def submit(job: dict[str, Any], ship: bool) -> None:
            item = self._submit_time(job, ship)
            if item is None:
                done(failed(job, "no alive node of the Ray cluster can run this cell"))
            else:
                pending.append(item)

        nodes = self._alive()
        for job in jobs:
            submit(job, ship=not (job.get("scratch") and job.get("node_id") in nodes))
        while pending:
            ready, _ = self.ray.wait([p[0] for p in pending], num_returns=1, timeout=WATCH_S)
            if not ready:
                pending = self._drop_unplaceable(pending, done, failed)
                continue
            item = next(p for p in pending if p[0] is ready[0] or p[0] == ready[0])
            pending.remove(item)
            ref, job, shipped = item
            try:
                result = self.ray.get(ref)
            except Exception as exc:  # the node died while timing, or the task failed
                if not shipped:
                    submit(job, ship=True)
                else:
                    done(failed(job, one_line(exc)))
                continue
            if result.get("scratch_missing") and not shipped:
                submit(job, ship=True)
                continue
            done(result)

    def _submit_time(self, job: dict[str, Any], ship: bool) -> tuple[Any, dict[str, Any], bool] | None:
        """A timing task holding all of one node's CPUs: the node that built the cell (its scratch still holds
        the engines), or with `ship` any node that can run the cell, with the cell's files sent from -o."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = self._alive()
        want = self.demand(job)
        if ship:
            node_id = next((nid for nid, n in nodes.items() if self._fits(want, n)), None)
        else:
            node_id = job.get("node_id")
        if node_id not in nodes:
            return None
        have = nodes[node_id].get("Resources", {})
        options = {"num_cpus": have.get("CPU", 1), "num_gpus": have.get("GPU", 0) if want["num_gpus"] else 0,
                   "max_retries": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)}
        uploads = self._upload(job) if ship else None
        ref = self.ray.remote(_ray_time_cell).options(**options).remote(job, uploads)
        return ref, {**job, "_pinned": node_id}, ship

    def _upload(self, job: dict[str, Any]) -> list[tuple[dict[str, Any], list[Any]]]:
        """The cell's files from -o as object-store chunks (one chunk in the driver's memory at a time)."""
        from pathlib import Path

        from edgerep.matrix.cells import CELL_STATE
        from edgerep.matrix.transfer import manifest, read_chunks

        root = Path(job["cell_dir"])
        files = manifest(root, skip=[CELL_STATE])
        uploads = [(entry, [self.ray.put(chunk) for chunk in read_chunks(root, [entry])]) for entry in files]
        self.moved["shipped_for_timing"] += 1
        self.moved["files"] += len(files)
        self.moved["bytes"] += sum(int(e["size"]) for e in files)
        return uploads


def _ray_build_cell(job: dict[str, Any]) -> Any:
    """Build one cell in a scratch folder on this node, then yield {"outcome", "files"} and the files' chunks.
    The scratch stays when the cell has engines to time (the timing task removes it)."""
    import ray

    from edgerep.matrix import transfer
    from edgerep.matrix.cells import CELL_STATE, build_cell, timed_engines

    scratch = transfer.new_scratch(job["cell"])
    keep = delivered = False
    try:
        outcome = build_cell({**job, "cell_dir": str(scratch)})
        transfer.rewrite_paths(scratch, str(scratch), job["cell_dir"])  # reports name the -o folder, as locally
        files = transfer.manifest(scratch, skip=[CELL_STATE])
        keep = bool(outcome.get("report")) and bool(timed_engines(scratch / "report.json"))
        outcome.update(node_id=ray.get_runtime_context().get_node_id(), scratch=str(scratch) if keep else None)
        yield {"outcome": outcome, "files": files}
        yield from transfer.read_chunks(scratch, files)
        delivered = True
    finally:  # cancelled, failed, or nothing left to time here
        if not (keep and delivered):
            transfer.drop_scratch(scratch)


def _ray_time_cell(job: dict[str, Any], uploads: list[tuple[dict[str, Any], list[Any]]] | None) -> dict[str, Any]:
    """Time a cell's engines in this node's scratch: the one its build left, or a new one filled from `uploads`."""
    from pathlib import Path

    import ray

    from edgerep.matrix import transfer
    from edgerep.matrix.cells import time_cell

    if uploads is not None:
        scratch = transfer.new_scratch(job["cell"])
        try:
            for entry, refs in uploads:
                transfer.receive(scratch, [entry], (ray.get(ref) for ref in refs))
        except BaseException:
            transfer.drop_scratch(scratch)
            raise
    elif job.get("scratch") and Path(job["scratch"]).is_dir():
        scratch = Path(job["scratch"])
    else:
        return {"cell": job["cell"], "scratch_missing": True}
    try:
        dest = Path(job["cell_dir"])
        engines = []
        for eng in job["engines"]:  # the report names -o; the engines are here
            path = Path(eng["path"])
            if not path.is_absolute() or path.is_relative_to(dest):
                path = scratch / (path.relative_to(dest) if path.is_absolute() else path)
            engines.append({**eng, "path": str(path)})
        return time_cell({**job, "cell_dir": str(scratch), "engines": engines})
    finally:
        transfer.drop_scratch(scratch)
