"""Tasks (edgerep.tasks): which task a model gets, how each scores an engine, gates per task in the profiles,
and the INT8 budget's unit. Detection scoring runs on synthetic heads whose boxes are known exactly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("pycocotools", reason="mAP needs pycocotools (pip install edgerep[detect])")
pytest.importorskip("torchvision", reason="NMS needs torchvision (pip install edgerep[detect])")

from edgerep.errors import UserError  # noqa: E402
from edgerep.models.specs import ModelInfo  # noqa: E402
from edgerep.quant.evaluate import drop_of, drop_unit, score, subset_view, value_of  # noqa: E402
from edgerep.targets import DetectGate, load_target, parse_profile, task_gate_defaults  # noqa: E402

DEFAULT_DETECT_GATES = task_gate_defaults("detect")
from edgerep.data.detections import Detections  # noqa: E402
from edgerep.tasks import choose_task, get_task, infer_task  # noqa: E402
from edgerep.validate.engine import Reference, compute_reference, score_outputs  # noqa: E402
from tests.detect_helpers import random_scenes, ultralytics_head  # noqa: E402
from tests.paths import REPO  # noqa: E402

NC = 3


# --- which task -------------------------------------------------------------------------------------------


class _Out(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean() + torch.zeros(x.shape[0], *self.shape[1:])


def _info(task=None, shape=(1, 10), **kw) -> ModelInfo:
    return ModelInfo(module=_Out(*shape), spec="pkg.mod:factory", input_shape=(1, 3, 8, 8), task=task, **kw)


def test_infer_task_from_the_model_then_from_the_output():
    assert infer_task(_info("detect"), [np.zeros((1, 10))]) == ("detect", None)
    name, note = infer_task(_info(), [np.zeros((1, 10))])
    assert name == "classify" and "(1, 10)" in note and "--task raw" in note  # today's behaviour, said aloud
    name, note = infer_task(_info(), [np.zeros((1, 8, 4, 4))])
    assert name == "raw" and "tensor metrics only" in note and "--task classify|detect" in note
    assert infer_task(_info(), [np.zeros((1, 10)), np.zeros((1, 4))])[0] == "raw"  # several outputs: not a classifier


def test_explicit_task_that_cannot_apply_is_one_line():
    detector = [np.random.rand(1, 14, 336).astype(np.float32)]
    with pytest.raises(UserError, match=r"--task classify: .*\(1, 14, 336\) is not class scores.*pass --task detect"):
        choose_task(_info("detect"), detector, "classify")
    with pytest.raises(UserError, match=r"--task classify: .*\(1, 8, 4, 4\).*pass --task raw"):
        choose_task(_info(), [np.zeros((1, 8, 4, 4))], "classify")
    with pytest.raises(UserError, match=r"--task detect: detection head output \(1, 10\).*--task raw"):
        choose_task(_info(), [np.zeros((1, 10))], "detect")
    with pytest.raises(UserError, match="--task segment: unknown task"):
        choose_task(_info(), [np.zeros((1, 10))], "segment")
    with pytest.raises(UserError, match="--score-threshold 0.3: only for detectors"):
        choose_task(_info("classify"), [np.zeros((1, 10))], score_threshold=0.3)
    with pytest.raises(UserError, match="--iou-threshold 1.5: must be within"):
        choose_task(_info("detect"), detector, iou_threshold=1.5)


def test_an_inferred_detector_with_an_undecodable_head_falls_back_to_raw():
    task = choose_task(_info("detect"), [np.zeros((1, 8, 4, 4))])
    assert task.name == "raw" and "detection head not decoded" in task.note and "(1, 8, 4, 4)" in task.note
    task = choose_task(_info("detect", head_layout="ultralytics"), [np.random.rand(1, 14, 336)], None,
                       score_threshold=0.1)
    assert (task.name, task.layout, task.num_classes, task.score_threshold) == ("detect", "ultralytics", 10, 0.1)


# --- detect scoring on known boxes -------------------------------------------------------------------------


def _scenes(seed: int = 0, images: int = 6, per_image: int = 4) -> list[Detections]:
    return random_scenes(seed, images, per_image, num_classes=NC, x_max=140, pitch=45.0, size=(20, 36),
                         score=(0.5, 0.95))


def _head(dets: list[Detections], anchors: int = 32, shift: float = 0.0) -> np.ndarray:
    """An Ultralytics-layout head (B, 4+nc, N) holding `dets` (box i on anchor i), boxes moved by `shift` px."""
    return ultralytics_head(dets, NC, anchors, shift=shift)


def _reference(head: np.ndarray, labels=None, **options) -> Reference:
    return Reference(outputs=head, labels=labels, source=None, outputs_all=[head, head[:, :4]],
                     output_names=["boxes", "aux"], scorer=get_task("detect", **options))


def test_detect_scores_an_identical_engine_as_full_agreement():
    scenes = _scenes()
    labels = [Detections.labels(d.boxes, d.classes) for d in scenes]
    head = _head(scenes)
    ref = _reference(head, labels)
    assert ref.task == "detect" and len(ref.detections) == 6 and ref.degenerate is None
    assert ref.info["boxes"] == 24 and ref.info["labelled_map"] == pytest.approx(1.0)
    result = score_outputs(ref, [head.copy(), head[:, :4].copy()], DEFAULT_DETECT_GATES["fp32"])
    acc = result["accuracy"]
    assert result["passed"] is True and acc["task"] == "detect"
    assert acc["map_agreement"] == pytest.approx(1.0) and acc["map50_agreement"] == pytest.approx(1.0)
    assert acc["box_count_diff"] == 0 and acc["boxes_ref"] == acc["boxes_engine"] == 24
    assert acc["labelled_map"] == pytest.approx(1.0) and acc["labelled_map_drop"] == pytest.approx(0.0)
    assert [o["name"] for o in acc["outputs"]] == ["boxes", "aux"] and acc["outputs"][1]["max_abs_err"] == 0.0
    assert get_task("detect").drop(acc) == pytest.approx(0.0)


def test_detect_sees_moved_boxes_and_lost_boxes():
    scenes = _scenes(1)
    labels = [Detections.labels(d.boxes, d.classes) for d in scenes]
    ref = _reference(_head(scenes), labels)
    moved = _head(scenes, shift=2.5)  # 2.5 px on 20-36 px boxes: IoU 0.6-0.8, found at 0.5, lost above
    acc = score_outputs(ref, [moved], DEFAULT_DETECT_GATES["fp16"])
    m = acc["accuracy"]
    assert m["map50_agreement"] == pytest.approx(1.0) and 0.2 < m["map_agreement"] < 0.8
    assert acc["passed"] is False and "map_agreement" in acc["reason"] and "< 0.95" in acc["reason"]
    assert m["labelled_map_drop"] > 20 and drop_of(m) == pytest.approx(m["labelled_map_drop"])
    assert m["outputs"][1]["missing"]  # the engine gave its first output only
    fewer = [Detections(d.boxes[:2], d.scores[:2], d.classes[:2]) for d in scenes]
    m = score_outputs(ref, [_head(fewer)], None)["accuracy"]
    assert m["box_count_diff"] == 2.0 and m["boxes_engine"] == 12
    assert m["map_agreement"] == pytest.approx(m["map50_agreement"]) and m["map_agreement"] < 0.6
    gate = DetectGate(max_box_count_diff=0.5)
    assert get_task("detect").check_gate(m, gate, True) == (False, "box_count_diff 2 > 0.5")


def test_detect_budget_without_labels_is_agreement_and_subsets_score_alike():
    scenes = _scenes(2)
    ref = _reference(_head(scenes))
    m = score(ref, _head(scenes, shift=2.0))
    assert m["drop_metric"] == "map_agreement" and m["drop"] == pytest.approx(100 * (1 - m["map_agreement"]))
    assert value_of(m) == pytest.approx(100 * m["map_agreement"])
    assert drop_unit({**m, "task": "detect"}) == "points of agreement mAP@0.5:0.95 with the reference"
    part = score(subset_view(ref, [1, 3]), _head(scenes, shift=2.0)[[1, 3]])
    assert part["boxes_ref"] == 8 and 0 < part["map_agreement"] <= 1


def test_a_detector_that_finds_nothing_is_a_degenerate_reference():
    faint = _scenes(3)
    for d in faint:
        d.scores[:] = 0.1
    ref = _reference(_head(faint))
    assert "finds no box at score >= 0.25 on any of 6 images" in ref.degenerate
    assert _reference(_head(faint), score_threshold=0.05).degenerate is None
    result = score_outputs(ref, [_head(faint)], DEFAULT_DETECT_GATES["fp32"])
    assert result["passed"] is None and "not meaningful" in result["reason"]


# --- classify / raw through the same API -------------------------------------------------------------------


def test_classify_and_raw_records():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((40, 5)).astype(np.float32)
    labels = logits.argmax(1)
    ref = Reference(outputs=logits, labels=labels, source=None)  # inferred: classify, as before tasks existed
    assert ref.task == "classify" and ref.top1 == 100.0
    acc = score_outputs(ref, logits + 0.01, load_target("openvino-cpu").gate("fp32"))["accuracy"]
    assert acc["task"] == "classify" and acc["top1_agreement"] > 90 and len(acc["outputs"]) == 1
    raw = Reference(outputs=logits, labels=None, source=None, scorer=get_task("raw"))
    rec = score_outputs(raw, logits * 1.5, {"min_cosine": 0.99, "min_top1_agreement": 100})
    assert rec["passed"] is True and rec["accuracy"]["task"] == "raw" and "top1_agreement" not in rec["accuracy"]
    assert rec["accuracy"]["note"] and rec["accuracy"]["cosine"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="--max-drop needs"):
        get_task("raw").drop(rec["accuracy"])


def test_compute_reference_keeps_every_output_and_per_sample_labels():
    class Src:
        path = Path("synthetic")

        def iter_batches(self, bs, limit=None):
            for i in range(0, 6, bs):
                x = np.full((min(bs, 6 - i), 3, 4, 4), i, np.float32)
                yield x, [Detections.labels([[0, 0, 1, 1]], [0]) for _ in range(len(x))]

    class Two(nn.Module):
        def forward(self, x):
            return {"a": x.mean((2, 3)), "b": x[:, :1]}

    ref = compute_reference(Two(), Src(), batch_size=4, task=get_task("raw"))
    assert ref.output_names == ["a", "b"] and [o.shape for o in ref.outputs_all] == [(6, 3), (6, 1, 4, 4)]
    assert isinstance(ref.labels, list) and len(ref.labels) == 6
    assert ref.report_fields()["outputs"] == [{"name": "a", "shape": [6, 3]}, {"name": "b", "shape": [6, 1, 4, 4]}]


# --- gates in the profiles ---------------------------------------------------------------------------------


def _profile(tmp_path: Path, extra: str) -> str:
    base = (REPO / "targets" / "onnxruntime-cpu.toml").read_text()
    base = base[:base.index("[gates.detect")]
    return base + extra


@pytest.mark.parametrize("extra, expected", [
    ("[gates.detect.fp32]\nmin_map_agreement = 99.0\n[gates.detect.int8]\nmin_map_agreement = 0.8\n",
     "gates.detect.fp32.min_map_agreement: 99.0 is an mAP, outside [0, 1]"),
    ("[gates.detect.fp32]\nmin_map_agreement = 0.99\n", "gates.detect.int8: missing"),
    ("[gates.detect.fp32]\nmin_top1_agreement = 0.99\n[gates.detect.int8]\nmin_map_agreement = 0.8\n",
     "gates.detect.fp32.min_top1_agreement: unknown field"),
    ("[gates.detect.fp16]\nmin_map_agreement = 0.9\n", "gates.detect.fp16: a gate for a precision the profile does not list"),
    ("[gates.segment.fp32]\nmin_cosine = 0.9\n", "gates.segment: unknown precision or task"),
])
def test_bad_detect_gates_name_the_field(tmp_path, extra, expected):
    import tomllib

    path = tmp_path / "onnxruntime-cpu.toml"
    with pytest.raises(UserError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        parse_profile(tomllib.loads(_profile(tmp_path, extra)), path)


def test_every_shipped_profile_has_detect_gates_and_old_profiles_get_defaults(tmp_path):
    import tomllib

    for name in ("openvino-cpu", "onnxruntime-cpu", "tensorrt", "jetson-orin-nano", "jetson-nano"):
        prof = load_target(name)
        assert set(prof.task_gates["detect"]) == set(prof.precisions) | set(prof.unavailable), name  # bf16 w/o BF16
        assert prof.gate(prof.precisions[0], "detect").min_map_agreement >= 0.95
        assert prof.gate(prof.precisions[0]).min_cosine is not None  # classify gates unchanged
    assert load_target("openvino-cpu").gate("int8", "detect").max_labelled_map_drop == 1.0
    old = parse_profile(tomllib.loads(_profile(tmp_path, "")), tmp_path / "onnxruntime-cpu.toml")
    assert old.gate("fp32", "detect") == DEFAULT_DETECT_GATES["fp32"]
    assert json.dumps(old.to_dict())  # detect_gates serialize with the rest


# --- the command line --------------------------------------------------------------------------------------


def test_task_classify_on_the_detector_exits_2_before_writing(tmp_path, capsys):
    from edgerep.cli import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["build", "--model", "zoo:repyolo_digits", "--task", "classify", "-t", "onnxruntime-cpu", "-o", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--task classify: zoo:repyolo_digits's output (1, 14, 336) is not class scores" in err
    assert "pass --task detect" in err and "Traceback" not in err and not out.exists()


def test_max_drop_on_a_raw_model_exits_2_before_writing(tmp_path, monkeypatch, capsys):
    import sys
    import types

    from edgerep.cli import main

    module = types.ModuleType("rawmods")
    module.make = lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    monkeypatch.setitem(sys.modules, "rawmods", module)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["build", "-m", "rawmods:make", "--input-shape", "1x3x16x16", "-t", "onnxruntime-cpu", "--max-drop", "1",
              "-o", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--max-drop 1: rawmods:make is validated as raw tensors" in err
    assert "--task classify|detect" in err and not out.exists()


def test_int8_keeps_the_decode_tail_after_the_last_weighted_layer_in_float(tmp_path):
    import onnx

    from edgerep.quant.float_policy import output_tail_nodes

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 1)

        def forward(self, x):
            y = self.conv(x).flatten(2)
            return torch.cat([y[:, :2] * 8.0, y[:, 2:].sigmoid()], 1)

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 5)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    for name, module in (("head", Head()), ("cls", Classifier())):
        torch.onnx.export(module.eval(), (torch.randn(1, 3, 8, 8),), str(tmp_path / f"{name}.onnx"), dynamo=False)
    head = onnx.load(str(tmp_path / "head.onnx"))
    tail = output_tail_nodes(tmp_path / "head.onnx")
    kinds = {n.op_type for n in head.graph.node if n.name in tail}
    assert {"Sigmoid", "Concat", "Mul"} <= kinds and "Conv" not in kinds
    assert output_tail_nodes(tmp_path / "cls.onnx") == []  # a classifier ends in its Gemm: nothing changes

    # INT8 also keeps the prediction conv feeding that tail in float (box regressions the decode amplifies);
    # a classifier still keeps nothing.
    from edgerep.quant.float_policy import detect_head_float_nodes

    float_nodes = detect_head_float_nodes(tmp_path / "head.onnx")
    convs = [n.name for n in head.graph.node if n.op_type == "Conv"]
    assert set(convs) <= set(float_nodes) and set(tail) <= set(float_nodes)
    assert detect_head_float_nodes(tmp_path / "cls.onnx") == []
