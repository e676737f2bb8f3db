"""Latency you can compare: every engine of a build timed side by side, in interleaved rounds, in a fresh process.

On a shared CPU one engine's latency moves 1.5x between two measurements minutes apart, and inside a build it is
timed after PyTorch, NNCF and the runtimes' compilers have run in the same process (their thread pools, caches and
allocations). So the engines are timed together, after every one of them is built and validated, in a child
process that imports only the runtimes: warm-up first, then `rounds` rounds in which each engine runs in turn (the
order rotates every round), each for `per_round` timed calls. A round's medians were measured minutes apart at most
seconds, so the ratio of two engines within one round cancels the machine's drift; recommend.speedup_interval turns
the per-round ratios into an interval.

Per engine and batch size the result is the median of the round medians (`p50`), their range (`spread`), the
pooled p90/p99 and throughput, and `round_p50`, the round medians themselves.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from edgerep.validate.latency import latency_stats, record_fields, repeat_to, skipped_batch

if TYPE_CHECKING:
    from edgerep.backends.base import Runner

TIMEOUT_S = 1800  # a child that hangs is killed; the build keeps its accuracy results
# Untimed calls at the start of every turn: the engine timed before may leave its threads spinning (OpenMP's
# busy-wait after a parallel region, PyTorch's above all) and the caches hold its weights; two calls hand over.
TURN_WARMUP = 2


def interleaved(runners: Mapping[str, Runner], batch: np.ndarray, *, rounds: int, warmup: int,
                per_round: int) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Time every runner on `batch` in `rounds` interleaved rounds (see the module docstring); returns each one's
    figures (summarize) and the order the runners were timed in."""
    if rounds < 1 or per_round < 1:
        raise ValueError("rounds and per_round must be >= 1")
    names = list(runners)
    for name in names:
        runners[name].latency(batch, warmup, 1)
    times: dict[str, list[float]] = {n: [] for n in names}
    round_p50: dict[str, list[float]] = {n: [] for n in names}
    order: list[str] = []
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            calls = list(runners[name].latency(batch, TURN_WARMUP, per_round))
            times[name] += calls
            round_p50[name].append(float(np.median(calls)))
            order.append(name)
    return {n: summarize(times[n], round_p50[n], batch_size=int(batch.shape[0])) for n in names}, order


def summarize(times_ms: list[float], round_p50: list[float], *, batch_size: int) -> dict[str, Any]:
    """One engine's figures at one batch size: the median of its round medians and their range, pooled p90/p99."""
    stats = latency_stats(times_ms, batch_size=batch_size)
    p50 = float(np.median(round_p50))
    stats.update(p50=p50, throughput_ips=batch_size * 1000.0 / p50 if p50 > 0 else None, rounds=len(round_p50),
                 round_p50=[float(v) for v in round_p50], spread=[float(min(round_p50)), float(max(round_p50))])
    return stats


def time_engines(engines: Mapping[str, Path], sample: np.ndarray, *, batch_sizes: list[int], engine_batch: int,
                 dynamic_batch: bool, rounds: int, warmup: int, iterations: int, fresh_process: bool = True,
                 modules: Mapping[str, Any] | None = None,
                 fixed_batch: Mapping[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """Every engine (name -> engine file with its sidecar) at every batch size it takes, interleaved; returns
    name -> {latency_ms, latency_batch_size, latency_by_batch, throughput_ips}, the fields of an engine record.
    `iterations` timed calls per engine and batch size in all (at least 10 a round). `fresh_process`: time in a
    child process (the build's own state left behind), else here (the child itself, and tests).
    `modules`: name -> models.load_model's arguments of a PyTorch model timed with them (the unfused original, loaded
    by the timing process itself: validate.torch_runner; it takes every batch size). `fixed_batch`: name -> the only
    batch size that engine takes (an engine made elsewhere, e.g. by Ultralytics' exporter at batch 1), whatever the
    build's own engines take."""
    work = Path(tempfile.mkdtemp(prefix="edgerep-timing-"))
    entries: dict[str, dict[str, Any]] = {n: {"path": str(p)} for n, p in engines.items()}
    for name, batch in (fixed_batch or {}).items():
        if name in entries:  # an engine that was not built has nothing to time
            entries[name]["batch"] = int(batch)
    for name, load_args in (modules or {}).items():
        entries[name] = {"torch": dict(load_args)}
    job = {"engines": entries, "batch_sizes": list(batch_sizes), "engine_batch": engine_batch,
           "dynamic_batch": dynamic_batch, "rounds": rounds, "warmup": warmup, "iterations": iterations}
    try:
        if not fresh_process:
            return run_job(job, sample)
        np.save(work / "sample.npy", np.ascontiguousarray(sample, dtype=np.float32))
        (work / "job.json").write_text(json.dumps(job))
        env = dict(os.environ)
        # The child must find this very edgerep (a source checkout may not be the installed one).
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
        proc = subprocess.run([sys.executable, "-m", "edgerep.validate.timing_probe", str(work)], env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"the timing process failed (exit {proc.returncode}): {tail[:300]}")
        result: dict[str, dict[str, Any]] = json.loads((work / "result.json").read_text())
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_job(job: dict[str, Any], sample: np.ndarray) -> dict[str, dict[str, Any]]:
    """Load every engine of `job` (time_engines' description of the work) and time them together, here."""
    from contextlib import ExitStack

    from edgerep.backends import get_backend
    from edgerep.files.artifacts import load_artifact

    rounds = int(job["rounds"])
    per_round = max(10, -(-int(job["iterations"]) // rounds))
    with ExitStack() as stack:
        runners: dict[str, Runner] = {}
        takes: dict[str, int | None] = {}  # name -> its one batch size, None: any
        notes: dict[str, dict[str, Any]] = {}  # name -> why it was not timed
        for name, entry in job["engines"].items():
            entry = {"path": entry} if isinstance(entry, str) else entry
            if "torch" in entry:
                from edgerep.validate.torch_runner import TorchRunner

                try:
                    runners[name] = stack.enter_context(TorchRunner.from_spec(entry["torch"]))
                except Exception as exc:  # a model that does not load here is a note, the engines are still timed
                    notes[name] = {"latency_note": f"not timed: the PyTorch model could not be loaded for timing "
                                                   f"({type(exc).__name__}: {str(exc)[:120]})"}
                    continue
                takes[name] = None
                continue
            artifact = load_artifact(Path(entry["path"]))
            runners[name] = stack.enter_context(get_backend(artifact.backend).load(artifact))
            takes[name] = entry.get("batch") or (None if job["dynamic_batch"] else int(job["engine_batch"]))
        by_batch: dict[str, list[dict[str, Any]]] = {n: [] for n in runners}
        for bs in job["batch_sizes"]:
            here = {n: r for n, r in runners.items() if takes[n] in (None, bs)}
            for name in runners:
                if name not in here:
                    by_batch[name].append(skipped_batch(bs, int(takes[name] or bs)))
            if not here:
                continue
            batch = repeat_to(sample, bs)
            figures, _ = interleaved(here, batch, rounds=rounds, warmup=int(job["warmup"]), per_round=per_round)
            for name, stats in figures.items():
                by_batch[name].append(stats)
    return {**{name: record_fields(rows) for name, rows in by_batch.items()}, **notes}
