"""A detector's report: report.md's detection table, per-output errors and boxes picture, the agreement-mAP plot
(records built by the real metric functions of edgerep.tasks.detect), and the picture stage on real engines."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from edgerep.data.detect_source import DetectionSource
from edgerep.data.detections import Detections
from edgerep.data.sources import open_data, preprocess_for
from edgerep.models.specs import ModelInfo
from edgerep.pipeline.report import engine_entry, latency_accuracy_figure, normalize, write_report
from edgerep.tasks.detect import agreement, detection_map
from edgerep.tasks.detect_pictures import COLUMN_COLOURS, detection_pictures
from edgerep.tasks.detect_task import DETECT_ACCURACY_KEYS
from tests.detect_helpers import copy_split, ultralytics_head


def _val_source(tmp_path: Path, n: int = 6) -> DetectionSource:
    root = copy_split(tmp_path, n)
    info = ModelInfo(module=nn.Identity(), spec="zoo:x", input_shape=(1, 3, 128, 128), num_classes=10, task="detect",
                     letterbox=True, stride=32)
    return open_data(root, preprocess_for(info), role="val")


def _head_from(dets: list[Detections], nc: int = 10, anchors: int = 64) -> np.ndarray:
    """An Ultralytics-layout head (B, 4+nc, N) whose decode gives back `dets` (xyxy in input pixels)."""
    return ultralytics_head(dets, nc, anchors, max_score=0.95)


# --- the boxes picture -----------------------------------------------------------------------------------------


def test_detection_pictures_draw_labels_reference_and_each_engine(tmp_path: Path) -> None:
    source = _val_source(tmp_path)
    truth = source.labels[:3]
    reference = _head_from(truth)
    engine = reference.copy()
    engine[1, 4:, 0] = 0.0  # the engine misses the second image's first box (of its 4)
    path = detection_pictures(tmp_path / "out", source, reference, {"onnxruntime int8": engine},
                              indices=[0, 1, 2], num_classes=10)
    assert path == tmp_path / "out" / "detections.png" and sorted(p.name for p in path.parent.iterdir()) == [path.name]
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    panel, title = 256, 16
    assert rgb.shape == (3 * (panel + title), 3 * panel, 3)  # rows: images; columns: labels, reference, engine

    def box_pixels(row: int, col: int) -> int:
        top = row * (panel + title) + title
        region = rgb[top:top + panel, col * panel:(col + 1) * panel].astype(int)
        return int(np.all(np.abs(region - COLUMN_COLOURS[col]) <= 2, axis=-1).sum())

    # Every column draws the same boxes on images 1 and 3; on image 2 the engine has one box fewer.
    for row in (0, 2):
        assert box_pixels(row, 0) > 0 and box_pixels(row, 1) == pytest.approx(box_pixels(row, 2), rel=0.02)
    assert 0 < box_pixels(1, 2) < box_pixels(1, 1)
    with pytest.raises(ValueError, match="2 reference outputs for 3 images"):
        detection_pictures(tmp_path / "out", source, reference[:2], {}, indices=[0, 1, 2], num_classes=10)


class TinyDetector(nn.Module):
    """A real (untrained) model with an Ultralytics-layout head: a box and class scores per 16 px cell."""

    def __init__(self, nc: int = 10, size: int = 128, cell: int = 16) -> None:
        super().__init__()
        self.pool, self.conv = nn.AvgPool2d(cell), nn.Conv2d(3, 4 + nc, 1)
        g = size // cell
        ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        self.register_buffer("centres", torch.stack([xs, ys]).reshape(2, -1).float() * cell + cell / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.conv(self.pool(x)).flatten(2)
        xy = self.centres + 6 * torch.tanh(t[:, :2])
        wh = 10 + 30 * torch.sigmoid(t[:, 2:4])
        return torch.cat([xy, wh, torch.sigmoid(3 * t[:, 4:])], 1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's TorchScript ONNX exporter: fine for this model
def test_pictures_stage_reruns_real_engines_on_a_few_images(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from edgerep.backends import get_backend
    from edgerep.pipeline.pictures import _run_each, pictures_stage
    from edgerep.pipeline.stages import StageLog
    from edgerep.targets import load_target

    torch.manual_seed(0)
    model = TinyDetector().eval()
    source = _val_source(tmp_path)
    info = ModelInfo(module=model, spec="tests:tiny", input_shape=(1, 3, 128, 128), num_classes=10, task="detect",
                     letterbox=True, stride=32, head_layout="ultralytics")
    onnx_path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 128, 128), str(onnx_path), input_names=["input"],
                      output_names=["output0"], dynamo=False)
    backend, profile = get_backend("onnxruntime"), load_target("onnxruntime-cpu")
    # INT8 calibrates on the letterboxed detection source (sample_batches over DetectionSource).
    artifacts = {p: backend.build(onnx_path, p, out_dir=tmp_path / "engines", profile=profile,
                                  calib=source if p == "int8" else None, options={"num_samples": 4} if p == "int8" else None)
                 for p in ("fp32", "int8")}
    with torch.no_grad():
        outputs = np.concatenate([model(torch.from_numpy(x)).numpy() for x, _ in source.iter_batches(4)])
    x = next(source.iter_batches(3))[0]
    np.testing.assert_allclose(_run_each(backend.load(artifacts["fp32"]), x, 1), outputs[:3], atol=1e-4)
    reference = SimpleNamespace(source=source, outputs=outputs)
    log = StageLog(None)
    result = pictures_stage(log, backend, artifacts, reference, info, profile, tmp_path / "run")
    assert result["columns"] == ["labels", "pytorch (reference)", "onnxruntime fp32", "onnxruntime int8"]
    assert len(result["images"]) == 3 and (tmp_path / "run" / result["detections"]).is_file()
    assert log.stages[-1]["name"] == "pictures" and log.stages[-1]["status"] == "done"
    # Nothing to run (every engine failed to build): the build goes on without a picture, the stage says why.
    failed = {"fp32": SimpleNamespace(status="failed", path=None)}
    assert pictures_stage(log, backend, failed, reference, info, profile, tmp_path / "run2") is None
    assert log.stages[-1]["status"] == "skipped" and "no engine could run here" in log.stages[-1]["detail"]


# --- report.md and the plot ------------------------------------------------------------------------------------


def _jitter(dets: list[Detections], shift: float, drop_every: int = 0) -> list[Detections]:
    out = []
    for i, d in enumerate(dets):
        keep = np.ones(len(d), bool)
        if drop_every and i % drop_every == 0 and len(d):
            keep[0] = False
        out.append(Detections(d.boxes[keep] + shift, d.scores[keep] * 0.9, d.classes[keep]))
    return out


def _detect_record(reference: list[Detections], labels: list[Detections], engine: list[Detections]) -> dict:
    """An engine's accuracy record as TEAM.md's contract has it, from the real metric functions."""
    agree = agreement(reference, engine, 10)
    ref_m, eng_m = detection_map(labels, reference, 10), detection_map(labels, engine, 10)
    return {"task": "detect", "map50_agreement": agree.map50, "map_agreement": agree.map50_95,
            "box_count_diff": agree.mean_abs_count_diff, "boxes_ref": agree.reference_boxes,
            "boxes_engine": agree.engine_boxes, "labelled_map50": eng_m.map50, "labelled_map": eng_m.map50_95,
            "ref_labelled_map50": ref_m.map50, "ref_labelled_map": ref_m.map50_95,
            "labelled_map_drop": 100.0 * (ref_m.map50_95 - eng_m.map50_95), "max_abs_err": 0.5, "cosine": 0.999,
            "outputs": [{"name": "output0", "shape": [1, 14, 336], "max_abs_err": 0.5, "mean_abs_err": 0.01,
                         "cosine": 0.999, "sqnr_db": 31.2},
                        {"name": "feats", "shape": [1, 64, 16, 16], "max_abs_err": 0.2, "mean_abs_err": 0.004,
                         "cosine": 0.9995, "sqnr_db": 35.0}]}


def _detect_report(tmp_path: Path) -> dict:
    source = _val_source(tmp_path, n=12)
    labels = source.labels
    reference = [Detections(d.boxes, np.full(len(d), 0.9), d.classes) for d in labels]
    engines = []
    for precision, shift, drop_every, p50 in (("fp32", 0.0, 0, 2.0), ("fp16", 0.3, 0, 1.5), ("int8", 2.5, 3, 0.7)):
        acc = _detect_record(reference, labels, _jitter(reference, shift, drop_every))
        engines.append(engine_entry("openvino", precision, path=f"engines/model.{precision}.xml", accuracy=acc,
                                    latency_ms={"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3},
                                    throughput_ips=1000 / p50, passed=precision != "int8",
                                    reason="map_agreement 0.6 < 0.85" if precision == "int8" else None))
    return {"model": {"spec": "zoo:repyolo_digits", "input_shape": [1, 3, 128, 128]},
            "target": {"name": "openvino-cpu", "backend": "openvino"},
            "reference": {"kind": "pytorch-unfused", "task": "detect", "num_samples": 12, "top1": None,
                          "data": source.describe(), "boxes": sum(len(d) for d in reference),
                          "labelled_map50": engines[0]["accuracy"]["ref_labelled_map50"],
                          "labelled_map": engines[0]["accuracy"]["ref_labelled_map"],
                          "detect": {"score_threshold": 0.25}},
            "engines": engines, "pictures": {"detections": "detections.png", "images": ["a.png", "b.png", "c.png"],
                                             "columns": ["labels", "pytorch (reference)", "openvino fp32"]}}


def test_report_shows_detection_metrics_outputs_and_the_picture(tmp_path: Path) -> None:
    rep = _detect_report(tmp_path)
    fp32, fp16, int8 = (e["accuracy"] for e in rep["engines"])
    assert fp32["map_agreement"] == pytest.approx(1.0) and fp32["labelled_map_drop"] == pytest.approx(0.0)
    assert 0 < int8["map_agreement"] < fp16["map_agreement"] < 1.0 and int8["labelled_map_drop"] > 1
    json_path, md_path, _ = write_report(tmp_path / "out", rep)
    data = json.loads(json_path.read_text())
    assert set(DETECT_ACCURACY_KEYS) <= set(data["engines"][2]["accuracy"])
    md = md_path.read_text()
    assert "| backend | precision | gate | mAP@0.5 agree | mAP@0.5:0.95 agree |" in md
    assert "top-1 agree" not in md  # a detector's table, not a classifier's
    assert (f"| openvino | int8 | FAIL | {int8['map50_agreement']:.4f} | {int8['map_agreement']:.4f} | "
            f"{int8['box_count_diff']:.3f} | {int8['boxes_ref']} / {int8['boxes_engine']} | "
            f"{int8['labelled_map50']:.4f} | {int8['labelled_map']:.4f} | {int8['labelled_map_drop']:+.2f} |") in md
    ref = rep["reference"]
    assert (f"12 images, {ref['boxes']} boxes at score >= 0.25, labelled mAP@0.5 {ref['labelled_map50']:.4f}, "
            f"mAP@0.5:0.95 {ref['labelled_map']:.4f}") in md
    assert "| openvino fp16 | feats | 1x64x16x16 | 0.2 | 0.004 | 0.999500 | 35.0 |" in md  # per-output errors
    assert "![boxes per engine](detections.png)" in md and "on 3 validation images" in md
    # Without labels the reference line says how engines are judged, and without a picture no link.
    del rep["reference"]["labelled_map"], rep["pictures"]
    for e in rep["engines"]:
        for k in ("labelled_map50", "labelled_map", "ref_labelled_map50", "ref_labelled_map", "labelled_map_drop"):
            e["accuracy"].pop(k)
    _, md_path, _ = write_report(tmp_path / "out2", rep)
    md = md_path.read_text()
    assert "no labels (engines are judged by agreement with it)" in md and "## Boxes" not in md


def test_plot_is_agreement_map_against_latency_for_a_detector(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    rep = normalize(_detect_report(tmp_path))
    fig = latency_accuracy_figure(rep)
    try:
        ax = fig.axes[0]
        assert ax.get_ylabel() == "agreement mAP@0.5:0.95 with reference (%)"
        points = sorted(tuple(map(float, c.get_offsets()[0])) for c in ax.collections)
        expect = sorted((e["latency_ms"]["p50"], 100 * e["accuracy"]["map_agreement"]) for e in rep["engines"])
        np.testing.assert_allclose(points, expect, rtol=1e-6)
    finally:
        plt.close(fig)
