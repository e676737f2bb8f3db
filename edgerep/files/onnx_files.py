"""ONNX model files: save atomically (external data past 2 GiB), hash, read the input and node names.

The ground floor: every layer that touches an .onnx file (export, backends, quant, trt) uses these.
Only onnx is imported, inside the functions.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

from edgerep.errors import UserError
from edgerep.files.artifacts import atomic_files, companion_files, sha256_files

# Protobuf's hard limit is 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


def proto_nbytes(model: Any) -> int:
    """Serialized size of a ModelProto, summed per tensor and node so it works past 2 GiB too."""
    graph = model.graph
    return sum(t.ByteSize() for t in graph.initializer) + sum(n.ByteSize() for n in graph.node)


def save_onnx(model: Any, path: Path, *, external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
              verify: Callable[[Path], None] | None = None) -> Path:
    """Save a ModelProto atomically; weights go to "<name>.data" when the proto exceeds the threshold.

    `verify(tmp_path)` runs on the written files before they are moved into place; if it raises,
    nothing is left behind. Note: saving as external data moves the tensors out of `model`.
    """
    import onnx

    path = Path(path)
    external = proto_nbytes(model) > external_data_threshold
    stale = path.with_name(path.name + ".data")
    with atomic_files(path) as tmp:
        if external:
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data", size_threshold=1024)
        else:
            onnx.save_model(model, str(tmp))
        if verify is not None:
            verify(tmp)
        if not external:
            stale.unlink(missing_ok=True)  # an older external-data copy of this model
    return path


def onnx_sha256(path: Path) -> str:
    """Hash of an ONNX model including its external data file, if any."""
    path = Path(path)
    return sha256_files([path, *companion_files(path)])


def onnx_input(onnx_path: Path, *, single: bool = False) -> tuple[str, list[int | None]]:
    """Name and shape (None for a symbolic dimension) of the model's first input.

    `single`: calibration feeds one tensor, so a model with several inputs is a user error."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if single and len(inputs) != 1:
        raise UserError(f"{onnx_path}: calibration supports one model input, this model has {len(inputs)}")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def onnx_output_names(onnx_path: Path) -> list[str]:
    """The graph's output names, in order: the order every runner's `run_all` returns them in."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [o.name for o in model.graph.output]


def onnx_node_names(onnx_path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [n.name for n in model.graph.node]


WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


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


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantize_static logs a "consider pre-processing" hint on the root logger on every call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def ort_pre_process(onnx_path: Path, out: Path, *, external: bool = False) -> bool:
    """ONNX Runtime's recommended pre-processing before static quantization (symbolic shape inference; node
    names kept with skip_optimization, so ignored-node names still match). False when it fails (it does not
    know every op, nor a detector's dynamic-batch decode).

    ORT saves "sym_shape_infer_temp.onnx" and a <uuid>.data file into the *current directory* when its
    shape inference gives up, so it runs from `out`'s folder (os.chdir is per process; a build runs one
    quantization at a time)."""
    import io
    import os

    from onnxruntime.quantization.shape_inference import quant_pre_process

    before = os.getcwd()
    try:
        os.chdir(out.parent)
        with contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(str(Path(onnx_path).resolve()), str(out.resolve()), skip_optimization=True,
                              save_as_external_data=external, all_tensors_to_one_file=True)
        return True
    except Exception:  # noqa: BLE001 - any failure means "quantize the model as it is"
        return False
    finally:
        os.chdir(before)
