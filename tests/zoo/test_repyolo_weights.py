"""The demo detector's shipped weights really detect, survive fusion, and its stressed variant keeps the function.

zoo:repyolo_digits loads edgerep/zoo/weights/repyolo_digits.safetensors (float16-stored, trained by
scripts/train_detector.py) with no flag and reaches labelled mAP@0.5 >= 0.9 on the held-out
calib/digits_det/val; zoo:repyolo_digits_stress is the same function with one activation channel x100.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("torchvision", reason="detection decoding needs torchvision (pip install edgerep[detect])")
pytest.importorskip("pycocotools", reason="mAP needs pycocotools (pip install edgerep[detect])")

from edgerep.data.detect_labels import letterboxed_batches, read_yolo_labels  # noqa: E402
from edgerep.fuse import fuse  # noqa: E402
from edgerep.models.specs import load_model  # noqa: E402
from edgerep.tasks.detect import agreement, detect_images, detection_map, label_truth  # noqa: E402
from edgerep.zoo.repyolo import STRESS_CHANNEL, STRESS_FACTOR, STRESS_PAIR  # noqa: E402
from tests.paths import DIGITS_DET  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

VAL = DIGITS_DET / "val"
NC, SIZE = 10, (128, 128)


def _detections(module: nn.Module, items) -> list:
    module.eval()

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(x)).numpy()

    return detect_images(run, items, SIZE, stride=32, layout="ultralytics", num_classes=NC)


@pytest.fixture(scope="module")
def items():
    return read_yolo_labels(VAL, NC)


@pytest.fixture(scope="module")
def demo():
    return load_model("zoo:repyolo_digits")


@pytest.fixture(scope="module")
def demo_detections(demo, items) -> list:
    return _detections(demo.module, items)


def test_shipped_weights_load_by_default_and_detect(demo, items, demo_detections) -> None:
    assert demo.weights is not None and Path(demo.weights).name == "repyolo_digits.safetensors"
    assert demo.task == "detect" and demo.letterbox and demo.stride == 32
    # Stored in float16, loaded into float32 parameters.
    assert all(p.dtype == torch.float32 for p in demo.module.parameters())
    m = detection_map(label_truth(items), demo_detections, NC)
    assert m.map50 >= 0.9, m
    assert m.map50_95 >= 0.6, m


def test_fused_model_gives_the_same_detections(demo, items, demo_detections) -> None:
    fused = fuse(demo.module, torch.zeros(1, 3, *SIZE), check_shapes=[(1, 3, *SIZE)])
    assert not fused.report.unfused and fused.report.max_rel_err < 1e-5
    agree = agreement(demo_detections, _detections(fused.model, items), NC)
    assert agree.map50_95 >= 0.99 and agree.box_count_diff == 0, agree


def _pair_activation(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-channel max of the stressed pair's activation (the producer block's output) on `x`."""
    seen = []
    hook = module.get_submodule(STRESS_PAIR[0]).register_forward_hook(
        lambda _m, _i, out: seen.append(out.amax(dim=(0, 2, 3))))
    try:
        with torch.no_grad():
            out = module(x)
    finally:
        hook.remove()
    return seen[0], out


def test_stressed_variant_same_function_one_channel_x100(demo, items) -> None:
    stressed = load_model("zoo:repyolo_digits_stress")
    assert stressed.task == "detect" and Path(stressed.weights).name == "repyolo_digits.safetensors"
    x = torch.from_numpy(next(letterboxed_batches(items[:16], SIZE, 16))[0])
    plain_act, plain_out = _pair_activation(demo.module.eval(), x)
    stress_act, stress_out = _pair_activation(stressed.module.eval(), x)
    rel = ((stress_out.double() - plain_out.double()).abs().max() / plain_out.double().abs().max()).item()
    assert rel < 1e-5, rel
    # The stressed channel is factor x its plain self, the others untouched: the activation's range is ~100x.
    assert plain_act[STRESS_CHANNEL] > 0, "the stressed channel must be alive on real images"
    assert torch.allclose(stress_act[STRESS_CHANNEL], STRESS_FACTOR * plain_act[STRESS_CHANNEL], rtol=1e-4)
    others = [c for c in range(len(plain_act)) if c != STRESS_CHANNEL]
    assert torch.allclose(stress_act[others], plain_act[others], rtol=1e-5, atol=1e-6)
    range_ratio = (stress_act.max() / plain_act.max()).item()
    assert range_ratio > 0.3 * STRESS_FACTOR, range_ratio
    # Fusing the stressed model keeps the stress in the deploy pair (and the function).
    fused = fuse(stressed.module, x[:1], check_shapes=[(1, 3, *SIZE)])
    assert fused.report.max_rel_err < 1e-5
