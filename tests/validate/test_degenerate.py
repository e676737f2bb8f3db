"""Degenerate references: outputs that carry no signal are named in one line, the gates are reported as not
meaningful, and the build exits 1 with that line (edgerep.validate.engine.degenerate_reference)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgerep.data.sources import default_data_paths, open_data, preprocess_for
from edgerep.models.specs import load_model
from edgerep.tasks.classify import degenerate_reference
from edgerep.validate.engine import compute_reference, validate_runner


def reference_of(spec: str, **kwargs):
    """The unfused model's reference on its default data (the shipped photos, or the demo's digits)."""
    torch.manual_seed(0)
    info = load_model(spec, **kwargs)
    calib, val = default_data_paths(info)
    path = val or calib
    source = open_data(path, preprocess_for(info) if path.is_dir() else None, expect_shape=tuple(info.input_shape),
                       role="val")
    return info, compute_reference(info.module, source, batch_size=16, limit=64)


def test_untrained_mobilenet_v3_small_is_nearly_constant():
    pytest.importorskip("torchvision")
    # At torchvision's random initialisation MobileNetV3-Small's outputs are about 1e-9 for every input (the
    # issue measured std 6e-10; its INT8 engine returned zeros and failed "cosine 0.000000 < 0.98").
    _, ref = reference_of("torchvision.models:mobilenet_v3_small")
    assert ref.outputs.shape == (9, 1000) and float(np.abs(ref.outputs).max()) < 1e-6
    assert ref.degenerate is not None
    assert ref.degenerate.startswith("reference outputs are nearly constant (std ")
    assert ref.degenerate.endswith("across 9 samples): are the weights trained? pass --weights")


def test_untrained_resnet18_predicts_one_class_for_every_photo():
    pytest.importorskip("torchvision")
    _, ref = reference_of("torchvision.models:resnet18")
    classes = ref.outputs.argmax(1)
    assert np.all(classes == classes[0]) and float(ref.outputs.std(0).max()) > 0.1  # varies, yet one class
    assert ref.degenerate == f"reference top-1 is class {classes[0]} for all 9 samples: are the weights trained? pass --weights"


def test_trained_demo_model_is_not_degenerate():
    info, ref = reference_of("zoo:repvgg_digits")
    assert info.weights is not None and ref.top1 > 95.0
    assert ref.degenerate is None


def test_a_model_with_a_constant_output():
    class Constant(torch.nn.Module):  # ignores its input: e.g. every weight zero but the last bias
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.bias = torch.nn.Parameter(torch.linspace(-2, 3, 10))

        def forward(self, x):
            return self.bias.expand(x.shape[0], -1) + 0.0 * self.conv(x).mean()

    x = np.random.default_rng(0).standard_normal((12, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        out = Constant()(torch.from_numpy(x)).numpy()
    assert out.std() > 1.0  # large, varied logits, identical for every sample
    assert degenerate_reference(out) == ("reference outputs are nearly constant (std 0 across 12 samples): "
                                         "are the weights trained? pass --weights")


def test_one_class_validation_sets_and_few_samples_are_not_flagged():
    logits = np.random.default_rng(1).standard_normal((20, 5))
    logits[:, 2] += 10.0  # every sample predicts class 2
    assert "class 2 for all 20" in degenerate_reference(logits)
    assert degenerate_reference(logits, labels=np.full(20, 2)) is None  # the labels agree: a one-class set
    assert degenerate_reference(logits[:5]) is None  # 5 samples: one class by chance is plausible
    assert degenerate_reference(logits[:1]) is None


def test_gates_against_a_degenerate_reference_are_not_a_verdict(tmp_path):
    """validate_runner on the real untrained MobileNetV3: the engine (the model itself) agrees perfectly, and
    the gate still does not pass: it measured nothing."""
    pytest.importorskip("torchvision")
    info, ref = reference_of("torchvision.models:mobilenet_v3_small")

    class TorchRunner:  # the PyTorch model itself behind the runner contract
        def run(self, batch):
            with torch.no_grad():
                return info.module(torch.from_numpy(batch)).numpy()

        def run_all(self, batch):
            return [self.run(batch)]

        def latency(self, batch, warmup, iterations):
            from edgerep.backends.common import time_calls

            return time_calls(lambda: self.run(batch), warmup, iterations)

    result = validate_runner(TorchRunner(), ref, engine_batch=4, gate={"min_cosine": 0.98, "min_top1_agreement": 95},
                             latency_batches=[1], warmup=0, iterations=2, dynamic_batch=True)
    assert result["passed"] is None
    assert result["reason"] == f"accuracy gates not meaningful: {ref.degenerate}"
    assert result["gate_check"]["passed"] is True  # what the gate said, kept for the record


@pytest.mark.slow
def test_build_of_an_untrained_model_exits_1_with_one_line(tmp_path):
    """The issue's case through the real CLI: `-t onnxruntime-cpu -p fp32` on torchvision's untrained MobileNetV3."""
    pytest.importorskip("torchvision")
    from tests.cli_helpers import cli

    out_dir = tmp_path / "mnv3"
    code, out, err = cli(["build", "-m", "torchvision.models:mobilenet_v3_small", "-t", "onnxruntime-cpu",
                          "-p", "fp32", "--no-baselines", "-o", str(out_dir)])  # the gate, not the baselines
    assert code == 1 and "Traceback" not in err
    failed = [line for line in err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith("FAILED accuracy not checked: reference outputs are nearly constant")
    assert failed[0].endswith("are the weights trained? pass --weights")
    rep = json.loads((out_dir / "report.json").read_text())
    assert rep["reference"]["degenerate"] in failed[0]
    fp32 = rep["engines"][0]
    assert fp32["status"] == "ok" and fp32["passed"] is None and fp32["reason"].startswith("accuracy gates not meaningful")
    assert rep["recommended"]["precision"] is None
    assert out.splitlines()[0].startswith("recommended: none")
    md = (out_dir / "report.md").read_text()
    assert "**Accuracy gates not meaningful**: reference outputs are nearly constant" in md
    assert "| onnxruntime | fp32 | n/a |" in md
