"""ONNX model files: save atomically (external data past 2 GiB), hash, read the input and node names.

The ground floor: every layer that touches an .onnx file (export, backends, quant, trt) uses these.
Only onnx is imported, inside the functions.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

from edgerep.errors import UserError
from edgerep.files.artifacts import atomic_files, companion_files, file_sha256

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
    """Hash of an ONNX model by content, including its external data file, if any.

    Name-independent: the host's model.sim.onnx and the device bundle's copy model.onnx must hash alike, since
    an engine's sidecar (built from either) is checked against the bundle manifest's hash. A single file hashes
    as its plain sha256 (what the bundle lists for every file); external data is named inside the proto, so
    the pair hashes as the digests of both files in order."""
    path = Path(path)
    companions = companion_files(path)
    if not companions:
        return file_sha256(path)
    digest = hashlib.sha256()
    for part in [path, *companions]:
        digest.update(bytes.fromhex(file_sha256(part)))
    return digest.hexdigest()


def int8_float_nodes(ignored: list[str] | None, head_float: list[str] | None) -> list[str]:
    """The nodes INT8 keeps in float: the user's ignored nodes, then the default float policy's
    (quant.float_policy: a detector's head) not already among them. One list for every INT8 artifact (the
    Q/DQ model's nodes_to_exclude and the calibration cache's omitted tensors), so they keep the same nodes."""
    exclude = list(ignored or [])
    return exclude + [n for n in head_float or [] if n not in exclude]


def model_opset(model: Any) -> int | None:
    """The default-domain opset a model imports."""
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def onnx_input(onnx_path: Path, *, single: bool = False) -> tuple[str, list[int | None]]:
    """Name and shape (None for a symbolic dimension) of the model's first input.

    `single`: calibration feeds one tensor, so a model with several inputs is a user error."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inputs = graph_inputs(model)
    if single and len(inputs) != 1:
        raise UserError(f"{onnx_path}: calibration supports one model input, this model has {len(inputs)}")
    return inputs[0]


def graph_inputs(model: Any) -> list[tuple[str, list[int | None]]]:
    """Name and shape (None for a symbolic dimension) of each real input of a ModelProto (initializers that old
    exporters list as inputs left out)."""
    inits = {t.name for t in model.graph.initializer}
    return [(i.name, [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                      for d in i.type.tensor_type.shape.dim])
            for i in model.graph.input if i.name not in inits]


def onnx_output_names(onnx_path: Path) -> list[str]:
    """The graph's output names, in order: the order every runner's `run_all` returns them in."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [o.name for o in model.graph.output]


def onnx_node_names(onnx_path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [n.name for n in model.graph.node]


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
