"""Models with several outputs (tuple, dict, nested) through every stage: fuse, export, simplify, the runners and
the device bundle, each output named in ONNX order and checked on its own."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from edgerep.errors import UserError
from edgerep.export import check_inputs, compare_onnx, export_onnx, export_pipeline
from edgerep.fuse import fuse
from edgerep.models import ModelInfo, check_outputs
from edgerep.outputs import to_numpy_list
from edgerep.zoo.repvgg import RepVGGBlock

SHAPE = (1, 3, 32, 32)
ROOT = Path(__file__).resolve().parent.parent


class TwoHeads(nn.Module):
    """A RepVGG stem (fusable) and two heads: a tuple of (features-derived map, pooled scores)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = RepVGGBlock(3, 8)
        self.down = RepVGGBlock(8, 16, stride=2)
        self.box = nn.Conv2d(16, 4, 1)
        self.cls = nn.Conv2d(16, 5, 1)

    def forward(self, x: torch.Tensor):
        f = self.down(self.stem(x))
        return self.box(f), self.cls(f).sigmoid().flatten(2)


class DictHeads(TwoHeads):
    """The same net returning a dict, boxes scaled to pixels (a scale far from the scores')."""

    def forward(self, x: torch.Tensor):
        f = self.down(self.stem(x))
        return {"boxes": self.box(f) * 100.0, "scores": self.cls(f).sigmoid().flatten(2)}


class Nested(TwoHeads):
    def forward(self, x: torch.Tensor):
        f = self.down(self.stem(x))
        return [self.box(f), (self.cls(f), f.mean((2, 3)))]


def _randomize_bn(module: nn.Module, seed: int = 1) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return module.eval()


def _info(module: nn.Module) -> ModelInfo:
    torch.manual_seed(0)
    return ModelInfo(module=_randomize_bn(module), spec=f"test:{type(module).__name__}", input_shape=SHAPE)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each toy model fused, exported (dynamic batch) and simplified once: {kind: (info, fused, ExportResult)}."""
    root = tmp_path_factory.mktemp("multi")
    found = {}
    for kind, cls in (("tuple", TwoHeads), ("dict", DictHeads)):
        info = _info(cls())
        result = fuse(info.module, torch.randn(SHAPE))
        found[kind] = (info, result, export_pipeline(info, result.model, root / kind, opset=17, dynamic_batch=True))
    return found


def test_output_names_and_return_types_are_checked():
    assert check_outputs(torch.zeros(1), "m") == ["output"]
    assert check_outputs((torch.zeros(1), torch.zeros(2)), "m") == ["output0", "output1"]
    assert check_outputs({"boxes": torch.zeros(1), "scores": torch.zeros(1)}, "m") == ["boxes", "scores"]
    assert check_outputs([torch.zeros(1), (torch.zeros(1), torch.zeros(1))], "m") == ["output0", "output1", "output2"]
    with pytest.raises(UserError, match=r"^--model m: output 'output1' of the forward is a str, not a tensor"):
        check_outputs((torch.zeros(1), "text"), "m")
    with pytest.raises(UserError, match="returned no tensor"):
        check_outputs((), "m")


def test_fuse_reports_every_output(exported):
    for kind, names in (("tuple", ["output0", "output1"]), ("dict", ["boxes", "scores"])):
        _, result, _ = exported[kind]
        rep = result.report
        assert rep.regions, "the RepVGG blocks fused"
        assert [o["name"] for o in rep.per_output] == names
        assert all(o["max_rel_err"] < 1e-5 for o in rep.per_output)
        assert rep.max_rel_err == max(o["max_rel_err"] for o in rep.per_output)
        assert rep.per_output[0]["shape"] == [1, 4, 16, 16]
        assert "per_output" in rep.to_dict()


def test_fuse_failure_names_the_output_that_broke():
    info = _info(DictHeads())
    result = fuse(info.module, torch.randn(SHAPE))
    with torch.no_grad():  # a real change to the fused model, on the layer feeding only "scores"
        cls = dict(result.model.named_modules())["cls"]
        cls.bias.add_(0.5)
    from edgerep.fuse import check

    _, max_rel, _, _, per_output = check.compare(info.module, result.model, [SHAPE])
    by_name = {o["name"]: o for o in per_output}
    assert by_name["boxes"]["max_rel_err"] < 1e-5 and by_name["scores"]["max_rel_err"] > 1e-3
    assert max_rel == by_name["scores"]["max_rel_err"]


def test_export_names_every_output_with_a_dynamic_batch(exported):
    for kind, names in (("tuple", ["output0", "output1"]), ("dict", ["boxes", "scores"])):
        info, result, exp = exported[kind]
        assert exp.output_names == names
        for path in (exp.onnx_path, exp.sim_path):
            model = onnx.load(str(path))
            onnx.checker.check_model(model)
            assert [o.name for o in model.graph.output] == names
            for out in model.graph.output:  # the batch axis of every output is symbolic
                assert out.type.tensor_type.shape.dim[0].dim_param
        side = json.loads(Path(str(exp.sim_path) + ".json").read_text())
        assert side["output_names"] == names and side["output_name"] == names[0]
        # every stage checked every output, against the fused and the original model
        assert {(c["stage"], c["reference"]) for c in exp.checks} == {(s, r) for s in ("export", "simplify")
                                                                      for r in ("fused", "original")}
        for check in exp.checks:
            assert [o["name"] for o in check["per_output"]] == names and check["passed"]
            assert check["max_rel_err"] == max(o["max_rel_err"] for o in check["per_output"])


def test_single_output_keeps_its_name(tmp_path):
    model = _randomize_bn(nn.Sequential(RepVGGBlock(3, 4), nn.Conv2d(4, 2, 1)))
    path = export_onnx(model, torch.randn(SHAPE), tmp_path / "one.onnx", opset=17)
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["output"]


def test_dynamo_exporter_gives_the_same_names(tmp_path, monkeypatch):
    """The dynamo fallback names the outputs as the TorchScript exporter does."""
    pytest.importorskip("onnxscript", reason="torch's dynamo ONNX exporter needs onnxscript (pip install onnxscript)")
    from edgerep import export as E

    def refuse(*args, **kwargs):
        raise RuntimeError("TorchScript exporter refused (test)")

    monkeypatch.setattr(E, "_export_torchscript", refuse)
    info = _info(DictHeads())
    path = export_onnx(info.module, torch.randn(SHAPE), tmp_path / "d.onnx", opset=18, dynamic_batch=True)
    model = onnx.load(str(path))
    assert {p.key: p.value for p in model.metadata_props}["edgerep.exporter"] == "dynamo"
    assert [o.name for o in model.graph.output] == ["boxes", "scores"]
    compare_onnx(path, info.module, check_inputs(SHAPE, dynamic_batch=True), stage="export", tol=1e-4)


def _edit_initializer(src: Path, dst: Path, name_part: str, delta: float) -> None:
    model = onnx.load(str(src))
    init = next(i for i in model.graph.initializer if name_part in i.name)
    arr = onnx.numpy_helper.to_array(init).copy() + np.float32(delta)
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(dst))


def test_stage_check_names_the_perturbed_output(exported, tmp_path):
    """A real change in the ONNX file (the bias of the conv feeding only 'scores'): the check fails naming it."""
    info, _, exp = exported["dict"]
    broken = tmp_path / "broken.onnx"
    _edit_initializer(exp.sim_path, broken, "cls.bias", 0.5)
    inputs = check_inputs(SHAPE, dynamic_batch=True)
    with pytest.raises(UserError) as caught:
        compare_onnx(broken, info.module, inputs, stage="simplify", tol=1e-4)
    message = caught.value.message
    assert message.startswith("stage simplify: ONNX Runtime output differs from PyTorch: relative error")
    assert "in output 'scores'" in message and "'boxes'" not in message
    ok = compare_onnx(exp.sim_path, info.module, inputs, stage="simplify", tol=1e-4)
    assert [o["name"] for o in ok["per_output"]] == ["boxes", "scores"]


def test_export_refuses_a_model_whose_outputs_went_missing(tmp_path):
    info = _info(DictHeads())
    wrong = TwoHeads()
    wrong.load_state_dict(info.module.state_dict())

    class OnlyBoxes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = wrong.eval()

        def forward(self, x):
            return self.inner(x)[0] * 100.0

    with pytest.raises(UserError, match=r"stage export: the model to export returns 1 output\(s\) \['output'\], "
                                         r"expected \['boxes', 'scores'\]"):
        export_pipeline(info, OnlyBoxes(), tmp_path, opset=17, dynamic_batch=False)
    assert not (tmp_path / "model.onnx").exists()


def test_nested_outputs_flatten_in_onnx_order(tmp_path):
    info = _info(Nested())
    exp = export_pipeline(info, fuse(info.module, torch.randn(SHAPE)).model, tmp_path, opset=17, dynamic_batch=False)
    assert exp.output_names == ["output0", "output1", "output2"]
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    got = ort.InferenceSession(str(exp.sim_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    with torch.no_grad():
        want = to_numpy_list(info.module(torch.from_numpy(x)))
    assert [g.shape for g in got] == [w.shape for w in want] == [(1, 4, 16, 16), (1, 5, 16, 16), (1, 16)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
