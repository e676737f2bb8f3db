"""Range repairs before INT8 (edgerep.quant.repair = edgerep.backends.repair): cross-layer equalization and bias
correction, on the trained demo RepVGG (zoo:repvgg_digits, shipped weights) fused and exported by edgerep, and on
its "+stress" variant (edgerep.quant.stress.scale_channel_pair: stages.1.0's output channel 0 x100, stages.1.1's
input channel 0 /100, as scripts/bench_int8.py builds it), with the shipped digits data.

What is asserted: equalization is exact in float (float64 reference: onnx.reference on double copies of both
models); it evens out the stress's range spread (before/after in the report, the same number quant.ranges computes);
it recovers plain INT8 on ONNX Runtime (agreement and NSR measured); the three backends' INT8 builds quantize the
same repaired bytes (OpenVINO, ONNX Runtime, and TensorRT's host Q/DQ + calibration cache + device bundle, which
need no TensorRT); bias correction models the backends' own weight rounding and cancels its mean shift.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("onnxruntime", reason="ONNX Runtime runs the float checks and the Q/DQ models")

import onnx  # noqa: E402
from onnx import TensorProto, numpy_helper  # noqa: E402

from edgerep.backends import get_backend  # noqa: E402
from edgerep.backends.repair.bias_correction import _weight_axis, fake_quant  # noqa: E402
from edgerep.errors import UserError  # noqa: E402
from edgerep.export.pipeline import export_pipeline  # noqa: E402
from edgerep.files.artifacts import file_sha256, read_sidecar  # noqa: E402
from edgerep.fuse import fuse  # noqa: E402
from edgerep.models.specs import load_model  # noqa: E402
from edgerep.quant.evaluate import evaluate_runner  # noqa: E402
from edgerep.quant.ranges import range_stats, weight_stats  # noqa: E402
from edgerep.quant.repair import REPAIR_OPTION, REPAIRS, apply_repairs, repair_capable  # noqa: E402
from edgerep.quant.stress import scale_channel_pair  # noqa: E402
from edgerep.targets import load_target  # noqa: E402
from edgerep.validate.engine import compute_reference  # noqa: E402
from tests.digits_demo import digits_data  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

PRODUCER, CONSUMER = "stages.1.0.reparam", "stages.1.1.reparam"
A, B = f"/{PRODUCER}/Conv", f"/{CONSUMER}/Conv"
CALIB_N = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("repair")
    info = load_model("zoo:repvgg_digits")
    torch.manual_seed(0)
    normal = fuse(info.module, torch.randn(*info.input_shape)).model
    stress = copy.deepcopy(normal)
    scale_channel_pair(stress, PRODUCER, CONSUMER, channel=0, factor=100.0)
    onnx_paths = {name: Path(export_pipeline(info, m, root / name, opset=17, dynamic_batch=True).sim_path)
                  for name, m in (("normal", normal), ("stress", stress))}
    calib, val = digits_data("calib"), digits_data("val")
    return {"root": root, "onnx": onnx_paths, "calib": calib, "val": val, "fused": {"normal": normal, "stress": stress},
            "reference": compute_reference(info.module, val)}


def _double(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float64 copy: initializers, input and outputs in double (value_info dropped, re-inferred by the evaluator)."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.elem_type = TensorProto.DOUBLE
    del m.graph.value_info[:]
    return m


def _run64(path: Path, x: np.ndarray) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    return ReferenceEvaluator(_double(model)).run(None, {model.graph.input[0].name: x.astype(np.float64)})[0]


def _calib_x(calib, n: int) -> np.ndarray:
    return np.concatenate([x for x, _ in calib.iter_batches(n, limit=n)])


def _weights(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.name: inits[n.input[1]] for n in model.graph.node if n.op_type in ("Conv", "Gemm")}


# --- equalization -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def equalized(setup):
    out = setup["root"] / "stress.equalized.onnx"
    report = apply_repairs(setup["onnx"]["stress"], out, ["equalize"], calib=setup["calib"], num_samples=CALIB_N)
    return out, report


def test_equalization_is_exact_in_float64(setup, equalized):
    out, report = equalized
    x = _calib_x(setup["calib"], 16)
    before, after = _run64(setup["onnx"]["stress"], x), _run64(out, x)
    rel = np.max(np.abs(after - before)) / np.max(np.abs(before))
    # the only departure: the rescaled weights rounded to float32 once (2^-24 relative each)
    assert rel < 1e-5, rel
    # the ONNX side agrees with torch float64 on the fused module itself
    fused = copy.deepcopy(setup["fused"]["stress"]).double().eval()
    with torch.no_grad():
        torch_ref = fused(torch.from_numpy(x.astype(np.float64))).numpy()
    assert np.max(np.abs(after - torch_ref)) / np.max(np.abs(torch_ref)) < 1e-5
    # and the weights really moved (an unchanged model would pass the checks above trivially)
    w0, w1 = _weights(setup["onnx"]["stress"]), _weights(out)
    assert np.max(np.abs(w0[A] - w1[A])) > 0.5 * np.max(np.abs(w0[A]))
    check = report["float_check"]
    assert check["ok"] and check["exact"] and check["max_rel_err"] < 1e-4
    assert report["equalize"]["float_check"]["ok"] and "skipped" not in report["equalize"]


def test_equalization_pairs_and_spread(setup, equalized):
    out, report = equalized
    eq = report["equalize"]
    pairs = {(p["producer"], p["consumer"]): p for p in eq["pairs"]}
    # every Conv -> Relu -> Conv of the fused chain (9 convs), none into the Gemm head
    assert len(pairs) == 8 and all(p["through"] == "Relu" for p in eq["pairs"])
    stressed = pairs[(A, B)]
    assert stressed["spread_before"] > 50 and stressed["spread_after"] < 3
    assert stressed["consumer_in_spread_after"] < 3
    # the report's spread is quant.ranges' w_channel_spread of the files' weights, before and after
    w0, w1 = _weights(setup["onnx"]["stress"]), _weights(out)
    for row in eq["layers"]:
        assert row["spread_before"] == pytest.approx(weight_stats(w0[row["node"]], 0)["w_channel_spread"], rel=1e-5)
        assert row["spread_after"] == pytest.approx(weight_stats(w1[row["node"]], 0)["w_channel_spread"], rel=1e-5)
        assert row["spread_after"] <= row["spread_before"] * 1.01
    # the activation between the stressed pair evens out too (what a per-tensor activation scale suffers)
    acts = {r["node"]: r for r in range_stats(setup["onnx"]["stress"], setup["calib"], num_samples=CALIB_N)}
    acts_eq = {r["node"]: r for r in range_stats(out, setup["calib"], num_samples=CALIB_N)}
    assert acts[B]["a_channel_spread"] > 20 and acts_eq[B]["a_channel_spread"] < acts[B]["a_channel_spread"] / 10
    # every 3x3 consumer is zero-padded: no bias is absorbed (a shift is not constant at the borders)
    assert eq["absorbed_bias"] == 0


def test_equalize_recovers_int8_on_onnxruntime(setup, equalized, tmp_path):
    backend, prof = get_backend("onnxruntime"), load_target("onnxruntime-cpu")
    onnx_path, calib, ref = setup["onnx"]["stress"], setup["calib"], setup["reference"]
    metrics = {}
    for name, repairs in (("plain", []), ("equalize", ["equalize"])):
        art = backend.build(onnx_path, "int8", out_dir=tmp_path / name, profile=prof, calib=calib,
                            options={"num_samples": CALIB_N, REPAIR_OPTION: repairs})
        with backend.load(art) as runner:
            metrics[name] = evaluate_runner(runner, ref, 32)
    plain, eq = metrics["plain"], metrics["equalize"]
    loss_plain, loss_eq = 100 - plain["top1_agreement"], 100 - eq["top1_agreement"]
    assert loss_plain >= 0.5, "plain INT8 of the stressed model should lose agreement"
    assert loss_eq <= loss_plain / 2  # the target: the repair recovers at least half the loss
    assert eq["nsr"] < plain["nsr"] / 10
    assert eq["top1_drop"] < plain["top1_drop"]


# --- one repaired model on every backend ----------------------------------------------------------------------


def test_same_repaired_onnx_on_every_backend(setup, equalized, tmp_path):
    onnx_path, calib = setup["onnx"]["stress"], setup["calib"]
    options = {"num_samples": CALIB_N, REPAIR_OPTION: ["equalize"]}
    expected = file_sha256(equalized[0])  # apply_repairs called directly, with the same inputs
    hashes: dict[str, str] = {}

    ort = get_backend("onnxruntime")
    art = ort.build(onnx_path, "int8", out_dir=tmp_path / "ort", profile=load_target("onnxruntime-cpu"), calib=calib,
                    options=options)
    hashes["onnxruntime"] = file_sha256(tmp_path / "ort" / "model.repaired.onnx")
    side = read_sidecar(Path(art.path))
    assert side["range_repair"]["repairs"] == ["equalize"] and side["onnx"] == str(onnx_path)
    assert side["range_repair"]["onnx_sha256"] == art.info["range_repair"]["onnx_sha256"]

    # TensorRT on the host (no TensorRT here): the Q/DQ model, the calibration cache and the bundle's INT8 ONNX
    trt = get_backend("tensorrt")
    prof = load_target("jetson-xavier-nx")  # int8_mode calibrate: the engine is built from an ONNX + the cache
    art = trt.build(onnx_path, "int8", out_dir=tmp_path / "trt", profile=prof, calib=calib, options=options)
    host = tmp_path / "trt" / "tensorrt-host"
    hashes["tensorrt"] = file_sha256(host / "model.repaired.onnx")
    repaired_sha = art.info["range_repair"]["onnx_sha256"]
    assert read_sidecar(host / "model.qdq.onnx")["onnx_sha256"] == repaired_sha
    assert read_sidecar(host / "calib.cache")["onnx_sha256"] == repaired_sha
    bundle = Path(art.info["bundle"])
    manifest = json.loads((bundle / "bundle.json").read_text())
    int8 = [e for e in manifest["engines"] if e["precision"] == "int8"]
    assert int8 and all(e["onnx"] == "model.repaired.onnx" and "--onnx=model.repaired.onnx" in e["trtexec"]
                        for e in int8)
    assert file_sha256(bundle / "model.repaired.onnx") == hashes["tensorrt"]
    assert file_sha256(bundle / "model.onnx") == file_sha256(onnx_path)  # FP32/FP16 engines keep the original
    assert manifest["calibration"]["onnx"] == "model.repaired.onnx"
    # a plain INT8 rebuild into the same bundle drops the repaired file and goes back to model.onnx
    trt.build(onnx_path, "int8", out_dir=tmp_path / "trt", profile=prof, calib=calib, options={"num_samples": CALIB_N})
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert not (bundle / "model.repaired.onnx").exists()
    assert all(e["onnx"] == "model.onnx" for e in manifest["engines"] if e["precision"] == "int8")

    pytest.importorskip("openvino", reason="OpenVINO backend")
    pytest.importorskip("nncf", reason="OpenVINO INT8 uses NNCF")
    ov = get_backend("openvino")
    art = ov.build(onnx_path, "int8", out_dir=tmp_path / "ov", profile=load_target("openvino-cpu"), calib=calib,
                   options=options)
    hashes["openvino"] = file_sha256(tmp_path / "ov" / "model.repaired.onnx")
    assert read_sidecar(Path(art.path))["range_repair"]["repairs"] == ["equalize"]
    assert set(hashes.values()) == {expected}, hashes


def test_a_repair_that_moves_the_float_output_is_refused(setup, tmp_path, monkeypatch):
    """With a zero tolerance even float32 rounding of the rescaled weights counts as a change: the repair is refused,
    the written model is the original's function unchanged, and the report says why."""
    import edgerep.backends.repair.equalize as eq_mod

    monkeypatch.setattr(eq_mod, "TOLERANCE", 0.0)
    out = tmp_path / "refused.onnx"
    report = apply_repairs(setup["onnx"]["stress"], out, ["equalize"], calib=setup["calib"], num_samples=16)
    assert not report["equalize"]["float_check"]["ok"] and "not applied" in report["equalize"]["skipped"]
    assert not report["float_check"]["ok"]
    w0, w1 = _weights(setup["onnx"]["stress"]), _weights(out)
    assert all(np.array_equal(w0[k], w1[k]) for k in w0)


def test_fp32_build_ignores_the_repairs(setup, tmp_path):
    art = get_backend("onnxruntime").build(setup["onnx"]["stress"], "fp32", out_dir=tmp_path,
                                           profile=load_target("onnxruntime-cpu"),
                                           options={REPAIR_OPTION: ["equalize"]})
    assert "range_repair" not in art.info and not (tmp_path / "model.repaired.onnx").exists()
    assert file_sha256(Path(art.path)) == file_sha256(setup["onnx"]["stress"])


def test_unknown_or_unoffered_repair_is_a_user_error(setup, tmp_path):
    with pytest.raises(UserError, match=r"unknown repair smooth.*known: equalize, bias_correction"):
        apply_repairs(setup["onnx"]["normal"], tmp_path / "x.onnx", ["smooth"], calib=setup["calib"])
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(UserError, match="unknown repair smooth"):
        get_backend("onnxruntime").build(setup["onnx"]["normal"], "int8", out_dir=tmp_path / "b",
                                         profile=load_target("onnxruntime-cpu"), calib=setup["calib"],
                                         options={REPAIR_OPTION: ["smooth"]})
    assert REPAIRS == ("equalize", "bias_correction")
    assert repair_capable("onnxruntime") == repair_capable("tensorrt") == REPAIRS
    assert repair_capable("openvino") == ("equalize",)
    pytest.importorskip("openvino", reason="OpenVINO backend")
    with pytest.raises(UserError, match="bias_correction is not offered on openvino.*NNCF"):
        get_backend("openvino").build(setup["onnx"]["normal"], "int8", out_dir=tmp_path / "ov",
                                      profile=load_target("openvino-cpu"), calib=setup["calib"],
                                      options={REPAIR_OPTION: ["bias_correction"]})


# --- bias correction ------------------------------------------------------------------------------------------


def _assert_rounding_matches(qdq: Path, float_onnx: Path, weights: str) -> int:
    """fake_quant of each float weight equals the weight the Q/DQ model dequantizes; returns the layers compared."""
    model = onnx.load(str(qdq))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    float_w = _weights(float_onnx)
    compared = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        dq = producer[node.input[1]]
        scale = inits[dq.input[1]].astype(np.float64)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        if dq.input[0] in inits:  # ONNX Runtime's placement: the weight stored quantized
            q = inits[dq.input[0]].astype(np.float64)
        else:  # TensorRT's: the float weight through a QuantizeLinear of the same scale (int8, round half to even)
            w = inits[producer[dq.input[0]].input[0]].astype(np.float64)
            shape = [1] * w.ndim
            shape[axis] = -1
            q = np.clip(np.round(w / scale.reshape(shape)), -128, 127)
        assert scale.ndim == 1 and axis == _weight_axis(node), node.name  # per output channel, as modelled
        shape = [1] * q.ndim
        shape[axis] = -1
        deq = q * scale.reshape(shape)
        mine = fake_quant(float_w[node.name], weights, _weight_axis(node))
        assert np.allclose(mine, deq, rtol=0, atol=1e-7 * np.abs(deq).max()), node.name
        compared += 1
    return compared


@pytest.mark.parametrize("weights", ["s8", "s7"])
def test_bias_correction_models_onnxruntime_weight_rounding(setup, tmp_path, weights):
    """fake_quant is what ONNX Runtime's quantizer does to the weights: read back from the built Q/DQ model."""
    from edgerep.backends.onnxruntime.quantize import quantize_qdq

    qdq = tmp_path / "q.onnx"
    quantize_qdq(setup["onnx"]["normal"], qdq, setup["calib"], num_samples=16, weights=weights)
    assert _assert_rounding_matches(qdq, setup["onnx"]["normal"], weights) == 10


def test_bias_correction_models_tensorrt_weight_rounding(setup, tmp_path):
    """The TensorRT host Q/DQ model (symmetric int8 per channel) rounds weights as fake_quant "s8" does."""
    art = get_backend("tensorrt").build(setup["onnx"]["normal"], "int8", out_dir=tmp_path, profile=load_target("tensorrt"),
                                        calib=setup["calib"], options={"num_samples": 16})
    assert _assert_rounding_matches(Path(art.info["qdq"]), setup["onnx"]["normal"], "s8") == 10


def test_bias_correction_cancels_the_mean_shift_of_weight_rounding(setup, tmp_path):
    """Weight-only INT8 simulated in float (every weight replaced by its 7-bit rounding): the mean output error per
    class logit over the validation images falls once the biases are corrected for that rounding."""
    onnx_path, calib = setup["onnx"]["normal"], setup["calib"]
    corrected = tmp_path / "bc.onnx"
    report = apply_repairs(onnx_path, corrected, ["bias_correction"], calib=calib, weights="s7", num_samples=CALIB_N)
    bc = report["bias_correction"]
    assert bc["layers"] == 10 and bc["max_correction"] > 0  # 9 convs and the Gemm head
    assert not report["float_check"]["exact"] and report["float_check"]["max_abs_err"] > 0  # moved, by design

    def weight_rounded(src: Path, dst: Path) -> Path:
        model = onnx.load(str(src))
        inits = {t.name: t for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type in ("Conv", "Gemm"):
                t = inits[node.input[1]]
                axis = 0 if node.op_type == "Conv" or any(a.name == "transB" and a.i for a in node.attribute) else 1
                w = fake_quant(numpy_helper.to_array(t), "s7", axis).astype(np.float32)
                t.CopyFrom(numpy_helper.from_array(w, t.name))
        onnx.save(model, str(dst))
        return dst

    import onnxruntime as ort

    def run(path: Path) -> np.ndarray:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        xs = [x for x, _ in setup["val"].iter_batches(64)]
        return np.concatenate([sess.run(None, {"input": x})[0] for x in xs]).astype(np.float64)

    ref = run(onnx_path)
    plain = run(weight_rounded(onnx_path, tmp_path / "wq.onnx")) - ref
    fixed = run(weight_rounded(corrected, tmp_path / "wq-bc.onnx")) - ref
    # on held-out images (the correction saw calibration images only)
    assert np.abs(fixed.mean(axis=0)).mean() < 0.5 * np.abs(plain.mean(axis=0)).mean()


def test_bias_correction_leaves_float_layers_alone(setup, tmp_path):
    report = apply_repairs(setup["onnx"]["normal"], tmp_path / "bc.onnx", ["bias_correction"], calib=setup["calib"],
                           num_samples=16, float_nodes=[A])
    assert A not in report["bias_correction"]["nodes"]
    assert {"node": A, "why": "kept in float"} in report["bias_correction"]["skipped"]


# --- a small model: bias absorption, grouped consumers --------------------------------------------------------


class _Chain(nn.Module):
    """Conv 3x3 -> ReLU -> 1x1 conv (unpadded: absorbable) -> ReLU -> depthwise 3x3 -> ReLU -> conv 3x3 -> 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c = nn.Conv2d(8, 4, 3, padding=1)
        self.d = nn.Conv2d(4, 4, 1)  # straight after c: an identity pair
        with torch.no_grad():
            self.a.weight.mul_(0.2)
            self.a.bias.copy_(torch.linspace(-0.5, 2.0, 8))  # channels with a positive floor before the ReLU
            self.b.weight[:, 0] *= 30.0  # a range spread for equalization to fix
            self.d.weight[:, 1] *= 20.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.d(self.c(torch.relu(self.dw(torch.relu(self.b(torch.relu(self.a(x))))))))


def test_absorption_and_depthwise_consumer_stay_exact(tmp_path):
    from edgerep.data.sources import open_data

    torch.manual_seed(0)
    model = _Chain().eval()
    src = tmp_path / "chain.onnx"
    torch.onnx.export(model, torch.rand(1, 3, 8, 8), str(src), opset_version=17, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "N"}}, dynamo=False)
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).uniform(0, 1, (48, 3, 8, 8)).astype(np.float32))
    calib = open_data(tmp_path / "calib.npy", None, role="calib")
    out = tmp_path / "eq.onnx"
    report = apply_repairs(src, out, ["equalize"], calib=calib, num_samples=48)
    eq = report["equalize"]
    # a->b, b->dw (depthwise consumer), dw->c, c->d (nothing between)
    assert [p["through"] for p in eq["pairs"]] == ["Relu"] * 3 + ["identity"]
    assert eq["absorbed_bias"] > 0  # into b (1x1, no padding) only
    assert report["float_check"]["ok"]
    x = _calib_x(calib, 48)
    before, after = _run64(src, x), _run64(out, x)
    assert np.max(np.abs(after - before)) / np.max(np.abs(before)) < 1e-5
    for consumer in ("/b/Conv", "/d/Conv"):
        row = next(p for p in eq["pairs"] if p["consumer"] == consumer)
        assert row["consumer_in_spread_before"] > 10, row
        assert row["consumer_in_spread_after"] < row["consumer_in_spread_before"] / 4, row
