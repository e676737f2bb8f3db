"""Validation of a built engine against the *unfused* PyTorch model: accuracy metrics, latency, gates.

The reference is the model as the user trained it (before fusion), so any error the fuser, the exporter,
the simplifier or the backend adds shows up here.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import UserError


# --- accuracy --------------------------------------------------------------------------------------


def accuracy_metrics(ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Compare engine outputs `out` with reference outputs `ref` (same shape, first axis = samples).

    Returns max_abs_err, mean_abs_err, cosine (mean over samples of the per-sample cosine similarity),
    cosine_min, sqnr_db (10*log10(signal power / error power); None when the outputs are identical),
    top1_agreement (percent of samples whose arg-max class matches the reference; None for outputs that
    are not (N, classes) scores), and with labels: top1, ref_top1 (percent) and top1_drop (points).
    """
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"engine output shape {out.shape} differs from the reference {ref.shape}")
    n = ref.shape[0]
    r2, o2 = ref.reshape(n, -1), out.reshape(n, -1)
    diff = o2 - r2
    dot = np.sum(r2 * o2, axis=1)
    norms = np.linalg.norm(r2, axis=1) * np.linalg.norm(o2, axis=1)
    # Two all-zero vectors are the same vector (cosine 1); one zero and one not are unrelated (0).
    both_zero = (np.linalg.norm(r2, axis=1) == 0) & (np.linalg.norm(o2, axis=1) == 0)
    cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
    noise = float(np.sum(diff * diff))
    signal = float(np.sum(r2 * r2))
    if noise == 0.0:
        sqnr = None
    elif signal == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(signal / noise)
    metrics: dict[str, Any] = {
        "max_abs_err": float(np.max(np.abs(diff))) if diff.size else 0.0,
        "mean_abs_err": float(np.mean(np.abs(diff))) if diff.size else 0.0,
        "cosine": float(np.mean(cos)),
        "cosine_min": float(np.min(cos)),
        "sqnr_db": sqnr,
        "top1_agreement": None,
        "top1": None,
        "ref_top1": None,
        "top1_drop": None,
        "num_samples": int(n),
    }
    if ref.ndim == 2 and ref.shape[1] > 1:
        ref_cls, out_cls = ref.argmax(axis=1), out.argmax(axis=1)
        metrics["top1_agreement"] = 100.0 * float(np.mean(ref_cls == out_cls))
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            if labels.shape[0] != n:
                raise ValueError(f"{labels.shape[0]} labels for {n} outputs")
            metrics["top1"] = 100.0 * float(np.mean(out_cls == labels))
            metrics["ref_top1"] = 100.0 * float(np.mean(ref_cls == labels))
            metrics["top1_drop"] = metrics["ref_top1"] - metrics["top1"]
    return metrics


# --- latency ---------------------------------------------------------------------------------------


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
    """Latency of a backend runner: its own timer when it has one (e.g. CUDA events), else wall-clock timing."""
    if hasattr(runner, "latency"):
        times = list(runner.latency(batch, warmup, iterations))
        return latency_stats(times, batch_size=int(batch.shape[0]))
    return measure_latency(runner.run, batch, warmup=warmup, iterations=iterations)


# --- reference and engine outputs ------------------------------------------------------------------


def reference_outputs(model: Any, source: Any, batch_size: int = 32, *, limit: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Outputs of the PyTorch `model` (eval mode, no grad) on every sample of `source`, and the labels."""
    import torch

    model.eval()
    outs, labels = [], []
    with torch.inference_mode():
        for x, y in source.iter_batches(batch_size, limit=limit):
            o = model(torch.from_numpy(x))
            if isinstance(o, (tuple, list)):
                o = o[0]
            outs.append(o.detach().float().cpu().numpy())
            if y is not None:
                labels.append(y)
    if not outs:
        raise UserError(f"--val {source.path}: no readable samples in it")
    return np.concatenate(outs), (np.concatenate(labels) if labels else None)


def engine_outputs(runner: Any, source: Any, batch_size: int, *, limit: int | None = None) -> np.ndarray:
    """Outputs of an engine runner over `source`, in `batch_size` chunks (1 for a fixed-batch engine).

    A batch smaller than `batch_size` at the end is padded by repeating its last sample and cut after the run,
    so fixed-shape engines see only the shape they were built for."""
    outs = []
    for x, _ in source.iter_batches(batch_size, limit=limit):
        n = x.shape[0]
        if n < batch_size:
            x = np.concatenate([x, np.repeat(x[-1:], batch_size - n, axis=0)])
        outs.append(np.asarray(runner.run(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)[:n])
    return np.concatenate(outs)


# --- gates -----------------------------------------------------------------------------------------


def check_gate(metrics: dict[str, Any], gate: Any, has_labels: bool) -> tuple[bool, str | None]:
    """Pass/fail of one engine's metrics against a profile Gate (max_abs_err, min_cosine,
    min_top1_agreement in percent, max_top1_drop in points — the last only where labels exist).
    Returns (passed, reason) where reason lists every broken limit."""
    if gate is None:
        return True, None
    problems = []
    limit = _gate_value(gate, "max_abs_err")
    if limit is not None and not metrics["max_abs_err"] <= limit:
        problems.append(f"max_abs_err {metrics['max_abs_err']:.3g} > {limit:g}")
    limit = _gate_value(gate, "min_cosine")
    if limit is not None and not metrics["cosine"] >= limit:
        problems.append(f"cosine {metrics['cosine']:.6f} < {limit:g}")
    limit = _gate_value(gate, "min_top1_agreement")
    if limit is not None and metrics.get("top1_agreement") is not None and not metrics["top1_agreement"] >= limit:
        problems.append(f"top1_agreement {metrics['top1_agreement']:.2f}% < {limit:g}%")
    limit = _gate_value(gate, "max_top1_drop")
    if limit is not None and has_labels and metrics.get("top1_drop") is not None and not metrics["top1_drop"] <= limit:
        problems.append(f"top1_drop {metrics['top1_drop']:.2f} pp > {limit:g} pp")
    return (not problems), ("; ".join(problems) if problems else None)


def _gate_value(gate: Any, key: str) -> float | None:
    value = gate.get(key) if isinstance(gate, dict) else getattr(gate, key, None)
    return None if value is None else float(value)


def gate_to_dict(gate: Any) -> dict[str, Any] | None:
    if gate is None:
        return None
    keys = ("max_abs_err", "min_cosine", "min_top1_agreement", "max_top1_drop")
    return {k: _gate_value(gate, k) for k in keys}


# --- degenerate references ------------------------------------------------------------------------

# Outputs that vary by less than this across samples carry no signal an FP32 engine can reproduce: float32
# rounds at about 1e-7 of a value's magnitude, and trained models' outputs are O(0.1..10).
NEAR_CONSTANT_ABS = 1e-6
NEAR_CONSTANT_REL = 1e-6  # ... or by less than this fraction of their own magnitude (a constant output)
# One class for every sample means nothing when there are only a few samples (it happens by chance).
MIN_SAMPLES_FOR_TOP1_CHECK = 8
UNTRAINED_HINT = "are the weights trained? pass --weights"


def degenerate_reference(outputs: np.ndarray, labels: np.ndarray | None = None) -> str | None:
    """One line saying why the reference outputs carry no signal to validate against, or None when they do.

    Degenerate: (a) every output varies across samples by less than NEAR_CONSTANT_ABS, or by less than
    NEAR_CONSTANT_REL of the outputs' RMS (the model ignores its input: typically untrained or randomly
    initialized weights; torchvision's MobileNetV3-Small at its initialization gives outputs of about 1e-9);
    (b) a classifier whose arg-max is the same class for every one of at least MIN_SAMPLES_FOR_TOP1_CHECK
    samples, unless the labels are all that one class too (a one-class validation set is legitimate). Accuracy gates measured against such a reference
    say nothing about the engine."""
    out = np.asarray(outputs, dtype=np.float64)
    n = out.shape[0] if out.ndim else 0
    if n < 2 or out.size == 0:
        return None
    flat = out.reshape(n, -1)
    spread = float(np.max(np.std(flat, axis=0)))
    rms = float(np.sqrt(np.mean(flat * flat)))
    if spread <= max(NEAR_CONSTANT_ABS, NEAR_CONSTANT_REL * rms):
        return f"reference outputs are nearly constant (std {spread:.2g} across {n} samples): {UNTRAINED_HINT}"
    if out.ndim == 2 and out.shape[1] > 1 and n >= MIN_SAMPLES_FOR_TOP1_CHECK:
        classes = out.argmax(axis=1)
        one_class_labels = labels is not None and np.unique(np.asarray(labels).reshape(-1)).size == 1
        if np.all(classes == classes[0]) and not one_class_labels:
            return f"reference top-1 is class {int(classes[0])} for all {n} samples: {UNTRAINED_HINT}"
    return None


# --- one engine, end to end ------------------------------------------------------------------------


@dataclass
class Reference:
    """The unfused model's outputs on the validation data (computed once, shared by every engine).

    `degenerate` (computed from the outputs) is the one-line reason the outputs carry no signal, else None."""

    outputs: np.ndarray
    labels: np.ndarray | None
    source: Any
    limit: int | None = None
    top1: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    degenerate: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.degenerate = degenerate_reference(self.outputs, self.labels)


def compute_reference(model: Any, source: Any, *, batch_size: int = 32, limit: int | None = None) -> Reference:
    outputs, labels = reference_outputs(model, source, batch_size, limit=limit)
    top1 = None
    if labels is not None and outputs.ndim == 2 and outputs.shape[1] > 1:
        top1 = 100.0 * float(np.mean(outputs.argmax(axis=1) == labels))
    return Reference(outputs=outputs, labels=labels, source=source, limit=limit, top1=top1,
                     info={"num_samples": int(outputs.shape[0]), "top1": top1})


def validate_runner(runner: Any, reference: Reference, *, engine_batch: int, gate: Any,
                    latency_batches: list[int], warmup: int, iterations: int,
                    dynamic_batch: bool) -> dict[str, Any]:
    """Accuracy of `runner` against `reference`, latency at each batch size it can take, and its gate.

    Returns the engine's part of report.json: accuracy, latency_ms (the first batch size), latency_by_batch,
    throughput_ips, passed, reason."""
    record = runner_accuracy(runner, reference, engine_batch=engine_batch, gate=gate)
    sample = next(reference.source.iter_batches(1, limit=1))[0]
    record.update(runner_latencies(runner, sample, engine_batch=engine_batch, latency_batches=latency_batches,
                                   warmup=warmup, iterations=iterations, dynamic_batch=dynamic_batch))
    return record


def runner_accuracy(runner: Any, reference: Reference, *, engine_batch: int, gate: Any) -> dict[str, Any]:
    """The accuracy half of validate_runner: metrics against the reference and the gate (no timing), so a
    scheduler can run it in parallel and time the engine later on a quiet machine."""
    out = engine_outputs(runner, reference.source, engine_batch, limit=reference.limit)
    if out.shape[0] != reference.outputs.shape[0]:
        raise RuntimeError(f"engine gave {out.shape[0]} outputs for {reference.outputs.shape[0]} samples")
    return score_outputs(reference, out, gate)


def score_outputs(reference: Reference, out: np.ndarray, gate: Any) -> dict[str, Any]:
    """An engine's outputs on the first len(out) validation samples, against the reference's: accuracy, and the
    gate's verdict ("passed", "reason"), which is not meaningful when the reference is degenerate."""
    n = out.shape[0]
    ref = reference.outputs[:n]
    labels = reference.labels[:n] if reference.labels is not None else None
    metrics = accuracy_metrics(ref, out.reshape(ref.shape), labels)
    passed, reason = check_gate(metrics, gate, labels is not None)
    gate_check = None
    if reference.degenerate:  # the gates compared against noise: not a verdict on the engine either way
        gate_check = {"passed": passed, "reason": reason}
        passed, reason = None, f"accuracy gates not meaningful: {reference.degenerate}"
    return {"accuracy": metrics, "passed": passed, "reason": reason,
            **({"gate_check": gate_check} if gate_check else {})}


def runner_latencies(runner: Any, sample: np.ndarray, *, engine_batch: int, latency_batches: list[int], warmup: int,
                     iterations: int, dynamic_batch: bool) -> dict[str, Any]:
    """The latency half of validate_runner: `sample` (one input, batch 1) repeated to each batch size the
    engine takes. Returns latency_ms (the first measured batch size), latency_batch_size, latency_by_batch and
    throughput_ips."""
    latencies: list[dict[str, Any]] = []
    for bs in latency_batches:
        if bs != engine_batch and not dynamic_batch:
            latencies.append({"batch_size": bs, "skipped": f"the engine has a fixed batch of {engine_batch}"})
            continue
        batch = np.ascontiguousarray(np.repeat(sample, bs, axis=0), dtype=np.float32)
        latencies.append(runner_latency(runner, batch, warmup=warmup, iterations=iterations))
    measured = [lat for lat in latencies if "p50" in lat]
    first = measured[0] if measured else None
    return {
        "latency_ms": {k: first[k] for k in ("p50", "p90", "p99")} if first else {"p50": None, "p90": None, "p99": None},
        "latency_batch_size": first["batch_size"] if first else None,
        "latency_by_batch": latencies,
        "throughput_ips": max((lat["throughput_ips"] for lat in measured if lat.get("throughput_ips")), default=None),
    }


def check_on_target_isa(record: dict[str, Any], artifact: Any, reference: Reference, *, target: str,
                        engine_batch: int, gate: Any) -> dict[str, Any]:
    """Validate again on the target's ISA where this machine can (edgerep.isa_check); sets record["isa"], and a
    failed gate there fails the engine. Returns the ISA record."""
    from .isa_check import run_check

    isa, out = run_check(artifact, reference.source, target=target, engine_batch=engine_batch, limit=reference.limit)
    if out is not None:
        isa.update(samples=int(out.shape[0]), **score_outputs(reference, out, gate))
        if isa["passed"] is False and record.get("passed"):
            record.update(passed=False, reason=f"on {target} ({isa['method']}): {isa['reason']}")
    record["isa"] = isa
    return isa


def isa_warnings(sidecar: dict[str, Any], isa: str | None, console: Any) -> str | None:
    """Warn (one line each) where this CPU's ISA differs from the one the engine was built or validated for,
    naming the figure at risk; returns the target ISA to check the engine on (None for a non-CPU engine)."""
    from .cpu import host_cpu, isa_mismatch, resolve_isa

    built_for = sidecar.get("isa")
    if built_for is None and isa is None:
        return None  # a TensorRT engine, or one built before ISAs were recorded
    target = resolve_isa(isa, "--isa") if isa else built_for
    running = host_cpu().isa
    validated = sidecar.get("validated") or {}
    acc = validated.get("accuracy") or {}
    figure = next((f"{k.replace('_', ' ')} {acc[k]:.2f}%" for k in ("top1", "top1_agreement") if acc.get(k) is not None),
                  None)
    for label, isa_name in (("built for", target), ("validated on", validated.get("isa"))):
        risk = isa_mismatch(isa_name, running)
        if risk and console is not None:
            at_risk = f" (at risk: {figure} measured on {validated.get('isa')})" if figure and validated.get("isa") else ""
            console.print(f"[yellow]warning:[/] {label} {isa_name}, running on {running}: {risk}{at_risk}",
                          highlight=False, soft_wrap=True)
            break
    return target


def run_validate(*, model: str, engine: Path, target: str | None = None, val: Path | None = None,
                 weights: Path | None = None, input_shape: str | None = None, num_classes: int | None = None,
                 trust_pickle: bool = False, val_samples: int | None = None, val_batch: int = 32, seed: int = 0,
                 isa: str | None = None, as_json: bool = False, out: Any = None, console: Any = None) -> int:
    """`edgerep validate`: check a built engine file against the unfused PyTorch model.

    The backend comes from the engine's sidecar; the gates from --target (default: the target recorded in
    the sidecar). Returns 0 when the engine passes its gate, 1 when it does not."""
    import json

    import torch

    from .artifacts import load_artifact
    from .backends import get_backend
    from .data import default_data_paths, open_data, preprocess_for
    from .models import load_model
    from .report import engine_entry, normalize, summary_table
    from .targets import list_targets, load_target

    if not Path(engine).is_file():
        raise UserError(f"--engine {engine}: file not found; pass an engine edgerep build wrote "
                        f"(runs/<model>-<target>/engines/model.<precision>.*)")
    artifact = load_artifact(Path(engine))
    backend = get_backend(artifact.backend)
    reason = backend.available()
    if reason is not None:
        raise UserError(reason)
    if target is not None:
        profile = load_target(target)
    elif artifact.info.get("target"):
        profile = load_target(artifact.info["target"])
    else:
        profile = next((p for p in list_targets() if p.backend == artifact.backend), None)
        if profile is None:
            raise UserError(f"--engine {engine}: no target profile for backend {artifact.backend}; pass --target")
    if profile.backend != artifact.backend:
        raise UserError(f"--target {profile.name}: its backend is {profile.backend} but {Path(engine).name} is a "
                        f"{artifact.backend} engine; pick a {artifact.backend} target")
    target_isa_name = isa_warnings(artifact.info, isa, console)
    torch.manual_seed(seed)
    info = load_model(model, weights=weights, input_shape=input_shape, num_classes=num_classes, trust_pickle=trust_pickle)
    shape = tuple(info.input_shape)
    engine_shape = artifact.info.get("input_shape")
    if engine_shape and len(engine_shape) == len(shape) and any(
            e is not None and e != m for e, m in zip(engine_shape[1:], shape[1:])):
        raise UserError(f"--engine {engine}: takes input {engine_shape} but the model takes {list(shape)}; "
                        f"pass the matching --model/--input-shape")
    if val is not None:
        val_path = Path(val)
    else:  # the shipped data: the demo's labelled digits, else the photos in calib/images
        default_calib, default_val = default_data_paths(info)
        val_path = default_val or default_calib
    source = open_data(val_path, preprocess_for(info) if val_path.is_dir() else None, expect_shape=shape, role="val")
    reference = compute_reference(info.module, source, batch_size=val_batch, limit=val_samples)
    dynamic = bool(engine_shape) and engine_shape[0] is None
    engine_batch = val_batch if dynamic else int((engine_shape or shape)[0] or 1)
    runner = backend.load(artifact)
    try:
        result = validate_runner(runner, reference, engine_batch=engine_batch, gate=profile.gate(artifact.precision),
                                 latency_batches=list(profile.latency.batch_sizes), warmup=profile.latency.warmup,
                                 iterations=profile.latency.iterations, dynamic_batch=dynamic)
    finally:
        runner.close()
    if target_isa_name is not None:
        check_on_target_isa(result, artifact, reference, target=target_isa_name, engine_batch=engine_batch,
                            gate=profile.gate(artifact.precision))
    record = engine_entry(artifact.backend, artifact.precision, path=str(engine), **result,
                          gate=gate_to_dict(profile.gate(artifact.precision)))
    report = normalize({"model": {"spec": info.spec, "input_shape": list(shape), "weights": info.weights},
                        "target": {"name": profile.name, "backend": profile.backend},
                        "reference": {"kind": "pytorch-unfused", "data": source.describe(),
                                      "num_samples": int(reference.outputs.shape[0]), "top1": reference.top1,
                                      "degenerate": reference.degenerate},
                        "engines": [record]})
    if out is not None:
        if as_json:
            import sys

            sys.stdout.write(json.dumps(report) + "\n")
        else:
            out.print(summary_table(report))
    if console is not None and not record["passed"]:
        from rich.markup import escape

        console.print(f"[bold red]FAILED[/] {artifact.backend} {artifact.precision}: {escape(str(record['reason']))}",
                      highlight=False, soft_wrap=True)
    return 0 if record["passed"] else 1
