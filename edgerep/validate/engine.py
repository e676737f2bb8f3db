"""Validation of a built engine against the *unfused* PyTorch model: accuracy metrics, latency, gates.

The reference is the model as the user trained it (before fusion), so any error the fuser, the exporter,
the simplifier or the backend adds shows up here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgerep.backends.base import Runner
from edgerep.errors import UserError
from edgerep.tasks.base import gate_value as _gate_value
from edgerep.validate.latency import runner_latencies

if TYPE_CHECKING:
    from edgerep.data.protocol import BatchSource
    from edgerep.tasks.base import Task

# --- latency ---------------------------------------------------------------------------------------








# --- reference and engine outputs ------------------------------------------------------------------


def reference_outputs(model: Any, source: Any, batch_size: int = 32, *, limit: int | None = None) -> tuple[np.ndarray, Any]:
    """Outputs (the first) of the PyTorch `model` (eval mode, no grad) on every sample of `source`, and the labels."""
    outputs, _, labels = reference_outputs_all(model, source, batch_size, limit=limit)
    return outputs[0], labels


def reference_outputs_all(model: Any, source: Any, batch_size: int = 32, *,
                          limit: int | None = None) -> tuple[list[np.ndarray], list[str], Any]:
    """Every output of the PyTorch `model` (ONNX order, edgerep.models.outputs) on every sample of `source`, their
    names, and the labels: an array (classification), a list with one entry per sample (e.g. Detections), or None."""
    import torch

    from edgerep.models.outputs import flatten_named

    model.eval()
    outs: list[list[np.ndarray]] = []
    names: list[str] = []
    labels: list[Any] = []
    per_sample = False
    with torch.inference_mode():
        for x, y in source.iter_batches(batch_size, limit=limit):
            # np.require copies only a read-only batch (a memory-mapped .npy), which torch would warn about
            named = flatten_named(model(torch.from_numpy(np.require(x, requirements=["W"]))))
            names = [n for n, _ in named]
            arrays = [t.detach().float().cpu().numpy() for _, t in named]
            if not outs:
                outs = [[] for _ in arrays]
            for acc, arr in zip(outs, arrays):
                acc.append(arr)
            if y is not None:
                if isinstance(y, (list, tuple)):  # one object per sample (detection labels)
                    per_sample = True
                    labels.extend(y)
                else:
                    labels.append(y)
    if not outs:
        raise UserError(f"--val {source.path}: no readable samples in it")
    joined = [np.concatenate(o) for o in outs]
    if not labels:
        return joined, names, None
    return joined, names, (list(labels) if per_sample else np.concatenate(labels))


def engine_outputs(runner: Any, source: Any, batch_size: int, *, limit: int | None = None) -> np.ndarray:
    """The first output of an engine runner over `source` (see engine_outputs_all)."""
    return engine_outputs_all(runner, source, batch_size, limit=limit, first_only=True)[0]


def run_all(runner: Runner, x: np.ndarray) -> list[np.ndarray]:
    """Every output of a runner for one batch (ONNX order)."""
    return [np.asarray(o) for o in runner.run_all(x)]


def engine_outputs_all(runner: Any, source: Any, batch_size: int, *, limit: int | None = None,
                       first_only: bool = False) -> list[np.ndarray]:
    """Every output of an engine runner over `source`, in `batch_size` chunks (1 for a fixed-batch engine).

    A batch smaller than `batch_size` at the end is padded by repeating its last sample and cut after the run,
    so fixed-shape engines see only the shape they were built for."""
    outs: list[list[np.ndarray]] = []
    for x, _ in source.iter_batches(batch_size, limit=limit):
        n = x.shape[0]
        if n < batch_size:
            x = np.concatenate([x, np.repeat(x[-1:], batch_size - n, axis=0)])
        x = np.ascontiguousarray(x, dtype=np.float32)
        results = [runner.run(x)] if first_only else run_all(runner, x)
        if not outs:
            outs = [[] for _ in results]
        for acc, arr in zip(outs, results):
            acc.append(np.asarray(arr, dtype=np.float32)[:n])
    return [np.concatenate(o) for o in outs]


# --- gates -----------------------------------------------------------------------------------------


def check_gate(metrics: dict[str, Any], gate: Any, has_labels: bool) -> tuple[bool, str | None]:
    """Pass/fail of one engine's metrics against a gate, by the metrics' task (`task` key; classify when absent):
    classify: max_abs_err, min_cosine, min_top1_agreement in percent, max_top1_drop in points (only with labels);
    detect: targets.DetectGate; raw: the tensor limits. Returns (passed, reason) listing every broken limit."""
    from edgerep.tasks import get_task

    return get_task(metrics.get("task") or "classify").check_gate(metrics, gate, has_labels)


def gate_to_dict(gate: Any) -> dict[str, Any] | None:
    if gate is None:
        return None
    if hasattr(gate, "to_dict"):
        return gate.to_dict()
    if isinstance(gate, dict):  # a gate as plain data (a device bundle's profile): whichever task's keys it has
        return {k: _gate_value(gate, k) for k in gate}
    keys = ("max_abs_err", "min_cosine", "min_top1_agreement", "max_top1_drop")
    return {k: _gate_value(gate, k) for k in keys}


# --- one engine, end to end ------------------------------------------------------------------------


@dataclass
class Reference:
    """The unfused model's outputs on the validation data (computed once, shared by every engine).

    `outputs` is the first (primary) output, `outputs_all` every output in ONNX order with `output_names`;
    `task` the task's name and `scorer` the Task that scores engines against it (edgerep.tasks; inferred from
    the outputs when not given). For detect, `labels` is a list of Detections per sample (boxes in the
    letterboxed input's pixels) or None, and `detections` the unfused model's own detections per sample.
    `degenerate` (computed) is the one-line reason the outputs carry no signal, else None."""

    outputs: np.ndarray
    labels: Any  # class indices (np.ndarray), a list of Detections per sample (detect), or None
    source: BatchSource
    limit: int | None = None
    top1: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    outputs_all: list[np.ndarray] | None = None
    output_names: list[str] | None = None
    task: str | None = None
    detections: list[Any] | None = None
    # None is only the constructor's "infer it": __post_init__ always sets a Task.
    scorer: Task = None  # type: ignore[assignment]
    degenerate: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        from edgerep.models.outputs import default_names
        from edgerep.tasks import get_task, infer_task

        if self.outputs_all is None:
            self.outputs_all = [self.outputs]
        if self.output_names is None:
            self.output_names = default_names(len(self.outputs_all))
        if self.scorer is None:
            if self.task is None:
                name, note = infer_task(None, self.outputs_all)
                self.scorer = get_task(name, note=note)
            else:
                self.scorer = get_task(self.task)
        self.task = self.scorer.name
        self.scorer.prepare(self)
        self.degenerate = self.scorer.degenerate(self)
        self.info.update({"num_samples": int(self.outputs.shape[0]), "top1": self.top1, "task": self.task,
                          **self.scorer.reference_info(self)})

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def report_fields(self) -> dict[str, Any]:
        """What report.json's `reference` says about the task (besides kind, data, num_samples, top1, degenerate)."""
        out = {"task": self.task, "task_note": self.scorer.note, "outputs": [
            {"name": n, "shape": list(o.shape)} for n, o in zip(self.output_names or [], self.outputs_all or [])]}
        out.update({k: v for k, v in self.scorer.reference_info(self).items() if k != "top1"})
        return out


def compute_reference(model: Any, source: Any, *, batch_size: int = 32, limit: int | None = None,
                      task: Any = None) -> Reference:
    """Run the unfused `model` over `source` once: every output, the labels, and what the task needs (for detect,
    the reference's own detections). `task`: a tasks.Task, a task name, or None (inferred from the outputs).

    A detect task the user did not ask for (inferred from the model) whose head turns out not to decode on the
    real data falls back to raw with a note; an explicit --task detect is a one-line error then."""
    from edgerep.tasks import fallback_note, get_task
    from edgerep.tasks.detect import HeadLayoutError

    outputs, names, labels = reference_outputs_all(model, source, batch_size, limit=limit)
    scorer = get_task(task) if isinstance(task, str) else task

    def make(s: Any) -> Reference:
        return Reference(outputs=outputs[0], labels=labels, source=source, limit=limit, outputs_all=outputs,
                         output_names=names, scorer=s)

    try:
        return make(scorer)
    except HeadLayoutError as exc:
        if scorer is None or getattr(scorer, "explicit", False):
            raise UserError(f"--task detect: {exc.message}; pass --task raw for tensor metrics only") from None
        return make(get_task("raw", note=fallback_note(exc)))


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
    """The accuracy half of validate_runner: the task's metrics against the reference and the gate (no timing),
    so a scheduler can run it in parallel and time the engine later on a quiet machine."""
    outs = engine_outputs_all(runner, reference.source, engine_batch, limit=reference.limit)
    if outs[0].shape[0] != reference.outputs.shape[0]:
        raise RuntimeError(f"engine gave {outs[0].shape[0]} outputs for {reference.outputs.shape[0]} samples")
    return score_outputs(reference, outs, gate)


def task_gate(profile: Any, precision: str, reference: Reference) -> Any:
    """The profile's gate of `precision` for the reference's task."""
    return reference.scorer.gate(profile, precision)


def score_outputs(reference: Reference, out: Any, gate: Any) -> dict[str, Any]:
    """An engine's outputs (every output in ONNX order, or the first alone as one array) on the first n
    validation samples, scored by the reference's task: accuracy, and the gate's verdict ("passed", "reason"),
    which is not meaningful when the reference is degenerate."""
    outs = [out] if isinstance(out, np.ndarray) else list(out)
    n = outs[0].shape[0]
    metrics = reference.scorer.score(reference, outs)
    passed, reason = reference.scorer.check_gate(metrics, gate, reference.labels is not None and n > 0)
    gate_check = None
    verdict: bool | None = passed
    if reference.degenerate:  # the gates compared against noise: not a verdict on the engine either way
        gate_check = {"passed": passed, "reason": reason}
        verdict, reason = None, f"accuracy gates not meaningful: {reference.degenerate}"
    return {"accuracy": metrics, "passed": verdict, "reason": reason,
            **({"gate_check": gate_check} if gate_check else {})}




def check_on_target_isa(record: dict[str, Any], artifact: Any, reference: Reference, *, target: str,
                        engine_batch: int, gate: Any) -> dict[str, Any]:
    """Validate again on the target's ISA where this machine can (edgerep.validate.isa_check); sets record["isa"], and a
    failed gate there fails the engine. Returns the ISA record."""
    from edgerep.validate.isa_check import run_check_all

    isa, outs = run_check_all(artifact, reference.source, target=target, engine_batch=engine_batch,
                              limit=reference.limit)
    if outs is not None:  # every output: a detector's task score needs them all, as the main validation had
        isa.update(samples=int(outs[0].shape[0]), **score_outputs(reference, outs, gate))
        if isa["passed"] is False and record.get("passed"):
            record.update(passed=False, reason=f"on {target} ({isa['method']}): {isa['reason']}")
    record["isa"] = isa
    return isa


def isa_warnings(sidecar: dict[str, Any], isa: str | None, console: Any) -> str | None:
    """Warn (one line each) where this CPU's ISA differs from the one the engine was built or validated for,
    naming the figure at risk; returns the target ISA to check the engine on (None for a non-CPU engine)."""
    from edgerep.cpu.isa import host_cpu, isa_mismatch, resolve_isa

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


