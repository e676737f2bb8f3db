"""INT8 sensitivity and accuracy-budgeted mixed precision (edgerep.quant), on the trained demo RepVGG
(zoo:repvgg_digits, shipped weights), fused, with the shipped digits data (calib/digits/{calib,val}.npz).

The "range-blown" model: one fused conv's output channel 0 (weights and bias) is scaled by 100 and the next
conv's input channel 0 by 1/100. ReLU is positively homogeneous, so the network computes the same function in
float; under INT8 the activation between them has one channel 100x the others, which a per-tensor activation
scale cannot hold. That layer must come out as the most sensitive, and the --max-drop search must fix it.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="ONNX Runtime runs the Q/DQ models")

from edgerep.backends import get_backend  # noqa: E402
from edgerep.export.pipeline import export_pipeline  # noqa: E402
from edgerep.fuse import fuse  # noqa: E402
from edgerep.models.specs import load_model  # noqa: E402
from edgerep.quant.evaluate import evaluate_onnx, evaluate_runner  # noqa: E402
from edgerep.quant.layers import module_from_initializer, module_from_node_name, module_names_of, quantizable_layers  # noqa: E402
from edgerep.quant.precision import ov_layer_precisions, qdq_float_layers  # noqa: E402
from edgerep.quant.qdq import QdqMaker, qdq_quantized_nodes, weights_for  # noqa: E402
from edgerep.quant.ranges import range_stats  # noqa: E402
from edgerep.quant.sensitivity import layer_sensitivity  # noqa: E402
from edgerep.quant.stress import scale_channel_pair  # noqa: E402
from edgerep.targets import load_target  # noqa: E402
from edgerep.validate.engine import compute_reference  # noqa: E402
from tests.digits_demo import digits_data  # noqa: E402

PRODUCER, CONSUMER = "stages.1.0.reparam", "stages.1.1.reparam"
A, B = f"/{PRODUCER}/Conv", f"/{CONSUMER}/Conv"
CALIB_N = 64  # calibration samples: enough for stable ranges on 32x32 digits, fast


def _blow(fused: torch.nn.Module) -> None:
    scale_channel_pair(fused, PRODUCER, CONSUMER, channel=0, factor=100.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    info = load_model("zoo:repvgg_digits")
    torch.manual_seed(0)
    normal = fuse(info.module, torch.randn(*info.input_shape)).model
    blown = copy.deepcopy(normal)
    _blow(blown)
    onnx = {name: Path(export_pipeline(info, m, root / name, opset=17, dynamic_batch=True).sim_path)
            for name, m in (("normal", normal), ("blown", blown))}
    calib = digits_data("calib")
    val = digits_data("val")
    reference = compute_reference(info.module, val)  # the unfused PyTorch model, all 360 labelled digits
    return {"root": root, "info": info, "normal": normal, "blown": blown, "onnx": onnx, "calib": calib,
            "reference": reference, "names": module_names_of(normal)}


# --- names -------------------------------------------------------------------------------------------


def test_nodes_map_to_the_fused_modules(setup):
    layers = quantizable_layers(setup["onnx"]["normal"], setup["names"])
    weighted = {n for n, m in setup["normal"].named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert {layer.module for layer in layers} == weighted
    by_node = {layer.node: layer.module for layer in layers}
    assert by_node[A] == PRODUCER and by_node["/head.fc/Gemm"] == "head.fc"
    assert all(layer.mapped_by == "initializer" for layer in layers)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter is the point of this test
def test_torchscript_scope_names_map_to_modules(tmp_path, setup):
    """The unfused model exported by the TorchScript exporter itself: BN folded into anonymous initializers
    (onnx::Conv_NN), so only the node's scope path names the module."""
    import onnx

    model = setup["info"].module
    torch.onnx.export(model, torch.randn(1, 1, 32, 32), str(tmp_path / "ts.onnx"), opset_version=17, dynamo=False)
    names = module_names_of(model)
    layers = quantizable_layers(onnx.load(str(tmp_path / "ts.onnx")), names)
    convs = [layer for layer in layers if layer.op_type == "Conv"]
    assert len(convs) == 18  # 9 blocks x (3x3 + 1x1)
    assert all(layer.mapped_by == "node-name" and layer.module in names for layer in convs)
    assert all(isinstance(model.get_submodule(layer.module), torch.nn.Conv2d) for layer in convs)
    assert "stages.1.1.conv_kxk.conv" in {layer.module for layer in convs}


def test_name_rules():
    names = {"stages", "stages.1", "stages.1.0", "stages.1.0.reparam", "head.fc"}
    assert module_from_node_name("/stages.1/stages.1.0/reparam/Conv", names) == "stages.1.0.reparam"
    assert module_from_node_name("/stages.1.0.reparam/Conv") == "stages.1.0.reparam"
    assert module_from_node_name("/reparam_3/Conv", names) is None  # a GraphModule's call name is no module
    assert module_from_initializer("p_stages_1_0_reparam_weight", names) == ("stages.1.0.reparam", "dynamo-name")
    assert module_from_initializer("onnx::Conv_204", names) == (None, "none")
    # a fused conv reported against the unfused model: the block that holds it
    from edgerep.quant.layers import owning_module

    unfused = {"stages", "stages.1", "stages.1.0", "head.fc"}
    assert owning_module("/stages.1.0.reparam/Conv", unfused) == "stages.1.0"
    assert owning_module("/reparam_3/Conv", unfused) is None


# --- Q/DQ variants and sensitivity -------------------------------------------------------------------


def test_qdq_maker_builds_what_the_onnxruntime_backend_builds(setup, tmp_path):
    """Sensitivity must measure the engine the backend makes: same calibration, same quantized model."""
    onnx_path, ref = setup["onnx"]["normal"], setup["reference"]
    profile = load_target("onnxruntime-cpu")
    # the weight format the backend picks for this machine's ISA (7-bit without VNNI), as sensitivity does
    made = QdqMaker(onnx_path, setup["calib"], tmp_path / "maker", style="onnxruntime", method="minmax",
                    num_samples=CALIB_N, weights=weights_for("onnxruntime", profile)).make(tmp_path / "maker.onnx")
    backend = get_backend("onnxruntime")
    art = backend.build(onnx_path, "int8", out_dir=tmp_path / "ort", profile=profile,
                        calib=setup["calib"], options={"calib_method": "minmax", "num_samples": CALIB_N})
    runner = backend.load(art)
    try:
        x = next(ref.source.iter_batches(64))[0]
        theirs = runner.run(x)
    finally:
        runner.close()
    from edgerep.backends.onnxruntime.runner import OrtRunner

    ours = OrtRunner(made).run(x)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * float(np.abs(theirs).max()))


def test_blown_model_is_the_same_function_in_float(setup):
    float_metrics = evaluate_onnx(setup["onnx"]["blown"], setup["reference"])
    assert float_metrics["top1_drop"] == 0.0 and float_metrics["cosine"] > 0.99999


def test_sensitivity_ranks_the_range_blown_layer_first(setup, tmp_path):
    ref, names = setup["reference"], setup["names"]
    # NNCF/TensorRT placement (quantizers on inputs): the conv reading the blown activation is the culprit.
    sens = layer_sensitivity(setup["onnx"]["blown"], setup["calib"], ref, tmp_path / "ov", style="openvino",
                             num_samples=CALIB_N, module_names=names)
    assert sens.ranked_nodes()[0] == B
    top = sens.layers[0]
    assert top.layer.module == CONSUMER
    assert sens.all_int8["drop"] > 0.5  # the whole model in INT8 loses digits ...
    assert top.float_one["drop"] == 0.0  # ... which keeping that one layer in float gives back
    # ONNX Runtime placement (outputs quantized too): the producer's output is the same blown tensor.
    sens_ort = layer_sensitivity(setup["onnx"]["blown"], setup["calib"], ref, tmp_path / "ort", style="onnxruntime",
                                 num_samples=CALIB_N, module_names=names)
    assert set(sens_ort.ranked_nodes()[:2]) == {A, B}
    # In the healthy model neither layer stands out.
    healthy = layer_sensitivity(setup["onnx"]["normal"], setup["calib"], ref, tmp_path / "normal", style="openvino",
                                num_samples=CALIB_N, module_names=names)
    assert healthy.ranked_nodes()[0] != B and healthy.all_int8["drop"] < sens.all_int8["drop"]


def test_range_statistics_flag_the_blown_layers(setup):
    blown = {r["node"]: r for r in range_stats(setup["onnx"]["blown"], setup["calib"], num_samples=CALIB_N)}
    normal = {r["node"]: r for r in range_stats(setup["onnx"]["normal"], setup["calib"], num_samples=CALIB_N)}
    assert any(f.startswith("a_channel_spread") for f in blown[B]["flags"])  # the activation B reads
    assert blown[B]["a_channel_spread"] > 20 * normal[B]["a_channel_spread"]
    assert any(f.startswith("w_channel_spread") for f in blown[A]["flags"])  # A's output channel 0
    assert not any(f.startswith(("a_channel", "w_channel")) for f in normal[A]["flags"] + normal[B]["flags"])


# --- the exclusion list on every backend ---------------------------------------------------------------


def test_exclusion_list_keeps_the_layer_in_float_on_each_backend(setup, tmp_path):
    onnx_path, calib = setup["onnx"]["normal"], setup["calib"]
    nodes = [layer.node for layer in quantizable_layers(onnx_path)]
    common = {"calib_method": "minmax", "num_samples": CALIB_N}

    ort = get_backend("onnxruntime")
    prof = load_target("onnxruntime-cpu")
    plain = ort.build(onnx_path, "int8", out_dir=tmp_path / "ort-plain", profile=prof, calib=calib, options=common)
    mixed = ort.build(onnx_path, "int8", out_dir=tmp_path / "ort-mixed", profile=prof, calib=calib,
                      options={**common, "ignored_nodes": [B]})
    assert qdq_float_layers(plain.path, nodes) == []
    assert qdq_float_layers(mixed.path, nodes) == [B]
    assert qdq_quantized_nodes(mixed.path, [A])[A]

    pytest.importorskip("openvino", reason="OpenVINO backend")
    pytest.importorskip("nncf", reason="OpenVINO INT8 uses NNCF")
    ov = get_backend("openvino")
    prof = load_target("openvino-cpu")
    plain = ov.build(onnx_path, "int8", out_dir=tmp_path / "ov-plain", profile=prof, calib=calib, options=common)
    mixed = ov.build(onnx_path, "int8", out_dir=tmp_path / "ov-mixed", profile=prof, calib=calib,
                     options={**common, "ignored_nodes": [B]})
    before, after = ov_layer_precisions(plain.path, nodes), ov_layer_precisions(mixed.path, nodes)
    assert before[B] in ("u8", "i8") and after[B] == "f32"  # the CPU plugin runs that conv in float
    assert all(after[n] in ("u8", "i8") for n in nodes if n != B)

    # TensorRT: the Q/DQ model the engine is built from (made on the host; no GPU needed for it)
    trt = get_backend("tensorrt")
    art = trt.build(onnx_path, "int8", out_dir=tmp_path / "trt", profile=load_target("tensorrt"), calib=calib,
                    options={**common, "ignored_nodes": [B]})
    assert qdq_float_layers(Path(art.info["qdq"]), nodes) == [B]


# --- the --max-drop search -----------------------------------------------------------------------------


def test_search_meets_the_budget_on_onnxruntime(setup, tmp_path):
    from edgerep.quant.mixed import search

    backend, prof = get_backend("onnxruntime"), load_target("onnxruntime-cpu")
    onnx_path, calib, ref = setup["onnx"]["blown"], setup["calib"], setup["reference"]
    # no range repair: equalization alone undoes this stress (tests/quant/test_int8_search.py checks that); this
    # test is about the float layers
    result = search(backend=backend, onnx_path=onnx_path, profile=prof, calib=calib, reference=ref, max_drop=0.3,
                    work_dir=tmp_path / "search", base_options={"num_samples": CALIB_N, "range_repair": []},
                    module_names=setup["names"])
    plain = [c for c in result.candidates if c.source == "calibration"]
    assert {c.options["calib_method"] for c in plain} == {"minmax", "entropy", "percentile"}
    assert all(not c.meets(0.3) for c in plain)  # no calibration alone fixes it: the search had work to do
    chosen = result.chosen
    assert chosen.meets(0.3) and set(chosen.float_layers) <= {A, B} and chosen.float_layers
    # read back from the built Q/DQ model (in graph order; the search lists them by sensitivity)
    assert sorted(chosen.engine_float_layers) == sorted(chosen.float_layers)
    # Re-measure independently: the chosen options, built again, stay within budget on the val set.
    art = backend.build(onnx_path, "int8", out_dir=tmp_path / "again", profile=prof, calib=calib, options=result.options)
    runner = backend.load(art)
    try:
        metrics = evaluate_runner(runner, ref, 32)
    finally:
        runner.close()
    assert metrics["top1_drop"] <= 0.3
    report = result.to_dict()
    assert report["met"] and report["float_modules"] == [PRODUCER if n == A else CONSUMER for n in chosen.float_layers]


def test_search_on_openvino_compares_with_nncf_accuracy_control(setup, tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO backend")
    pytest.importorskip("nncf", reason="OpenVINO INT8 uses NNCF")
    from edgerep.quant.mixed import search

    result = search(backend=get_backend("openvino"), onnx_path=setup["onnx"]["blown"],
                    profile=load_target("openvino-cpu"), calib=setup["calib"], reference=setup["reference"],
                    max_drop=0.3, work_dir=tmp_path / "search",
                    # NNCF's fast bias correction pinned: on CPUs without VNNI its full bias correction alone meets
                    # this budget (0.28 pt), and this test is about the float-layer search and NNCF's answer to it
                    # and no range repair, which alone undoes the stress
                    base_options={"calib_method": "minmax", "num_samples": CALIB_N, "bias_correction": "fast",
                                  "range_repair": []},
                    module_names=setup["names"])
    assert result.chosen.meets(0.3)
    assert result.chosen.float_layers == [B] == result.chosen.engine_float_layers
    assert result.nncf is not None and "float_layers" in result.nncf  # NNCF's answer, read from its own model
    nncf_rows = [c for c in result.candidates if c.source == "nncf-accuracy-control"]
    assert len(nncf_rows) == 1 and nncf_rows[0].float_layers == result.nncf["float_layers"]


@pytest.mark.slow
def test_build_max_drop_end_to_end(setup, tmp_path):
    """`edgerep build --max-drop` on the blown weights (a fused checkpoint loads into the deploy form)."""
    from safetensors.torch import save_file

    from edgerep.pipeline.build import BuildOptions, build

    weights = tmp_path / "blown.safetensors"
    save_file({k: v.contiguous() for k, v in setup["blown"].state_dict().items()}, str(weights))
    # This is about the layers the budget needs. On the 32x32 demo ONNX Runtime's INT8 is barely faster than FP32
    # and every float layer costs speed, so the default [int8] min_speedup would (rightly) stop the search: the
    # profile here lowers it (the speed stop has its own test, tests/quant/test_int8_search.py).
    from edgerep.targets import targets_dirs

    source = next(d / "onnxruntime-cpu.toml" for d in targets_dirs() if (d / "onnxruntime-cpu.toml").is_file())
    profile = tmp_path / "onnxruntime-cpu.toml"
    profile.write_text(source.read_text().replace("min_speedup = 1.3", "min_speedup = 0.2"))
    opts = dict(model="zoo:repvgg_digits", weights=weights, target=str(profile), precisions="int8",
                backend_options={"range_repair": []},  # no range repair either: it alone undoes this stress
                max_drop=0.3, calib_samples=CALIB_N, output=tmp_path / "run")
    result = build(BuildOptions(**opts))
    int8 = next(e for e in result.report["engines"] if e["precision"] == "int8")
    assert int8["float_layers"] and set(int8["float_layers"]) <= {A, B}
    assert int8["accuracy"]["top1_drop"] <= 0.3  # measured by the build's own validation stage
    assert int8["latency_ms"]["p50"] is not None and int8["int8_plan"]["met"]
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert next(e for e in saved["engines"] if e["precision"] == "int8")["float_layers"] == int8["float_layers"]
    markdown = (tmp_path / "run" / "report.md").read_text()  # the person-readable report names them too
    assert "## INT8 plan: onnxruntime (--max-drop 0.3)" in markdown
    assert all(f"`{layer}`" in markdown for layer in int8["float_layers"])
    plan = tmp_path / "run" / "quant" / "int8_plan.json"
    stamp = plan.stat().st_mtime_ns
    again = build(BuildOptions(**opts))  # the plan and the engine are reused
    assert plan.stat().st_mtime_ns == stamp
    assert next(s for s in again.report["stages"] if s["name"] == "build int8")["status"] == "reused"


# --- the command -----------------------------------------------------------------------------------------


def test_sensitivity_command(tmp_path, capsys):
    from edgerep.cli import main

    out = tmp_path / "sens"
    main(["sensitivity", "-m", "zoo:repvgg_digits", "-t", "onnxruntime-cpu", "--calib-samples", "32",
          "--val-samples", "96", "--no-study", "--top", "3", "-o", str(out), "--json"])
    result = json.loads(capsys.readouterr().out)
    layers = result["sensitivity"]["layers"]
    assert len(layers) == 10 and [r["rank"] for r in layers] == list(range(1, 11))
    assert all(r["module"] and r["node"] == f"/{r['module']}/{r['op_type']}" for r in layers)
    assert len(result["ranges"]) == 10 and result["reference"]["num_samples"] == 96
    for name in ("sensitivity.json", "sensitivity.md", "sensitivity.png"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob("*.partial-*")) and not (out / ".work").exists()
    with pytest.raises(SystemExit) as exc:
        main(["sensitivity", "-m", "zoo:repvgg_digits", "--calib-method", "kl", "-o", str(out)])
    assert exc.value.code == 2
