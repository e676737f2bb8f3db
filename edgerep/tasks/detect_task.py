"""Task detect: a YOLO-family head decoded and NMS'd the family's way (tasks.detect), then COCO mAP of each
engine's detections against the unfused PyTorch model's own detections taken as ground truth (agreement), the
box count difference and, with labels, real mAP and its drop from the PyTorch original."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgerep.data.detections import Detections
from edgerep.tasks.base import (
    UNTRAINED_HINT,
    Task,
    engine_verdict,
    fmt,
    gate_value,
    latency_cell,
    near_constant,
    tensor_gate_problems,
    verdict,
)
from edgerep.tasks.detect import (
    DETECT_SCORE,
    LAYOUTS,
    MAP_SCORE,
    MAX_DET,
    NMS_IOU,
    agreement,
    decode,
    detection_map,
    resolve_layout,
)
from edgerep.tasks.tensors import tensor_metrics

DECODE_BATCH = 64  # images decoded per call (NMS runs per image; this only bounds the tensor made at once)


def num_classes_of(shape: Sequence[int], layout: str) -> int:
    """Classes of a head output: (B, 4+nc, N) or (B, N, 5+nc)."""
    return int(shape[1]) - 4 if layout == "ultralytics" else int(shape[2]) - 5


def clip_scores(head: np.ndarray, layout: str) -> np.ndarray:
    """An engine's head with its score columns clipped to [0, 1]: reduced precision can put a sigmoid a hair
    outside, which the decoder would take for logits. The reference is decoded unclipped (its range is checked)."""
    head = np.array(head, dtype=np.float32, copy=True)
    if layout == "ultralytics":
        head[:, 4:, :] = np.clip(head[:, 4:, :], 0.0, 1.0)
    else:
        head[:, :, 4:] = np.clip(head[:, :, 4:], 0.0, 1.0)
    return head


# Agreement (COCO mAP of an engine's detections against the reference's) and, with labels, real mAP and its drop.
DETECT_ACCURACY_KEYS = ("map50_agreement", "map_agreement", "box_count_diff", "boxes_ref", "boxes_engine",
                        "labelled_map50", "labelled_map", "ref_labelled_map50", "ref_labelled_map", "labelled_map_drop")


class DetectTask(Task):
    name = "detect"
    budget_unit = "points of mAP@0.5:0.95 (labelled where labels exist, else agreement with the reference)"
    gate_table = "detect"
    has_accuracy = True
    accuracy_keys = DETECT_ACCURACY_KEYS
    plan_keys = ("map_agreement", "map50_agreement", "labelled_map", "ref_labelled_map", "labelled_map_drop",
                 "box_count_diff")
    draws_pictures = True
    lists_outputs = True

    def __init__(self, *, score_threshold: float | None = None, iou_threshold: float | None = None,
                 layout: str | None = None, num_classes: int | None = None, max_det: int = MAX_DET,
                 explicit: bool = False, note: str | None = None) -> None:
        super().__init__(explicit=explicit, note=note)
        self.score_threshold = DETECT_SCORE if score_threshold is None else float(score_threshold)
        self.iou_threshold = NMS_IOU if iou_threshold is None else float(iou_threshold)
        self.layout = layout if layout in LAYOUTS else None  # None: from the output's shape
        self.num_classes = num_classes
        self.max_det = max_det

    def options(self) -> dict[str, Any]:
        return {"score_threshold": self.score_threshold, "iou_threshold": self.iou_threshold,
                "map_score_threshold": MAP_SCORE, "layout": self.layout, "num_classes": self.num_classes,
                "max_det": self.max_det}

    @property
    def head_layout(self) -> str:
        """The head's layout, once resolved (resolve(), prepare())."""
        if self.layout is None:
            raise ValueError("detect: the head's layout is not known yet; resolve() the head first")
        return self.layout

    @property
    def classes(self) -> int:
        """The class count, once the head is resolved (resolve(), prepare())."""
        if self.num_classes is None:
            raise ValueError("detect: the head's class count is not known yet; resolve() the head first")
        return self.num_classes

    def resolve(self, shape: Sequence[int]) -> str:
        """Fix the head layout and the class count from the head output's shape (HeadLayoutError if neither fits)."""
        self.layout = resolve_layout(tuple(shape), self.layout or "auto", self.num_classes)
        self.num_classes = num_classes_of(shape, self.layout)
        return self.layout

    def decode_all(self, head: np.ndarray) -> list[Detections]:
        """Every image's detections at the low mAP threshold (the ranking mAP needs); counts and agreement's
        ground truth take those at or above score_threshold."""
        result: list[Detections] = []
        for start in range(0, len(head), DECODE_BATCH):
            result += decode(head[start:start + DECODE_BATCH], layout=self.layout or "auto", num_classes=self.num_classes,
                             score_threshold=MAP_SCORE, iou_threshold=self.iou_threshold, max_det=self.max_det)
        return result

    # --- the reference ---

    def prepare(self, reference: Any) -> None:
        if reference.detections is not None:
            return
        self.resolve(reference.outputs.shape)
        reference.detections = self.decode_all(reference.outputs)
        if reference.labels is not None:
            m = detection_map(reference.labels, reference.detections, self.classes)
            reference.info.update(labelled_map50=m.map50, labelled_map=m.map50_95)

    def degenerate(self, reference: Any) -> str | None:
        reason = near_constant(reference.outputs)
        if reason is not None:
            return reason
        n = len(reference.detections or [])
        if n and not any(len(d.above(self.score_threshold)) for d in reference.detections):
            return (f"the reference finds no box at score >= {self.score_threshold:g} on any of {n} images: "
                    f"{UNTRAINED_HINT} (or lower --score-threshold)")
        return None

    def reference_info(self, reference: Any) -> dict[str, Any]:
        boxes = sum(len(d.above(self.score_threshold)) for d in reference.detections or [])
        return {"boxes": int(boxes), "labelled_map50": reference.info.get("labelled_map50"),
                "labelled_map": reference.info.get("labelled_map"), "detect": self.options()}

    # --- an engine ---

    def score(self, reference: Any, outputs_all: Sequence[np.ndarray]) -> dict[str, Any]:
        first = np.asarray(outputs_all[0], dtype=np.float32)
        n = first.shape[0]
        ref = reference.outputs[:n]
        first = first.reshape(ref.shape)
        metrics: dict[str, Any] = {"task": self.name, **tensor_metrics(ref, first)}
        engine = self.decode_all(clip_scores(first, self.head_layout))
        truth = reference.detections[:n]
        agree = agreement(truth, engine, self.classes, count_threshold=self.score_threshold)
        metrics.update(map50_agreement=agree.map50, map_agreement=agree.map50_95,
                       box_count_diff=agree.mean_abs_count_diff, boxes_ref=agree.reference_boxes,
                       boxes_engine=agree.engine_boxes, score_threshold=self.score_threshold,
                       iou_threshold=self.iou_threshold)
        labels = reference.labels[:n] if reference.labels is not None else None
        if labels is not None:
            eng = detection_map(labels, engine, self.classes)
            if n == len(reference.outputs) and reference.info.get("labelled_map") is not None:
                ref50, ref_map = reference.info["labelled_map50"], reference.info["labelled_map"]
            else:  # a subset (the target-ISA re-run): the reference on the same images
                m = detection_map(labels, truth, self.classes)
                ref50, ref_map = m.map50, m.map50_95
            metrics.update(labelled_map50=eng.map50, labelled_map=eng.map50_95, ref_labelled_map50=ref50,
                           ref_labelled_map=ref_map, labelled_map_drop=100.0 * (ref_map - eng.map50_95))
        return self.finish(metrics, reference, outputs_all, n)

    def drop(self, metrics: dict[str, Any]) -> float:
        """Points of mAP@0.5:0.95: the labelled drop where labels exist, else 100 * (1 - agreement)."""
        if metrics.get("labelled_map_drop") is not None:
            return float(metrics["labelled_map_drop"])
        if metrics.get("map_agreement") is not None:
            return 100.0 * (1.0 - float(metrics["map_agreement"]))
        raise ValueError("no detection metrics to budget")

    def drop_metric(self, metrics: dict[str, Any]) -> str | None:
        return "labelled_map" if metrics.get("labelled_map_drop") is not None else "map_agreement"

    def check_gate(self, metrics: dict[str, Any], gate: Any, has_labels: bool) -> tuple[bool, str | None]:
        """Pass/fail against a targets.DetectGate; the reason lists every broken limit."""
        if gate is None:
            return True, None
        problems = tensor_gate_problems(metrics, gate)
        for key, label in (("min_map_agreement", "map_agreement"), ("min_map50_agreement", "map50_agreement")):
            limit = gate_value(gate, key)
            if limit is not None and metrics.get(label) is not None and not metrics[label] >= limit:
                problems.append(f"{label} {metrics[label]:.4f} < {limit:g}")
        limit = gate_value(gate, "max_labelled_map_drop")
        if limit is not None and has_labels and metrics.get("labelled_map_drop") is not None \
                and not metrics["labelled_map_drop"] <= limit:
            problems.append(f"labelled_map_drop {metrics['labelled_map_drop']:.2f} pp > {limit:g} pp")
        limit = gate_value(gate, "max_box_count_diff")
        if limit is not None and metrics.get("box_count_diff") is not None and not metrics["box_count_diff"] <= limit:
            problems.append(f"box_count_diff {metrics['box_count_diff']:.3g} > {limit:g}")
        return verdict(problems)

    def summary(self, metrics: dict[str, Any]) -> str:
        text = (f"mAP agree {metrics['map_agreement']:.4f} (@0.5 {metrics['map50_agreement']:.4f}), "
                f"boxes {metrics['boxes_engine']}/{metrics['boxes_ref']}")
        if metrics.get("labelled_map") is not None:
            text += f", mAP {metrics['labelled_map']:.4f} (drop {metrics['labelled_map_drop']:+.2f} pp)"
        return text

    # --- in words and tables ---

    def detail(self) -> str:
        text = (f"{self.name} ({self.layout} head, {self.num_classes} classes, score >= {self.score_threshold:g}, "
                f"NMS IoU {self.iou_threshold:g})")
        return text + (f"; {self.note}" if self.note else "")

    def can_budget(self, reference: Any) -> bool:
        return True

    def reference_detail(self, reference: Any) -> str:
        info = reference.info
        text = f", {info.get('boxes')} boxes"
        return text + (f", labelled mAP {info['labelled_map']:.4f} (@0.5 {info['labelled_map50']:.4f})"
                       if info.get("labelled_map") is not None else ", no labels")

    def reference_line(self, report: dict[str, Any]) -> str:
        """report.md's line on a detector's reference: its data, boxes found and (labels) its own mAP."""
        ref = report.get("reference") or {}
        data = ref.get("data") or {}
        line = f"- reference: unfused PyTorch model on `{data.get('path')}`, {ref.get('num_samples')} images"
        threshold = (ref.get("detect") or {}).get("score_threshold")
        if ref.get("boxes") is not None:
            line += f", {ref['boxes']} boxes" + (f" at score >= {threshold:g}" if threshold is not None else "")
        map50, map_ = ref.get("labelled_map50"), ref.get("labelled_map")
        if map_ is None:  # older references: the engines carry the reference's labelled mAP
            first: dict[str, Any] = next((e["accuracy"] for e in report["engines"]
                                          if (e.get("accuracy") or {}).get("ref_labelled_map") is not None), {})
            map50, map_ = first.get("ref_labelled_map50"), first.get("ref_labelled_map")
        if map_ is not None:
            return line + f", labelled mAP@0.5 {fmt(map50, '.4f')}, mAP@0.5:0.95 {fmt(map_, '.4f')}"
        return line + ", no labels (engines are judged by agreement with it)"

    def reference_text(self, reference: dict[str, Any]) -> str:
        return f"reference labelled mAP {fmt(reference.get('labelled_map'), '.4f')}"

    table_headers = ["backend", "precision", "gate", "mAP@0.5 agree", "mAP@0.5:0.95 agree", "boxes ± per image",
                     "boxes ref / engine", "labelled mAP@0.5", "labelled mAP@0.5:0.95", "drop pts", "max abs err",
                     "cosine", "p50 ms (rounds)", "p99 ms", "inputs/s", "reason"]
    table_note = ("agreement is COCO mAP of each engine's detections scored against the unfused PyTorch model's own "
                  "detections taken as ground truth (1 = the same boxes); boxes ± is the mean |engine - reference| "
                  "box count per image at the detect score threshold; labelled mAP and its drop (points of "
                  "mAP@0.5:0.95, PyTorch minus engine) where the data has labels.")
    # mAP@0.5:0.95 of agreement, the mean box count difference per image, labelled mAP@0.5:0.95 and its drop in
    # points (report.md has mAP@0.5 too).
    summary_columns = ("engine", "gate", "mAP agr", "boxes±", "mAP", "drop", "p50 ms", "p99 ms", "in/s")

    def table_row(self, eng: dict[str, Any]) -> list[str]:
        acc, lat = eng["accuracy"], eng["latency_ms"]
        boxes = (f"{acc['boxes_ref']} / {acc['boxes_engine']}"
                 if acc.get("boxes_ref") is not None and acc.get("boxes_engine") is not None else "-")
        return [eng["backend"], eng["precision"], engine_verdict(eng),
                fmt(acc.get("map50_agreement"), ".4f"), fmt(acc.get("map_agreement"), ".4f"),
                fmt(acc.get("box_count_diff"), ".3f"), boxes,
                fmt(acc.get("labelled_map50"), ".4f"), fmt(acc.get("labelled_map"), ".4f"),
                fmt(acc.get("labelled_map_drop"), "+.2f"),
                fmt(acc.get("max_abs_err"), ".3g"), fmt(acc.get("cosine"), ".6f"),
                latency_cell(lat), fmt(lat.get("p99"), ".3f"), fmt(eng.get("throughput_ips"), ".1f"),
                eng.get("reason") or ""]

    def summary_cells(self, acc: dict[str, Any]) -> list[str]:
        return [fmt(acc.get("map_agreement"), ".4f"), fmt(acc.get("box_count_diff"), ".2f"),
                fmt(acc.get("labelled_map"), ".4f"), fmt(acc.get("labelled_map_drop"), "+.2f")]

    def console_lines(self, acc: dict[str, Any]) -> list[str]:
        return [f"  agreement mAP@0.5:0.95 {acc['map_agreement']:.4f} (@0.5 {acc['map50_agreement']:.4f}), "
                f"boxes {acc.get('boxes_engine')}/{acc.get('boxes_ref')}, max abs err {acc['max_abs_err']:.3g}"]

    def plot_metric(self, accuracies: list[dict[str, Any]]) -> tuple[str, str, float]:
        """A detector's detections' agreement with the reference's, in percent."""
        if any(a.get("map_agreement") is not None for a in accuracies):
            return "map_agreement", "agreement mAP@0.5:0.95 with reference (%)", 100.0
        return super().plot_metric(accuracies)

    def key_metric(self, acc: dict[str, Any]) -> dict[str, Any]:
        if acc.get("labelled_map_drop") is not None:  # points of mAP@0.5:0.95
            return {"name": "labelled_map_drop", "value": acc["labelled_map_drop"], "unit": "pp"}
        if acc.get("map_agreement") is not None:
            return {"name": "map_disagreement", "value": 100.0 * (1.0 - acc["map_agreement"]), "unit": "pp"}
        return super().key_metric(acc)
