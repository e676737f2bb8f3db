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

from edgerep.backends.tensorrt.bundle import load_bundle
from edgerep.errors import UserError
from edgerep.export.compare import check_inputs, compare_onnx
from edgerep.export.onnx_export import export_onnx
from edgerep.export.pipeline import export_pipeline
from edgerep.fuse import fuse
from edgerep.models.outputs import to_numpy_list
from edgerep.models.specs import ModelInfo, check_outputs
from edgerep.zoo.repvgg import RepVGGBlock
from tests.reparam_helpers import randomize_bn

SHAPE = (1, 3, 32, 32)


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
    return randomize_bn(module, seed, affine=True).eval()


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
    import dataclasses

    report = dataclasses.replace(result.report, per_output=per_output, max_rel_err=max_rel)
    assert not report.passed(1e-4) and report.failed_outputs(1e-4) == ["scores"]
    assert report.failure(1e-4) == "in output 'scores'"


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
    path = export_onnx(model, torch.randn(SHAPE), tmp_path / "named.onnx", opset=17, output_name="output0")
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["output0"]


def test_dynamo_exporter_gives_the_same_names(tmp_path, monkeypatch):
    """The dynamo fallback names the outputs as the TorchScript exporter does."""
    pytest.importorskip("onnxscript", reason="torch's dynamo ONNX exporter needs onnxscript (pip install onnxscript)")
    from edgerep.export import onnx_export as E

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


# --- runners -------------------------------------------------------------------------------------


def _torch_outputs(info: ModelInfo, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return to_numpy_list(info.module(torch.from_numpy(x)))


def _assert_close(got: list[np.ndarray], want: list[np.ndarray], tol: float = 1e-4) -> None:
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        assert np.max(np.abs(g - w)) <= tol * max(float(np.max(np.abs(w))), 1.0)


def test_onnxruntime_runners_return_every_output(exported):
    from edgerep.backends.onnxruntime.runner import OrtRunner

    info, _, exp = exported["dict"]
    x = np.random.default_rng(3).standard_normal((3, *SHAPE[1:])).astype(np.float32)
    want = _torch_outputs(info, x)
    for runner in (OrtRunner(exp.sim_path), OrtRunner(exp.sim_path, simulate_qdq=True)):
        assert runner.output_names == ["boxes", "scores"]
        got = runner.run_all(x)
        _assert_close(got, want)
        np.testing.assert_array_equal(runner.run(x), got[0])  # run is the first output
        runner.close()


def test_openvino_runner_maps_outputs_by_name(exported, tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed")
    from edgerep.backends import get_backend
    from edgerep.backends.openvino.runner import OpenVINORunner

    info, _, exp = exported["dict"]
    backend = get_backend("openvino")
    art = backend.build(exp.sim_path, "fp32", out_dir=tmp_path)
    assert art.info["settings"]["output_names"] == ["boxes", "scores"]
    runner = backend.load(art)
    x = np.random.default_rng(4).standard_normal((1, *SHAPE[1:])).astype(np.float32)
    want = _torch_outputs(info, x)
    assert runner.output_names == ["boxes", "scores"]
    got = runner.run_all(x)
    _assert_close(got, want)
    np.testing.assert_array_equal(runner.run(x), got[0])
    # asked in another order, the outputs come by name, not by port position
    flipped = OpenVINORunner(art.path, output_names=["scores", "boxes"])
    assert flipped.output_names == ["scores", "boxes"]
    _assert_close(flipped.run_all(x), want[::-1])
    np.testing.assert_array_equal(flipped.run(x), flipped.run_all(x)[0])
    with pytest.raises(UserError, match=r"do not match the ONNX outputs \['boxes', 'logits'\]"):
        OpenVINORunner(art.path, output_names=["boxes", "logits"])
    # an IR without recorded names (built before they were): port order, each port under its ONNX name
    assert OpenVINORunner(art.path).output_names == ["boxes", "scores"]


# --- the device bundle ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(exported, tmp_path_factory):
    """A jetson-orin-nano bundle of the dict model with its two reference outputs, made on this host."""
    from edgerep.backends.tensorrt.host import bundle_reference, update_bundle
    from edgerep.data.sources import open_data
    from edgerep.targets import load_target
    from edgerep.validate.engine import Reference

    info, _, exp = exported["dict"]
    root = tmp_path_factory.mktemp("multi-bundle")
    x = np.random.default_rng(5).standard_normal((6, *SHAPE[1:])).astype(np.float32)
    np.savez(root / "val.npz", x=x)
    source = open_data(root / "val.npz", None, role="val")
    outs = _torch_outputs(info, x)
    reference = Reference(outputs=outs[0], labels=None, source=source)
    reference.outputs_all, reference.output_names = outs, ["boxes", "scores"]
    bdir = root / "bundle"
    update_bundle(bdir, onnx_path=exp.sim_path, profile=load_target("jetson-orin-nano"), precisions=["fp16"])
    bundle_reference(bdir, reference)
    return bdir, outs, info


def test_bundle_carries_every_reference_output_by_name(bundle):
    from edgerep.backends.tensorrt.bundle import BUNDLE_SCHEMA, read_reference, read_reference_all

    bdir, outs, _ = bundle
    b = load_bundle(bdir)
    m = b.manifest
    assert m["schema"] == BUNDLE_SCHEMA == 2 and m["output_names"] == ["boxes", "scores"]
    assert m["output_name"] == "boxes"
    assert m["reference"]["outputs"] == [{"name": "boxes", "key": "ref", "shape": [6, 4, 16, 16]},
                                         {"name": "scores", "key": "ref1", "shape": [6, 5, 256]}]
    _, names, refs, labels = read_reference_all(b)
    assert names == ["boxes", "scores"] and labels is None
    for got, want in zip(refs, outs):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(read_reference(b)[1], outs[0])


def test_schema1_single_output_bundle_still_reads(bundle, tmp_path):
    """A bundle written before several outputs were carried (schema 1, one "ref", no reference.outputs)."""
    import shutil

    from edgerep.backends.tensorrt.bundle import read_reference_all, write_reference
    from edgerep.files.artifacts import file_sha256

    bdir, outs, _ = bundle
    old = tmp_path / "old"
    shutil.copytree(bdir, old)
    m = json.loads((old / "bundle.json").read_text())
    m["schema"] = 1
    del m["output_names"]
    del m["reference"]["outputs"]
    m["output_name"] = "logits"
    with np.load(old / "reference.npz") as data:
        x = data["x"]
    m["files"]["reference.npz"] = write_reference(old, x, outs[0], None)
    assert m["files"]["reference.npz"] == file_sha256(old / "reference.npz")
    (old / "bundle.json").write_text(json.dumps(m))
    _, names, refs, _ = read_reference_all(load_bundle(old))
    assert names == ["logits"] and len(refs) == 1
    np.testing.assert_array_equal(refs[0], outs[0])


def _run_check_engine(bdir: Path, *engines: str) -> subprocess.CompletedProcess:
    code = ("import sys, runpy\nsys.modules['torch'] = None\nsys.modules['edgerep'] = None\n"
            f"sys.argv = ['check_engine.py', *{list(engines)!r}]\n"
            f"runpy.run_path({str(bdir / 'check_engine.py')!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(bdir),
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""})


def test_check_engine_compares_every_output_by_name(bundle, tmp_path):
    """The device script (numpy + onnxruntime standing in for TensorRT) reports each output's errors by name,
    and a real change to the layer feeding only 'scores' shows there, not in 'boxes'."""
    bdir, _, _ = bundle
    proc = _run_check_engine(bdir, "model.onnx")
    assert proc.returncode == 0, proc.stderr[-1500:]
    acc = json.loads(proc.stdout)["accuracy"]
    assert [o["name"] for o in acc["outputs"]] == ["boxes", "scores"]
    assert [o["shape"] for o in acc["outputs"]] == [[6, 4, 16, 16], [6, 5, 256]]
    assert all(o["max_abs_err"] < 1e-3 and o["cosine"] > 0.99999 for o in acc["outputs"])
    assert acc["max_abs_err"] == acc["outputs"][0]["max_abs_err"]  # the gates read the first output
    broken = tmp_path / "broken.onnx"
    _edit_initializer(bdir / "model.onnx", broken, "cls.bias", 0.5)
    acc = json.loads(_run_check_engine(bdir, str(broken)).stdout)["accuracy"]
    by_name = {o["name"]: o for o in acc["outputs"]}
    assert by_name["boxes"]["max_abs_err"] < 1e-3 and by_name["scores"]["max_abs_err"] > 1e-2
    # an engine without one of the reference's outputs is refused, naming it
    one = tmp_path / "one.onnx"
    model = onnx.load(str(bdir / "model.onnx"))
    del model.graph.output[1]
    onnx.save(model, str(one))
    proc = _run_check_engine(bdir, str(one))
    assert proc.returncode != 0 and "has no output 'scores' of the reference" in proc.stderr


def test_validate_bundle_takes_every_output(bundle):
    from io import StringIO

    from rich.console import Console

    from edgerep.commands.validate_bundle import run_validate_bundle

    bdir, _, _ = bundle
    buf = StringIO()
    code = run_validate_bundle(bundle=bdir, engine=bdir / "model.onnx", as_json=True, out=Console(file=buf, width=400))
    record = json.loads(buf.getvalue())
    assert code == 0 and record["accuracy"]["max_abs_err"] < 1e-3
    if "outputs" in record["accuracy"]:  # per-output scoring lives in validate.py (helper "pipe")
        assert [o["name"] for o in record["accuracy"]["outputs"]] == ["boxes", "scores"]


def test_isa_probe_returns_every_output(exported, tmp_path):
    """The child process behind the target-ISA re-run saves every output, in ONNX order."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from edgerep.backends import get_backend
    from edgerep.validate import isa_check

    info, _, exp = exported["dict"]
    art = get_backend("onnxruntime").build(exp.sim_path, "fp32", out_dir=tmp_path)
    x = np.random.default_rng(6).standard_normal((5, *SHAPE[1:])).astype(np.float32)
    outs = isa_check.run_on_target_all(Path(art.path), x, 2, {"method": "native"})
    _assert_close(outs, _torch_outputs(info, x))
    np.testing.assert_array_equal(isa_check.run_on_target(Path(art.path), x, 2, {"method": "native"}), outs[0])


def test_check_engine_times_several_engines_in_interleaved_rounds(bundle, tmp_path):
    """On the device the engines take turns over ROUNDS rounds (edgerep's protocol), so the bundle's recommend.py
    can put an interval on a speed-up; a copy of the same engine is never 'measurably faster' than itself."""
    import shutil

    bdir, _, _ = bundle
    twin = tmp_path / "twin.onnx"
    shutil.copyfile(bdir / "model.onnx", twin)
    proc = _run_check_engine(bdir, "model.onnx", str(twin))
    assert proc.returncode == 0, proc.stderr[-1500:]
    out = json.loads(proc.stdout)
    for record in out["engines"]:
        lat = record["latency_by_batch"][0]
        assert lat["rounds"] == 5 and len(lat["round_p50"]) == 5 and lat["p50"] > 0
        assert lat["spread"] == [min(lat["round_p50"]), max(lat["round_p50"])]
    rec = out["recommended"]
    assert rec["precision"] == "fp32" and rec["batch_size"] == 1, rec  # timed at the profile's deploy batch
    assert all(n["speedup"] < 1.05 or (n["interval"] and n["interval"][0] < 1.05) for n in rec["not_faster"])
