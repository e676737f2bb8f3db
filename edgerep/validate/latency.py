"""Latency of one runner: warm-up, then monotonic-clock timings at each batch size, as percentiles."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np


def measure_latency(run: Callable[[np.ndarray], Any], batch: np.ndarray, *, warmup: int, iterations: int) -> dict[str, Any]:
    """Time `run(batch)` after `warmup` untimed calls: p50/p90/p99 in ms (time.perf_counter_ns, a monotonic
    clock) and throughput in inputs per second from the median."""
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    for _ in range(max(0, warmup)):
        run(batch)
    times_ms = []
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        run(batch)
        times_ms.append((time.perf_counter_ns() - t0) / 1e6)
    return latency_stats(times_ms, batch_size=int(batch.shape[0]))


def latency_stats(times_ms: list[float], *, batch_size: int) -> dict[str, Any]:
    arr = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(arr, [50, 90, 99]))
    return {
        "batch_size": batch_size,
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "mean": float(arr.mean()),
        "min": float(arr.min()),
        "iterations": int(arr.size),
        "throughput_ips": batch_size * 1000.0 / p50 if p50 > 0 else None,
    }


def runner_latency(runner: Any, batch: np.ndarray, *, warmup: int, iterations: int) -> dict[str, Any]:
    """Latency of a backend runner by its own timer (a monotonic clock on CPUs, CUDA events on TensorRT)."""
    times = list(runner.latency(batch, warmup, iterations))
    return latency_stats(times, batch_size=int(batch.shape[0]))


def runner_latencies(runner: Any, sample: np.ndarray, *, engine_batch: int, latency_batches: list[int], warmup: int,
                     iterations: int, dynamic_batch: bool) -> dict[str, Any]:
    """The latency half of validate_runner: `sample` (one input, batch 1) repeated to each batch size the
    engine takes. Returns latency_ms (the first measured batch size), latency_batch_size, latency_by_batch and
    throughput_ips."""
    latencies: list[dict[str, Any]] = []
    for bs in latency_batches:
        if bs != engine_batch and not dynamic_batch:
            latencies.append(skipped_batch(bs, engine_batch))
            continue
        latencies.append(runner_latency(runner, repeat_to(sample, bs), warmup=warmup, iterations=iterations))
    return record_fields(latencies)


def repeat_to(sample: np.ndarray, batch_size: int) -> np.ndarray:
    """One input (batch 1) repeated to a batch of `batch_size`, contiguous float32."""
    return np.ascontiguousarray(np.repeat(sample, batch_size, axis=0), dtype=np.float32)


def skipped_batch(batch_size: int, engine_batch: int) -> dict[str, Any]:
    return {"batch_size": batch_size, "skipped": f"the engine has a fixed batch of {engine_batch}"}


def record_fields(latencies: list[dict[str, Any]]) -> dict[str, Any]:
    """An engine record's latency fields from its figures per batch size: latency_ms (the first measured batch
    size, with the rounds' spread when it was timed in rounds), latency_batch_size, latency_by_batch and
    throughput_ips (the best over the batch sizes)."""
    measured = [lat for lat in latencies if "p50" in lat]
    first = measured[0] if measured else None
    keys = ("p50", "p90", "p99") + (("spread",) if first and "spread" in first else ())
    return {
        "latency_ms": {k: first[k] for k in keys} if first else {"p50": None, "p90": None, "p99": None},
        "latency_batch_size": first["batch_size"] if first else None,
        "latency_by_batch": latencies,
        "throughput_ips": max((lat["throughput_ips"] for lat in measured if lat.get("throughput_ips")), default=None),
    }
