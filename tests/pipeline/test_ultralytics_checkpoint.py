"""An Ultralytics checkpoint (best.pt, the dict Ultralytics' trainer writes, a full pickle) through `edgerep build`:
refused without --trust-pickle, and with it built and validated with detection metrics against its labels."""
from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("ultralytics", reason="an Ultralytics checkpoint needs ultralytics (edgerep[ultralytics])")
pytest.importorskip("onnxruntime", reason="the ONNX Runtime backend")
pytest.importorskip("pycocotools", reason="mAP needs pycocotools (pip install edgerep[detect])")

from edgerep.zoo import get_entry  # noqa: E402
from tests.cli_helpers import cli, error_line  # noqa: E402
from tests.paths import DIGITS_DET  # noqa: E402

SIZE = 160


@pytest.fixture(scope="module")
def best_pt(tmp_path_factory):
    """best.pt as Ultralytics' trainer leaves it (after strip_optimizer): the EMA model pickled whole in half precision
    under "model", the training arguments, no optimizer; its weights are zoo:yolov8n_digits's (trained here)."""
    import ultralytics
    from safetensors.torch import load_file
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", nc=10, verbose=False)
    model.load_state_dict(load_file(str(get_entry("yolov8n_digits").weights_path())))
    model.names = {i: str(i) for i in range(10)}
    train_args = {"task": "detect", "mode": "train", "model": "yolov8n.yaml", "data": "digits_det/data.yaml",
                  "epochs": 60, "imgsz": SIZE, "batch": 16, "pretrained": False}
    model.args = dict(train_args)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save({"epoch": -1, "best_fitness": None, "model": copy.deepcopy(model).half().eval(), "ema": None,
                "updates": None, "optimizer": None, "train_args": train_args, "train_metrics": {},
                "date": "2026-01-01T00:00:00", "version": ultralytics.__version__}, path)
    return path


def test_refused_without_trust_pickle(best_pt, tmp_path):
    out = tmp_path / "run"
    code, _, err = cli(["build", "--model", str(best_pt), "--target", "onnxruntime-cpu", "-o", str(out)])
    assert code == 2
    line = error_line(err)
    assert str(best_pt) in line and "full pickle" in line and "--trust-pickle" in line
    assert not out.exists()  # refused before anything is written


@pytest.mark.slow  # a whole `edgerep build` (export, engine, validation on 100 labelled images)
def test_built_and_validated_with_detection_metrics(best_pt, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = cli(["build", "--model", str(best_pt), "--trust-pickle", "--target", "onnxruntime-cpu",
                             "--precision", "fp32", "--calib", str(DIGITS_DET / "train"), "--val",
                             str(DIGITS_DET / "val"), "--calib-samples", "16", "-o", str(out)])
    assert code == 0, err[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["input_shape"] == [1, 3, SIZE, SIZE]  # the checkpoint's train_args imgsz
    ref = report["reference"]
    assert ref["task"] == "detect" and ref["labelled"] and ref["detect"]["layout"] == "ultralytics"
    assert ref["detect"]["num_classes"] == 10 and ref["num_samples"] == 100
    (engine,) = report["engines"]
    acc = engine["accuracy"]
    assert engine["passed"] and engine["gate"]["min_map_agreement"] is not None  # the detect gate
    # the trained weights score on the held-out labels, and the FP32 engine gives the PyTorch model's boxes
    assert acc["task"] == "detect" and acc["ref_labelled_map"] > 0.5 and acc["ref_labelled_map50"] > 0.75
    assert acc["map_agreement"] >= 0.99 and abs(acc["labelled_map_drop"]) < 0.5
    # `edgerep build` compares it with Ultralytics' own exports of the same weights, made by Ultralytics' exporter
    rows = {r["name"]: r for r in report["baselines"]}
    assert {"pytorch", "onnx-unfused", "ultralytics-fp32", "ultralytics-int8"} <= set(rows)
    for name in ("ultralytics-fp32", "ultralytics-int8"):
        row = rows[name]
        assert row["status"] == "ok" and row["path"] and (out / "baselines" / name).is_dir(), row.get("reason")
        assert row["accuracy"]["task"] == "detect" and row["latency_ms"]["p50"] > 0
    assert rows["ultralytics-fp32"]["accuracy"]["map_agreement"] >= 0.99  # the same function, exported by Ultralytics
    assert any("val split by default" in note for note in report["baseline_notes"])
    assert {("fp32", "ultralytics-int8"), ("fp32", "ultralytics-fp32")} <= {
        (c["engine"], c["baseline"]) for c in report["comparisons"]}
    assert "Ultralytics' INT8 export" in (out / "report.md").read_text()
