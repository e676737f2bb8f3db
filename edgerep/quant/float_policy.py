"""What INT8 keeps in float by default, decided here and handed to every backend as a build option
(`head_float_nodes`), so the same nodes stay in float on OpenVINO, ONNX Runtime and TensorRT (its Q/DQ model).

Today's rule: a detector's decode tail and the prediction convs that feed it (detect_head_float_nodes); a
classifier has none. The backends apply the list they are given and decide nothing themselves.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgerep.quant.layers import WEIGHTED_OPS

HEAD_OPTION = "head_float_nodes"  # the build option that carries the list


def with_float_policy(onnx_path: Path, options: dict[str, Any]) -> dict[str, Any]:
    """INT8 build options with the default float nodes added (those the user did not already ignore); the
    user's own `head_float_nodes`, when given, are kept as they are."""
    if HEAD_OPTION in options:
        return dict(options)
    ignored = set(options.get("ignored_nodes") or [])
    return {**options, HEAD_OPTION: [n for n in detect_head_float_nodes(Path(onnx_path)) if n not in ignored]}


def output_tail_nodes(onnx_path: Path) -> list[str]:
    """Names of the nodes after the last weighted layer on every path to the outputs (no Conv/Gemm/MatMul
    downstream): a detection head's decode (sigmoid, exp, anchor arithmetic, the concat of boxes with scores).
    INT8 keeps them in float, as Ultralytics' own INT8 export does: one scale shared by box coordinates in pixels
    and scores in [0, 1] would round every score away. A classifier ending in its Gemm has none."""
    return [n.name for n in _tail_nodes(_graph_nodes(onnx_path))]


def detect_head_float_nodes(onnx_path: Path) -> list[str]:
    """What INT8 keeps in float by default: the decode tail (output_tail_nodes) and, when there is one, the
    weighted layers that feed it (a detection head's prediction convs). Their outputs are box regressions
    that the decode exponentiates or softmaxes (YOLOX-style log sizes, Ultralytics' DFL bins), so an INT8
    rounding step there becomes a multiplicative box error: on the demo detector, ONNX Runtime INT8 lost 3.0
    points of labelled mAP@0.5:0.95 with only the tail in float and 0.2-0.9 with the prediction convs too
    (1x1 convs: a negligible share of the compute). A classifier has no tail, so nothing changes for it."""
    nodes = _graph_nodes(onnx_path)
    tail = _tail_nodes(nodes)
    feeds_tail = {name for node in tail for name in node.input}
    heads = [n for n in nodes if n.name and n.op_type in WEIGHTED_OPS and any(out in feeds_tail for out in n.output)]
    return [n.name for n in heads + tail]


def _graph_nodes(onnx_path: Path) -> list[Any]:
    import onnx

    # one Python object per node (protobuf makes new wrappers on each iteration)
    return list(onnx.load(str(onnx_path), load_external_data=False).graph.node)


def _tail_nodes(nodes: list[Any]) -> list[Any]:
    """The named nodes from which no weighted node is reachable (see output_tail_nodes)."""
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    reaches = [False] * len(nodes)
    # Backwards in topological order (ONNX stores nodes topologically sorted): consumers are decided first.
    for i in range(len(nodes) - 1, -1, -1):
        reaches[i] = nodes[i].op_type in WEIGHTED_OPS or any(
            reaches[c] for out in nodes[i].output for c in consumers.get(out, []))
    return [n for i, n in enumerate(nodes) if n.name and not reaches[i]]
