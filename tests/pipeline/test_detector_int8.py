"""A real Ultralytics detector's INT8 engines end to end: zoo:yolov8n_digits (YOLOv8n trained by Ultralytics' trainer)
built for OpenVINO and ONNX Runtime with its shipped data, gated on labelled mAP, and its head handling read back
FROM THE BUILT ENGINE: the nodes the build keeps in float (the decode, and those prediction convs feeding it that
the head search found worth it, edgerep.quant.head_islands) have no quantized input there (ONNX Runtime: no
DequantizeLinear feeding them in the Q/DQ model; OpenVINO: no FakeQuantize in front of them in the IR, and their
convolutions run in f32), while the rest of the network is INT8. Then `--max-drop` on the detector: the plan
budgets mAP points and the chosen plan keeps within it.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # whole INT8 builds of a YOLOv8n

pytest.importorskip("ultralytics", reason="zoo:yolov8n_digits is an Ultralytics model (edgerep[ultralytics])")
pytest.importorskip("onnxruntime", reason="the ONNX Runtime backend")
pytest.importorskip("pycocotools", reason="mAP needs pycocotools (pip install edgerep[detect])")

from edgerep.pipeline.build import BuildOptions, build  # noqa: E402
from edgerep.quant.float_policy import detect_head_float_nodes  # noqa: E402
from edgerep.quant.layers import WEIGHTED_OPS  # noqa: E402

MODEL = "zoo:yolov8n_digits"
CALIB_SAMPLES = 64
TARGETS = ("onnxruntime-cpu", "openvino-cpu")


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, dict]:
    """One INT8 build per target, shared by the tests of this module: the default data of the zoo entry
    (calib/digits_det: train calibrates, the labelled val validates)."""
    root = tmp_path_factory.mktemp("detector-int8")
    out = {}
    for target in TARGETS:
        if target == "openvino-cpu":
            pytest.importorskip("openvino", reason="the OpenVINO backend")
            pytest.importorskip("nncf", reason="OpenVINO INT8 uses NNCF")
        # ONNX Runtime's profile default (minmax) lost 1.56 points of mAP@0.5:0.95 on this model, over its 1-point
        # gate (issue 18 point 4); percentile ranges kept it to 0.56
        method = "percentile" if target == "onnxruntime-cpu" else None
        result = build(BuildOptions(model=MODEL, target=target, precisions="int8", calib_samples=CALIB_SAMPLES,
                                    calib_method=method, output=root / target, baselines=False))
        out[target] = {"result": result, "dir": root / target}
    return out


def _int8(build_: dict) -> dict:
    return next(e for e in build_["result"].report["engines"] if e["precision"] == "int8")


def _int8_of(result) -> dict:
    return next(e for e in result.report["engines"] if e["precision"] == "int8")


def _policy(build_: dict) -> tuple[list[str], list[str]]:
    """What the engine should keep in float, on the ONNX it was built from: the head search's choice (its decode tail
    and the islands that paid, quant.head_islands) or, without a search, float_policy's fixed rule:
    (weighted nodes, other nodes)."""
    import onnx

    sim = build_["dir"] / "onnx" / "model.sim.onnx"
    plan = _int8(build_).get("head_plan")
    nodes = [*plan["tail"], *plan["kept"]] if plan and plan.get("kept") is not None else detect_head_float_nodes(sim)
    types = {n.name: n.op_type for n in onnx.load(str(sim), load_external_data=False).graph.node}
    return [n for n in nodes if types[n] in WEIGHTED_OPS], [n for n in nodes if types[n] not in WEIGHTED_OPS]


def test_the_head_search_ran_and_kept_the_dfl_conv(builds):
    """YOLOv8's DFL conv turns 16 bins into a box side: in INT8 it costs many points, so the search keeps it."""
    for target in TARGETS:
        plan = _int8(builds[target])["head_plan"]
        assert len(plan["candidates"]) == 4 and len(plan["islands"]) == 4  # 3 class convs + the DFL conv
        assert any(n.endswith("dfl.conv/Conv") for n in plan["kept"]), (target, plan["islands"])


@pytest.mark.parametrize("target", TARGETS)
def test_int8_engine_is_built_and_passes_its_detect_gate(builds, target):
    result = builds[target]["result"]
    assert result.exit_code == 0, [e.get("reason") for e in result.report["engines"]]
    ref = result.report["reference"]
    assert ref["task"] == "detect" and ref["labelled"] and ref["detect"]["layout"] == "ultralytics"
    engine = _int8(builds[target])
    acc, gate = engine["accuracy"], engine["gate"]
    assert engine["passed"] and acc["task"] == "detect"
    assert gate["max_labelled_map_drop"] is not None and gate["min_map_agreement"] is not None  # detect gates
    assert acc["labelled_map_drop"] <= gate["max_labelled_map_drop"] and acc["map_agreement"] >= gate["min_map_agreement"]
    assert acc["ref_labelled_map"] > 0.5  # the trained weights, through the pipeline's letterbox and decode
    saved = json.loads((builds[target]["dir"] / "report.json").read_text())
    assert [e["accuracy"]["labelled_map"] for e in saved["engines"]] == [acc["labelled_map"]]


# --- the head, read from the built engines -----------------------------------------------------------------


def _qdq_graph(build_: dict):
    """The built Q/DQ model: (its graph, producer of each tensor, nodes by name)."""
    import onnx

    graph = onnx.load(_int8(build_)["path"], load_external_data=False).graph
    return graph, {out: n for n in graph.node for out in n.output}, {n.name: n for n in graph.node}


def _dequantized(producers: dict, tensors) -> list[str]:
    return [t for t in tensors if t and producers.get(t) is not None and producers[t].op_type == "DequantizeLinear"]


def test_onnxruntime_qdq_keeps_the_policys_head_in_float(builds):
    build_ = builds["onnxruntime-cpu"]
    weighted, others = _policy(build_)
    assert weighted and others  # YOLOv8's class convs + DFL conv, and the decode after them
    assert _int8(build_)["settings"]["float_head_nodes"] == len(weighted) + len(others)
    graph, producers, by_name = _qdq_graph(build_)
    for name in weighted + others:
        assert name in by_name, f"{name}: not in the built Q/DQ model"
    for name in weighted:  # float weights and bias: read from the float initializers, no DequantizeLinear
        assert not _dequantized(producers, by_name[name].input[1:]), f"{name}: INT8 weights"
    plan = _int8(build_).get("head_plan") or {"candidates": [], "kept": []}
    quantized_heads = set(plan["candidates"]) - set(plan["kept"])

    def rounded_by_a_quantized_head(tensor: str) -> bool:  # DQ <- Q <- the output of a head conv left in INT8
        q = producers.get(producers[tensor].input[0])
        return q is not None and q.op_type == "QuantizeLinear" and getattr(producers.get(q.input[0]), "name",
                                                                            None) in quantized_heads

    for name in others:  # the decode quantizes nothing itself: its only rounded inputs are INT8 head convs' outputs
        rounded = [t for t in _dequantized(producers, by_name[name].input) if not rounded_by_a_quantized_head(t)]
        assert not rounded, f"{name}: INT8 inputs {rounded}"
    # everything else that has weights computes in INT8: the engine's float layers are exactly the policy's
    convs = [n.name for n in graph.node if n.op_type in WEIGHTED_OPS]
    float_convs = [n for n in convs if not _dequantized(producers, by_name[n].input[1:2])]
    assert sorted(float_convs) == sorted(weighted)
    assert len(convs) > 3 * len(weighted)


@pytest.mark.xfail(strict=True, reason="ONNX Runtime's QDQ quantizer Q/DQs the output of every quantized producer, so "
                   "the float prediction convs read INT8-rounded inputs (the class convs their SiLU's Mul, the DFL conv "
                   "its Softmax); OpenVINO keeps them float (test below). To fix in backends/onnxruntime or the policy.")
def test_onnxruntime_policys_float_convs_read_float_inputs(builds):
    build_ = builds["onnxruntime-cpu"]
    weighted, _ = _policy(build_)
    _, producers, by_name = _qdq_graph(build_)
    rounded = {name: _dequantized(producers, by_name[name].input[:1]) for name in weighted}
    assert not any(rounded.values()), rounded


def _ir_graph(xml_path: Path) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """An OpenVINO IR: layers by id ({name, type, element types}) and each layer's producers by input port order."""
    root = ET.parse(xml_path).getroot()
    layers = {}
    for layer in root.iter("layer"):
        data = layer.find("data")
        layers[layer.get("id")] = {"name": layer.get("name"), "type": layer.get("type"),
                                   "element_type": data.get("element_type") if data is not None else None}
    producers: dict[str, list[tuple[int, str]]] = {}
    for edge in root.iter("edge"):
        producers.setdefault(edge.get("to-layer"), []).append((int(edge.get("to-port")), edge.get("from-layer")))
    return layers, {k: [src for _, src in sorted(v)] for k, v in producers.items()}


# the dequantization steps between an INT8 weight constant and its convolution in a saved IR
_DEQUANT_STEPS = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze"}


def _weight_is_int8(layers: dict, producers: dict, layer_id: str) -> bool:
    seen, todo = set(), [layer_id]
    while todo:
        lid = todo.pop()
        if lid in seen:
            continue
        seen.add(lid)
        layer = layers[lid]
        if layer["type"] == "FakeQuantize" or (layer["type"] == "Const" and layer["element_type"] in ("i8", "u8", "i4", "u4")):
            return True
        if layer["type"] in _DEQUANT_STEPS:
            todo += producers.get(lid, [])
    return False


def test_openvino_ir_keeps_the_policys_head_in_float(builds):
    from edgerep.quant.precision import ov_layer_precisions

    build_ = builds["openvino-cpu"]
    weighted, others = _policy(build_)
    engine = _int8(build_)
    assert engine["settings"]["float_head_nodes"] == len(weighted) + len(others)
    layers, producers = _ir_graph(Path(engine["path"]))

    def ir_layers(node: str) -> list[str]:  # the ONNX frontend names ops <node> or <node>/<part>
        return [lid for lid, layer in layers.items() if layer["name"] == node or layer["name"].startswith(node + "/")]

    convs = {lid for lid, layer in layers.items() if layer["type"] in ("Convolution", "GroupConvolution")}
    policy_convs = set()
    for name in weighted:
        (conv,) = [lid for lid in ir_layers(name) if lid in convs]
        policy_convs.add(conv)
        data, weight = producers[conv][:2]
        assert layers[data]["type"] != "FakeQuantize", f"{name}: its input is fake-quantized"
        assert not _weight_is_int8(layers, producers, weight), f"{name}: its weights are INT8"
    for name in others:  # the decode: ops NNCF could quantize (Concat, Mul, Add, Sigmoid, Softmax) keep float inputs
        for lid in ir_layers(name):
            fq = [src for src in producers.get(lid, []) if layers[src]["type"] == "FakeQuantize"]
            assert not fq, f"{name} ({layers[lid]['name']}): fake-quantized input"
    # the rest of the network is INT8 in the IR, and the CPU plugin runs the policy's convs in f32
    int8_convs = [lid for lid in convs - policy_convs if layers[producers[lid][0]]["type"] == "FakeQuantize"
                  and _weight_is_int8(layers, producers, producers[lid][1])]
    assert len(int8_convs) > 3 * len(policy_convs)
    runtime = ov_layer_precisions(Path(engine["path"]), weighted)
    assert all(runtime[n] not in (None, "u8", "i8") for n in weighted), runtime


# --- --max-drop on a detector ------------------------------------------------------------------------------


def test_max_drop_budgets_map_points_on_a_detector(tmp_path):
    budget = 1.0
    # the profile's default calibration alone (minmax) is over this budget on the 100 labelled images: the plan decides
    # per-channel weights fixed (per-tensor loses far more on this model): the plan still chooses the calibration
    # method and weight format, in half the candidates
    result = build(BuildOptions(model=MODEL, target="onnxruntime-cpu", precisions="int8", max_drop=budget, baselines=False,
                                calib_samples=CALIB_SAMPLES, backend_options={"per_channel": True},
                                output=tmp_path / "run"))
    assert result.exit_code == 0, [e.get("reason") for e in result.report["engines"]]
    engine = _int8_of(result)
    plan = engine["int8_plan"]
    assert plan["task"] == "detect" and plan["drop_metric"] == "labelled_map" and plan["max_drop"] == budget
    assert "mAP" in plan["drop_unit"] and plan["met"]
    chosen = plan["chosen"]["metrics"]
    assert chosen["drop"] <= budget
    # every candidate was scored in mAP points, and the final engine, built with the chosen options and validated by
    # the build on the same images, keeps the budget too
    assert all(c["metrics"].get("labelled_map") is not None for c in plan["candidates"])
    assert engine["accuracy"]["labelled_map_drop"] <= budget
    assert engine["accuracy"]["labelled_map_drop"] == pytest.approx(chosen["drop"], abs=0.05)
    assert sorted(engine["float_layers"]) == sorted(plan["float_layers"])
