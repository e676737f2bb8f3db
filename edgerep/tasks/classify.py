"""Task classify: the outputs are class scores (N, classes); accuracy is arg-max top-1, against the reference's
own classes (agreement) and, with labels, against the labels (top-1 and its drop from the PyTorch original)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgerep.tasks.base import UNTRAINED_HINT, Task, gate_value, near_constant, tensor_gate_problems, verdict
from edgerep.tasks.tensors import tensor_metrics

# One class for every sample means nothing when there are only a few samples (it happens by chance).
MIN_SAMPLES_FOR_TOP1_CHECK = 8


def is_class_scores(shape: Sequence[int]) -> bool:
    """(N, classes) with more than one class: what arg-max top-1 can read."""
    return len(shape) == 2 and int(shape[1]) > 1


def accuracy_metrics(ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Compare engine outputs `out` with reference outputs `ref` (same shape, first axis = samples).

    Returns tensor_metrics (max_abs_err, mean_abs_err, cosine, cosine_min, sqnr_db, num_samples) and
    top1_agreement (percent of samples whose arg-max class matches the reference; None for outputs that
    are not (N, classes) scores), and with labels: top1, ref_top1 (percent) and top1_drop (points).
    """
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    metrics: dict[str, Any] = tensor_metrics(ref, out)
    metrics.update({"top1_agreement": None, "top1": None, "ref_top1": None, "top1_drop": None})
    metrics["num_samples"] = metrics.pop("num_samples")  # keep today's key order: num_samples last
    n = ref.shape[0]
    if is_class_scores(ref.shape):
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


def degenerate_reference(outputs: np.ndarray, labels: np.ndarray | None = None) -> str | None:
    """One line saying why the reference outputs carry no signal to validate against, or None when they do.

    Degenerate: (a) the outputs are nearly constant across samples (base.near_constant: typically untrained
    or randomly initialized weights; torchvision's MobileNetV3-Small at its initialization gives outputs of
    about 1e-9); (b) a classifier whose arg-max is the same class for every one of at least
    MIN_SAMPLES_FOR_TOP1_CHECK samples, unless the labels are all that one class too (a one-class validation
    set is legitimate). Accuracy gates measured against such a reference say nothing about the engine."""
    reason = near_constant(outputs)
    if reason is not None:
        return reason
    out = np.asarray(outputs)
    n = out.shape[0] if out.ndim else 0
    if is_class_scores(out.shape) and n >= MIN_SAMPLES_FOR_TOP1_CHECK:
        classes = out.argmax(axis=1)
        one_class_labels = labels is not None and np.unique(np.asarray(labels).reshape(-1)).size == 1
        if np.all(classes == classes[0]) and not one_class_labels:
            return f"reference top-1 is class {int(classes[0])} for all {n} samples: {UNTRAINED_HINT}"
    return None


class ClassifyTask(Task):
    name = "classify"
    has_accuracy = True
    budget_unit = "points of top-1 (labelled where labels exist, else agreement with the reference)"

    def prepare(self, reference: Any) -> None:
        out = reference.outputs
        if reference.labels is not None and is_class_scores(out.shape) and reference.top1 is None:
            reference.top1 = 100.0 * float(np.mean(out.argmax(axis=1) == np.asarray(reference.labels).reshape(-1)))

    def degenerate(self, reference: Any) -> str | None:
        return degenerate_reference(reference.outputs, reference.labels)

    def reference_info(self, reference: Any) -> dict[str, Any]:
        return {"top1": reference.top1}

    def score(self, reference: Any, outputs_all: Sequence[np.ndarray]) -> dict[str, Any]:
        first = np.asarray(outputs_all[0])
        n = first.shape[0]
        ref = reference.outputs[:n]
        labels = reference.labels[:n] if reference.labels is not None else None
        metrics = {"task": self.name, **accuracy_metrics(ref, first.reshape(ref.shape), labels)}
        return self.finish(metrics, reference, outputs_all, n)

    def can_budget(self, reference: Any) -> bool:
        return bool(reference.outputs.ndim == 2)

    def drop(self, metrics: dict[str, Any]) -> float:
        """Points lost: labelled top-1 drop where labels exist, else 100 - top-1 agreement with the reference."""
        if metrics.get("top1_drop") is not None:
            return float(metrics["top1_drop"])
        if metrics.get("top1_agreement") is not None:
            return 100.0 - float(metrics["top1_agreement"])
        raise ValueError("the outputs are not class scores: no top-1 to budget; --max-drop needs a classifier")

    def drop_metric(self, metrics: dict[str, Any]) -> str | None:
        return "top1" if metrics.get("top1_drop") is not None else "top1_agreement"

    def check_gate(self, metrics: dict[str, Any], gate: Any, has_labels: bool) -> tuple[bool, str | None]:
        """Pass/fail against a profile Gate (max_abs_err, min_cosine, min_top1_agreement in percent,
        max_top1_drop in points — the last only where labels exist); the reason lists every broken limit."""
        if gate is None:
            return True, None
        problems = tensor_gate_problems(metrics, gate)
        limit = gate_value(gate, "min_top1_agreement")
        if limit is not None and metrics.get("top1_agreement") is not None and not metrics["top1_agreement"] >= limit:
            problems.append(f"top1_agreement {metrics['top1_agreement']:.2f}% < {limit:g}%")
        limit = gate_value(gate, "max_top1_drop")
        if limit is not None and has_labels and metrics.get("top1_drop") is not None and not metrics["top1_drop"] <= limit:
            problems.append(f"top1_drop {metrics['top1_drop']:.2f} pp > {limit:g} pp")
        return verdict(problems)

    def summary(self, metrics: dict[str, Any]) -> str:
        agree = metrics.get("top1_agreement")
        text = f"cosine {metrics['cosine']:.6f}, top-1 agree {'-' if agree is None else f'{agree:.2f}%'}"
        if metrics.get("top1") is not None:
            text += f", top-1 {metrics['top1']:.2f}% (drop {metrics['top1_drop']:+.2f} pp)"
        return text
