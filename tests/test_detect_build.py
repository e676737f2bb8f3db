"""The demo detector end to end with detection metrics: `edgerep build` and `edgerep validate` score the engine's
decoded boxes against the unfused PyTorch model's (agreement mAP) and the labels (mAP and its drop)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime", reason="the ONNX Runtime backend")
pytest.importorskip("pycocotools", reason="mAP needs pycocotools (pip install edgerep[detect])")

from edgerep.build import BuildOptions, build  # noqa: E402
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
