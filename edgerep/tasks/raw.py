"""Task raw: a model edgerep does not understand still has tensor error. Metrics of the first output at the top
of the record (cosine, SQNR, errors), every output's in `outputs`; gates apply their tensor limits only."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgerep.tasks.base import Task, tensor_gate_problems, verdict
from edgerep.tasks.tensors import tensor_metrics

RAW_NOTE = "tensor metrics only (no task-level accuracy)"


class RawTask(Task):
    name = "raw"
    budget_unit = "none: tensor metrics only (--max-drop needs --task classify or detect)"

    def reference_detail(self, reference: Any) -> str:
        return super().reference_detail(reference) + (f"; {reference.scorer.note}" if reference.scorer.note else "")

    def score(self, reference: Any, outputs_all: Sequence[np.ndarray]) -> dict[str, Any]:
        first = np.asarray(outputs_all[0])
        n = first.shape[0]
        ref = reference.outputs[:n]
        metrics: dict[str, Any] = {"task": self.name, **tensor_metrics(ref, first.reshape(ref.shape))}
        self.finish(metrics, reference, outputs_all, n)
        metrics["note"] = self.note or RAW_NOTE
        return metrics

    def check_gate(self, metrics: dict[str, Any], gate: Any, has_labels: bool) -> tuple[bool, str | None]:
        if gate is None:
            return True, None
        return verdict(tensor_gate_problems(metrics, gate))
