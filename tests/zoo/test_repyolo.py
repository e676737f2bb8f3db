"""The zoo's YOLO-style detector: head layout, deploy forms (its own and the generic fuser's), ONNX Runtime,
the training loop, and `edgerep models` listing it."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("torchvision", reason="detection decoding needs torchvision (pip install edgerep[detect])")

from edgerep import zoo  # noqa: E402
from edgerep.fuse import fuse  # noqa: E402
from edgerep.tasks.detect import decode, resolve_layout  # noqa: E402
from edgerep.zoo.common import reparameterize_model  # noqa: E402
from tests.cli_helpers import edgerep_process  # noqa: E402
from tests.paths import REPO  # noqa: E402
from tests.reparam_helpers import randomize  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

NC = 10


def _anchors(h: int, w: int) -> int:
    return sum((h // s) * (w // s) for s in (8, 16, 32))


def _errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max box error relative to the largest box value, max absolute score error)."""
    box = ((out[:, :4].double() - ref[:, :4].double()).abs().max() / ref[:, :4].double().abs().max()).item()
    score = (out[:, 4:].double() - ref[:, 4:].double()).abs().max().item()
    return box, score


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return randomize(zoo.create_model("repyolo_digits")).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(2, 3, 128, 96, generator=torch.Generator().manual_seed(1))


def test_eval_output_is_the_ultralytics_layout(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 4 + NC, _anchors(128, 96))
    assert resolve_layout(out.shape, "auto", NC) == "ultralytics"
    assert 0 <= out[:, 4:].min() and out[:, 4:].max() <= 1 and out[:, 2:4].min() > 0
    assert model.stride == 32 and model.head_layout == "ultralytics" and model.num_classes == NC
    assert "detect" in zoo.get_entry("repyolo_digits").tags
    # Train mode gives the raw per-level maps for the loss.
    cls_maps, reg_maps = model.train()(x)
    model.eval()
    assert [m.shape[1:] for m in cls_maps] == [(NC, 16, 12), (NC, 8, 6), (NC, 4, 3)]
    assert [m.shape[1] for m in reg_maps] == [5, 5, 5]  # box + objectness


def test_own_deploy_form_matches_and_loads_into_deploy_model(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref = model(x)
        fused = reparameterize_model(model)
        out = fused(x)
        box, score = _errors(out, ref)
        assert box < 1e-5 and score < 1e-5, (box, score)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        deployed = zoo.create_model("repyolo_digits", deploy=True).eval()
        deployed.load_state_dict(fused.state_dict(), strict=True)
        assert torch.equal(deployed(x), out)


def test_generic_fuser_collapses_it_and_matches(model: nn.Module, x: torch.Tensor) -> None:
    result = fuse(model, x[:1], check_shapes=[(1, 3, 128, 128), (2, 3, 96, 160)])
    rep = result.report
    assert rep.method == "fx" and not rep.unfused, rep.notes
    assert rep.max_rel_err < 1e-5, rep.max_rel_err
    assert rep.checked_shapes == [[1, 3, 128, 128], [2, 3, 96, 160]]
    # Every BN folded; every RepVGG block (3x3 + 1x1 + identity) down to one 3x3 conv.
    assert "batch_norm" in rep.ops_before and "batch_norm" not in rep.ops_after
    assert not any(isinstance(m, nn.BatchNorm2d) for m in result.model.modules())
    blocks = sum(isinstance(m, zoo.repvgg.RepVGGBlock) for m in model.modules())
    assert rep.ops_before["conv1x1"] - rep.ops_after["conv1x1"] == blocks
    assert rep.ops_after["conv3x3"] == rep.ops_before["conv3x3"]
    assert rep.params_after < rep.params_before and rep.flops_after < rep.flops_before
    # Both halves of the output, and the other route (the model's own deploy code), agree.
    with torch.no_grad():
        ref, out, own = model(x), result.model(x), reparameterize_model(model)(x)
    assert max(_errors(out, ref)) < 1e-5 and max(_errors(out, own)) < 1e-5


@pytest.mark.parametrize("opset", [13, 17])
def test_onnx_export_runs_the_same_in_onnxruntime(model: nn.Module, tmp_path: Path, opset: int) -> None:
    import onnxruntime as ort

    fused = fuse(model, torch.rand(1, 3, 128, 128), check_shapes=[(1, 3, 128, 128)]).model
    path = tmp_path / "repyolo.onnx"
    x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.onnx.export(fused, (x,), str(path), dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=["output0"], dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}})
        ref = model(x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])
    assert got.shape == ref.shape
    box, score = _errors(got, ref)
    assert box < 1e-5 and score < 1e-5, (box, score)
    # (Decoded detections are compared on the trained weights below: a random model's scores are all
    # near-ties, so NMS may keep either of two boxes whose scores differ by float rounding.)


def test_block_stress_keeps_the_function_in_both_forms(model: nn.Module, x: torch.Tensor) -> None:
    """zoo.repvgg.scale_block_channel (what repyolo_digits_stress applies): the same outputs in the training and
    the deploy form, and the two routes (stress then fuse, fuse then stress) give the same deploy weights."""
    import copy

    from edgerep.zoo.repyolo import STRESS_PAIR, stress_digits_detector

    with torch.no_grad():
        ref = model(x)
        stressed = copy.deepcopy(model)
        stress_digits_detector(stressed)
        fused_then_stressed = reparameterize_model(model)
        stress_digits_detector(fused_then_stressed)
        stressed_then_fused = reparameterize_model(stressed)
        for m in (stressed, fused_then_stressed, stressed_then_fused):
            assert max(_errors(m(x), ref)) < 1e-5
    a = fused_then_stressed.get_submodule(STRESS_PAIR[0]).reparam
    b = stressed_then_fused.get_submodule(STRESS_PAIR[0]).reparam
    plain = reparameterize_model(model).get_submodule(STRESS_PAIR[0]).reparam
    assert torch.allclose(a.weight, b.weight, rtol=1e-5, atol=1e-6)
    assert torch.allclose(a.weight[0], 100 * plain.weight[0], rtol=1e-5, atol=1e-6)
    consumer = stressed_then_fused.get_submodule(STRESS_PAIR[1]).reparam
    assert torch.allclose(consumer.weight, fused_then_stressed.get_submodule(STRESS_PAIR[1]).reparam.weight,
                          rtol=1e-4, atol=1e-6)


# --- the training loop (scripts/train_detector.py) -----------------------------------------------------


@pytest.mark.slow
def test_training_loop_learns_a_fixed_batch() -> None:
    """Assigner, loss, decoding and COCO mAP wired together: 16 train images, a hundred steps, and the model
    finds their digits (mAP@0.5 against their labels, from about 0 at the start)."""
    pytest.importorskip("pycocotools", reason="mAP needs pycocotools (pip install edgerep[detect])")
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import train_detector as td
    finally:
        sys.path.remove(str(REPO / "scripts"))
    from edgerep.data.detections import Detections
    from edgerep.tasks.detect import detection_map

    torch.manual_seed(0)
    model = zoo.create_model("repyolo_digits")
    x, boxes, classes, valid = td.make_batch(td.load_split("train")[:16], 128, np.random.default_rng(0))
    truth = [Detections.labels(boxes[i][valid[i]].numpy(), classes[i][valid[i]].numpy()) for i in range(len(x))]

    def batch_map() -> float:
        model.eval()
        with torch.no_grad():
            dets = decode(model(x), layout="ultralytics", num_classes=NC, score_threshold=0.001)
        return detection_map(truth, dets, NC).map50

    before = batch_map()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(100):
        model.train()
        loss, parts = td.detection_loss(model, x, boxes, classes, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = batch_map()
    assert before < 0.05 and after > 0.5, (before, after, parts)


def test_edgerep_models_lists_the_detectors() -> None:
    proc = edgerep_process("models", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"zoo:repyolo_digits\s+1x3x128x128", proc.stdout), proc.stdout
    assert re.search(r"zoo:repyolo_n\s+1x3x640x640", proc.stdout), proc.stdout
