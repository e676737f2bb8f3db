"""The Task strategy (DESIGN.md "Tasks"): what "accuracy" means for a model, shared by validate, the INT8
search, sensitivity and the report. A task turns reference and engine outputs into the engine's `accuracy`
record, judges it against a gate, and says how many points an INT8 engine lost (the unit of --max-drop)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

# Outputs that vary by less than this across samples carry no signal an FP32 engine can reproduce: float32
# rounds at about 1e-7 of a value's magnitude, and trained models' outputs are O(0.1..10).
NEAR_CONSTANT_ABS = 1e-6
NEAR_CONSTANT_REL = 1e-6  # ... or by less than this fraction of their own magnitude (a constant output)
UNTRAINED_HINT = "are the weights trained? pass --weights"


def near_constant(outputs: np.ndarray) -> str | None:
    """One line when the outputs vary across samples by less than NEAR_CONSTANT_ABS, or by less than
    NEAR_CONSTANT_REL of their RMS (the model ignores its input: typically untrained weights), else None."""
    out = np.asarray(outputs, dtype=np.float64)
    n = out.shape[0] if out.ndim else 0
    if n < 2 or out.size == 0:
        return None
    flat = out.reshape(n, -1)
    spread = float(np.max(np.std(flat, axis=0)))
    rms = float(np.sqrt(np.mean(flat * flat)))
    if spread <= max(NEAR_CONSTANT_ABS, NEAR_CONSTANT_REL * rms):
        return f"reference outputs are nearly constant (std {spread:.2g} across {n} samples): {UNTRAINED_HINT}"
    return None


def gate_value(gate: Any, key: str) -> float | None:
    value = gate.get(key) if isinstance(gate, dict) else getattr(gate, key, None)
    return None if value is None else float(value)


class Task:
    """Base of the tasks. `note` is a line the report and console show (e.g. why the task was chosen)."""

    name = "task"
    budget_unit = "points"

    def __init__(self, *, explicit: bool = False, note: str | None = None) -> None:
        self.explicit = explicit  # the user asked for it (--task): a failure to apply it is an error, not a fallback
        self.note = note

    def options(self) -> dict[str, Any]:
        """The settings that change the metrics (recorded in the report)."""
        return {}

    def prepare(self, reference: Any) -> None:
        """Compute what the task needs from the reference once (e.g. the reference's detections)."""

    def degenerate(self, reference: Any) -> str | None:
        return near_constant(reference.outputs)

    def reference_info(self, reference: Any) -> dict[str, Any]:
        """The task's facts about the reference for report.json's `reference`."""
        return {}

    def score(self, reference: Any, outputs_all: Sequence[np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError

    def drop(self, metrics: dict[str, Any]) -> float:
        """Points lost in budget_unit; ValueError when the metrics carry nothing to budget."""
        raise ValueError(f"task {self.name}: no accuracy metric to budget; --max-drop needs --task classify or detect")

    def drop_metric(self, metrics: dict[str, Any]) -> str | None:
        """The name of the metric drop() used on these metrics (e.g. "top1", "map_agreement")."""
        return None

    def check_gate(self, metrics: dict[str, Any], gate: Any, has_labels: bool) -> tuple[bool, str | None]:
        raise NotImplementedError

    def finish(self, metrics: dict[str, Any], reference: Any, outputs_all: Sequence[np.ndarray], n: int) -> dict[str, Any]:
        """Add what every task's record has: each output's errors (`outputs`) and the task's note."""
        from edgerep.tasks.tensors import output_errors

        metrics["outputs"] = output_errors([o[:n] for o in reference.outputs_all], outputs_all, reference.output_names)
        if self.note:
            metrics["note"] = self.note
        return metrics

    def summary(self, metrics: dict[str, Any]) -> str:
        """The accuracy part of a stage's one-line detail."""
        return f"cosine {metrics.get('cosine', 0.0):.6f}"


def tensor_gate_problems(metrics: dict[str, Any], gate: Any) -> list[str]:
    """The broken tensor limits (max_abs_err, min_cosine) of a gate."""
    problems = []
    limit = gate_value(gate, "max_abs_err")
    if limit is not None and metrics.get("max_abs_err") is not None and not metrics["max_abs_err"] <= limit:
        problems.append(f"max_abs_err {metrics['max_abs_err']:.3g} > {limit:g}")
    limit = gate_value(gate, "min_cosine")
    if limit is not None and metrics.get("cosine") is not None and not metrics["cosine"] >= limit:
        problems.append(f"cosine {metrics['cosine']:.6f} < {limit:g}")
    return problems


def verdict(problems: list[str]) -> tuple[bool, str | None]:
    return (not problems), ("; ".join(problems) if problems else None)
