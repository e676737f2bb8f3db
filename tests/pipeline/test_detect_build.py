"""The demo detector end to end with detection metrics: `edgerep build` and `edgerep validate` score the engine's
decoded boxes against the unfused PyTorch model's (agreement mAP) and the labels (mAP and its drop)."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # each test is a whole `edgerep build`

pytest.importorskip("onnxruntime", reason="the ONNX Runtime backend")
pytest.importorskip("pycocotools", reason="mAP needs pycocotools (pip install edgerep[detect])")

from edgerep.pipeline.build import BuildOptions, build  # noqa: E402
from edgerep.zoo import get_entry  # noqa: E402

if get_entry("repyolo_digits").weights_path() is None:  # pragma: no cover - the weights ship with edgerep
    pytest.skip("zoo:repyolo_digits has no shipped weights", allow_module_level=True)


def test_build_and_validate_the_demo_detector(tmp_path, capsys):
    from edgerep.cli import main

    result = build(BuildOptions(model="zoo:repyolo_digits", target="onnxruntime-cpu", precisions="fp32",
                                val_samples=24, output=tmp_path / "run"))
    assert result.exit_code == 0
    ref = result.report["reference"]
    assert ref["task"] == "detect" and ref["labelled"] and ref["boxes"] > 24 and ref["degenerate"] is None
    assert ref["detect"]["layout"] == "ultralytics" and ref["detect"]["num_classes"] == 10
    acc = result.report["engines"][0]["accuracy"]
    assert acc["task"] == "detect" and acc["map_agreement"] >= 0.99 and acc["box_count_diff"] < 0.1
    assert abs(acc["labelled_map_drop"]) < 0.5 and acc["ref_labelled_map50"] > 0.8
    assert acc["outputs"][0]["name"] == "output" and acc["outputs"][0]["shape"] == [24, 14, 336]
    gate = result.report["engines"][0]["gate"]
    assert gate["min_map_agreement"] == 0.99  # the detect gate of onnxruntime-cpu, not the classify one
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["engines"][0]["accuracy"]["map_agreement"] == acc["map_agreement"]

    engine = result.report["engines"][0]["path"]
    main(["validate", "-m", "zoo:repyolo_digits", "-e", engine, "--val-samples", "16", "--json"])  # exit 0: returns
    record = json.loads(capsys.readouterr().out)["engines"][0]
    assert record["accuracy"]["task"] == "detect" and record["accuracy"]["map_agreement"] >= 0.99
    # the same engine validated as raw tensors: no mAP, and no error
    main(["validate", "-m", "zoo:repyolo_digits", "-e", engine, "--val-samples", "8", "--task", "raw", "--json"])
    record = json.loads(capsys.readouterr().out)["engines"][0]
    assert record["passed"] and record["accuracy"]["task"] == "raw" and "map_agreement" not in record["accuracy"]


def test_jetson_bundle_of_the_demo_detector_validates_with_detection_metrics(tmp_path):
    """`--target jetson-orin-nano` without TensorRT: a device bundle whose reference records the task, and
    `edgerep validate --bundle` (ONNX Runtime standing in for TensorRT) scores boxes with the detect gates."""
    from io import StringIO

    from rich.console import Console

    from edgerep.backends.tensorrt.bundle import load_bundle
    from edgerep.commands.validate_bundle import run_validate_bundle

    result = build(BuildOptions(model="zoo:repyolo_digits", target="jetson-orin-nano", calib_samples=32,
                                val_samples=16, output=tmp_path / "run"))
    bdir = tmp_path / "run" / "engines" / "device-bundle"
    manifest = load_bundle(bdir).manifest
    assert manifest["reference"]["task"] == "detect" and manifest["reference"]["num_samples"] == 16
    assert not manifest["reference"]["labelled"]  # boxes per image are not carried: agreement on the device
    assert result.report["reference"]["task"] == "detect"
    buf = StringIO()
    code = run_validate_bundle(bundle=bdir, engine=bdir / "model.onnx", as_json=True, out=Console(file=buf, width=400))
    record = json.loads(buf.getvalue())
    acc = record["accuracy"]
    assert code == 0 and acc["task"] == "detect" and acc["map_agreement"] >= 0.99 and acc["boxes_ref"] > 16
    assert record["gate"]["min_map_agreement"] is not None  # the profile's detect gate, not the classify one
