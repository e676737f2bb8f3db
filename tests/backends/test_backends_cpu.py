"""OpenVINO and ONNX Runtime backends: every precision built from a real export, calibrated on real images
(scikit-learn's digits), run, and compared with PyTorch."""
from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
import torch

from edgerep.backends import get_backend
from edgerep.data.sources import open_data
from edgerep.errors import UserError
from edgerep.export.pipeline import export_pipeline
from edgerep.files.artifacts import load_artifact
from edgerep.files.onnx_files import onnx_sha256
from edgerep.models.specs import load_model
from edgerep.targets import load_target

SHAPE = (1, 3, 32, 32)
pytest.importorskip("sklearn", reason="scikit-learn provides the digits images")


def _digits(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    img = d.images[offset:offset + n].astype(np.float32) / 16.0  # 8x8 in [0, 1]
    img = np.kron(img, np.ones((4, 4), np.float32))  # 32x32
    x = np.repeat(img[:, None], 3, axis=1)
    return np.ascontiguousarray((x - 0.3) / 0.4, dtype=np.float32), d.target[offset:offset + n].astype(np.int64)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("backends")
    torch.manual_seed(0)
    info = load_model("zoo:repvgg_tiny", input_shape=SHAPE)
    export = export_pipeline(info, info.module, root / "export", opset=17, dynamic_batch=True)
    x, y = _digits(48, 0)
    np.savez(root / "calib.npz", x=x, y=y)
    calib = open_data(root / "calib.npz", None, role="calib")
    val_x, _ = _digits(32, 500)
    with torch.no_grad():
        ref = info.module(torch.from_numpy(val_x)).numpy()
    return {"root": root, "onnx": export.sim_path, "calib": calib, "val": val_x, "ref": ref}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _run_all(runner, x: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([runner.run(x[i:i + batch]) for i in range(0, len(x), batch)])


def _assert_ir_holds(xml, precision: str) -> None:
    """The IR really is what was asked: FP16 weight constants, FakeQuantize ops for INT8 only."""
    import openvino as ov

    ops = ov.Core().read_model(str(xml)).get_ops()
    weight_types = {op.get_output_element_type(0).get_type_name() for op in ops
                    if op.get_type_name() == "Constant" and op.get_output_partial_shape(0).rank.get_length() == 4}
    if precision in ("fp32", "fp16"):
        assert weight_types == {"f16" if precision == "fp16" else "f32"}
    assert ("FakeQuantize" in {op.get_type_name() for op in ops}) == (precision == "int8")


CASES = [("openvino-cpu", "fp32"), ("openvino-cpu", "fp16"), ("openvino-cpu", "int8"),
         ("onnxruntime-cpu", "fp32"), ("onnxruntime-cpu", "int8")]


@pytest.mark.parametrize("target,precision", CASES)
def test_build_run_and_match_pytorch(setup, target, precision):
    profile = load_target(target)
    backend = get_backend(profile.backend)
    assert backend.available() is None
    out_dir = setup["root"] / target
    art = backend.build(setup["onnx"], precision, out_dir=out_dir, profile=profile, calib=setup["calib"])
    assert art.status == "ok" and art.path.is_file() and art.sidecar.is_file()

    side = json.loads(art.sidecar.read_text())
    assert (side["backend"], side["precision"], side["target"]) == (profile.backend, precision, target)
    assert side["onnx_sha256"] == onnx_sha256(setup["onnx"])  # the content hash every sidecar and bundle uses
    assert side["calib_sha256"] == (setup["calib"].sha256() if precision == "int8" else None)
    assert side["packages"][profile.backend] is not None
    if precision == "int8":
        assert side["settings"]["calib_method"] == profile.calibration.method
        assert side["settings"]["calib_samples"] == 48

    if profile.backend == "openvino":
        _assert_ir_holds(art.path, precision)
    else:
        ops = {n.op_type for n in onnx.load(str(art.path)).graph.node}
        assert ("DequantizeLinear" in ops) == (precision == "int8")

    runner = backend.load(load_artifact(art.path))  # reloaded from the files alone
    out = _run_all(runner, setup["val"])
    ref = setup["ref"]
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    cos = _cosine(out, ref)
    if precision == "fp32":
        assert rel < 1e-4, rel
    elif precision == "fp16":
        assert cos > 0.999 and rel < 2e-2, (cos, rel)
    else:
        assert cos > 0.95 and rel > 1e-5, (cos, rel)  # close, but visibly quantized
    times = runner.latency(setup["val"][:1], warmup=1, iterations=3)
    assert len(times) == 3 and all(t > 0 for t in times)
    runner.close()


def test_ignored_nodes_stay_float_on_both_backends(setup):
    model = onnx.load(str(setup["onnx"]))
    first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    options = {"ignored_nodes": [first_conv]}

    ort_art = get_backend("onnxruntime").build(setup["onnx"], "int8", out_dir=setup["root"] / "ign-ort",
                                               calib=setup["calib"], options=options)
    q = onnx.load(str(ort_art.path))
    producers = {o: n for n in q.graph.node for o in n.output}
    conv = next(n for n in q.graph.node if n.name == first_conv)
    assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in conv.input[1:])
    other = [n for n in q.graph.node if n.op_type == "Conv" and n.name != first_conv]
    assert all(producers[n.input[1]].op_type == "DequantizeLinear" for n in other)
    assert ort_art.info["settings"]["ignored_nodes"] == [first_conv]

    import openvino as ov

    ov_art = get_backend("openvino").build(setup["onnx"], "int8", out_dir=setup["root"] / "ign-ov",
                                           calib=setup["calib"], options=options)
    ov_ops = ov_art.info["settings"]["ignored_openvino_ops"]
    assert ov_ops and all(o == first_conv or o.startswith(first_conv + "/") for o in ov_ops)
    ir = ov.Core().read_model(str(ov_art.path))
    for op in ir.get_ops():
        if op.get_type_name() == "Convolution":
            fed_by_fq = any(op.input_value(i).get_node().get_type_name() == "FakeQuantize" for i in range(2))
            assert fed_by_fq == (op.get_friendly_name() not in ov_ops), op.get_friendly_name()

    with pytest.raises(UserError, match="ignored nodes: /no/such/Conv not in"):
        get_backend("onnxruntime").build(setup["onnx"], "int8", out_dir=setup["root"] / "bad",
                                         calib=setup["calib"], options={"ignored_nodes": ["/no/such/Conv"]})


@pytest.mark.parametrize("backend_name,method", [("onnxruntime", "entropy"), ("onnxruntime", "percentile"),
                                                 ("openvino", "percentile")])
def test_other_calibration_methods(setup, backend_name, method):
    """The method changes the quantization itself (not just the sidecar's words): the engine's outputs differ from
    the min/max engine's, and stay close to the reference."""
    backend = get_backend(backend_name)
    outs = {}
    for m in (method, "minmax"):
        art = backend.build(setup["onnx"], "int8", out_dir=setup["root"] / f"{backend_name}-{m}-vs",
                            calib=setup["calib"], options={"calib_method": m})
        assert art.info["settings"]["calib_method"] == m
        runner = backend.load(art)
        outs[m] = _run_all(runner, setup["val"])
        runner.close()
    assert _cosine(outs[method], setup["ref"]) > 0.9
    assert not np.array_equal(outs[method], outs["minmax"])
    if backend_name == "onnxruntime":  # the Q/DQ model's activation scales are the ranges of that method
        from edgerep.backends.tensorrt.qdq import activation_scales

        scales = {m: activation_scales(onnx.load(str(setup["root"] / f"{backend_name}-{m}-vs" / "model.int8.onnx")))
                  for m in (method, "minmax")}
        assert scales[method].keys() == scales["minmax"].keys()
        assert any(scales[method][k] != scales["minmax"][k] for k in scales[method])


def test_argument_errors(setup):
    ort = get_backend("onnxruntime")
    with pytest.raises(UserError, match="--precision fp16: the onnxruntime backend builds fp32, int8"):
        ort.build(setup["onnx"], "fp16", out_dir=setup["root"] / "e1")
    with pytest.raises(UserError, match="--calib: onnxruntime INT8 needs calibration data"):
        ort.build(setup["onnx"], "int8", out_dir=setup["root"] / "e2")
    with pytest.raises(UserError, match="--calib-method kl"):
        ort.build(setup["onnx"], "int8", out_dir=setup["root"] / "e3", calib=setup["calib"], options={"calib_method": "kl"})
    with pytest.raises(UserError, match="unknown colour"):
        ort.build(setup["onnx"], "fp32", out_dir=setup["root"] / "e4", options={"colour": 1})


def test_failed_build_leaves_no_file(setup, tmp_path):
    # calibration data of the wrong shape: the quantizer fails, nothing that looks finished is left
    np.savez(tmp_path / "wrong.npz", x=np.zeros((8, 3, 16, 16), np.float32))
    wrong = open_data(tmp_path / "wrong.npz", None, role="calib")
    for name in ("onnxruntime", "openvino"):
        out_dir = tmp_path / name
        with pytest.raises(UserError, match="INT8"):
            get_backend(name).build(setup["onnx"], "int8", out_dir=out_dir, calib=wrong)
        assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_missing_package_is_reported(setup, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    backend = get_backend("openvino")
    message = "openvino is not installed; pip install 'edgerep[openvino]'"
    assert backend.available() == message
    with pytest.raises(UserError, match=r"openvino is not installed; pip install 'edgerep\[openvino\]'"):
        backend.build(setup["onnx"], "fp32", out_dir=setup["root"] / "none")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert get_backend("onnxruntime").available() == "onnxruntime is not installed; pip install 'edgerep[onnxruntime]'"


def test_static_batch_model_calibrates_sample_by_sample(setup, tmp_path):
    info = load_model("zoo:repvgg_tiny", input_shape=SHAPE)
    export = export_pipeline(info, info.module, tmp_path / "static", opset=13, dynamic_batch=False)
    with torch.no_grad():  # this model's own reference (its weights are not the fixture model's)
        ref = info.module(torch.from_numpy(setup["val"])).numpy()
    for name in ("onnxruntime", "openvino"):
        art = get_backend(name).build(export.sim_path, "int8", out_dir=tmp_path / name, calib=setup["calib"],
                                      options={"num_samples": 20})
        assert art.info["settings"]["calib_samples"] == 20
        assert art.info["input_shape"] == list(SHAPE)
        runner = get_backend(name).load(art)
        # accuracy on the static path, sample by sample, against the PyTorch reference
        out = np.concatenate([runner.run(setup["val"][i:i + 1]) for i in range(len(setup["val"]))])
        runner.close()
        assert out.shape == ref.shape and _cosine(out, ref) > 0.9


def test_per_tensor_weights_on_onnxruntime(setup, tmp_path):
    """per_channel=False gives one weight scale per conv; the default gives one per output channel."""
    backend = get_backend("onnxruntime")
    profile = load_target("onnxruntime-cpu")
    scale_sizes = {}
    for per_channel in (True, False):
        art = backend.build(setup["onnx"], "int8", out_dir=tmp_path / str(per_channel), profile=profile,
                            calib=setup["calib"], options={"per_channel": per_channel})
        model = onnx.load(str(art.path))
        inits = {t.name: t for t in model.graph.initializer}
        sizes = []
        for node in model.graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].data_type == onnx.TensorProto.INT8 \
                    and len(inits[node.input[0]].dims) == 4:
                sizes.append(int(np.prod(inits[node.input[1]].dims) if inits[node.input[1]].dims else 1))
        scale_sizes[per_channel] = sizes
        runner = backend.load(art)
        assert _cosine(_run_all(runner, setup["val"]), setup["ref"]) > 0.95
        runner.close()
    assert scale_sizes[False] and all(s == 1 for s in scale_sizes[False])
    assert any(s > 1 for s in scale_sizes[True])


def test_full_bias_correction_on_openvino_and_options_per_backend(setup, tmp_path):
    backend = get_backend("openvino")
    profile = load_target("openvino-cpu")
    outs = {}
    for mode in ("full", None):  # None: the profile's default
        art = backend.build(setup["onnx"], "int8", out_dir=tmp_path / str(mode), profile=profile, calib=setup["calib"],
                            options={"bias_correction": mode} if mode else {})
        if mode:
            assert json.loads(art.sidecar.read_text())["settings"]["bias_correction"] == "full"
        runner = backend.load(art)
        outs[mode] = _run_all(runner, setup["val"])
        runner.close()
    # the option's effect: other biases, so other outputs, and still close to the reference
    assert not np.array_equal(outs["full"], outs[None])
    assert _cosine(outs["full"], setup["ref"]) > 0.95
    with pytest.raises(UserError, match="per_channel"):  # OpenVINO's NNCF weights are always per-channel
        backend.build(setup["onnx"], "int8", out_dir=tmp_path / "x", profile=profile, calib=setup["calib"],
                      options={"per_channel": False})
    with pytest.raises(UserError, match="bias_correction"):
        get_backend("onnxruntime").build(setup["onnx"], "int8", out_dir=tmp_path / "y", profile=load_target("onnxruntime-cpu"),
                                         calib=setup["calib"], options={"bias_correction": "full"})


def test_openvino_write_failure_is_an_os_error_and_leaves_no_file(setup, tmp_path):
    """OpenVINO reports a failed write (full disk) as "basic_ios::clear: iostream error"; the build turns it
    into an OSError naming the engine, which `edgerep build` reports as one line. Real write limit
    (RLIMIT_FSIZE) in a child process."""
    import resource
    import subprocess

    out_dir = tmp_path / "engines"
    code = ("import sys\nfrom edgerep.backends import get_backend\n"
            "try:\n    get_backend('openvino').build(sys.argv[1], 'fp32', out_dir=sys.argv[2])\n"
            "except OSError as exc:\n    print(exc.errno, exc.strerror, exc.filename); sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(setup["onnx"]), str(out_dir)], capture_output=True,
                          text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000)))
    assert proc.returncode == 3, proc.stderr
    assert "OpenVINO could not write the IR" in proc.stdout and "model.fp32.xml" in proc.stdout
    assert not out_dir.exists() or [p for p in out_dir.rglob("*") if p.is_file()] == []
