"""PyTorch -> ONNX -> simplified ONNX, with a numeric check after every stage.

Exporter choice (torch 2.14): we use the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`).
Measured on this torch: it writes exactly the opset the target asks for (13 for TensorRT 8.2, 17 for the
others) and names nodes by module path ("/stages/stages.0/reparam/Conv"), which is how users and our
per-node INT8 exclusions refer to layers. The dynamo exporter cannot write below opset 18 (its
down-conversion fails on ReduceMean) and names nodes "node_conv2d_1". It stays as a fallback for
models the TorchScript tracer cannot handle, accepted only when its opset fits the target.

Files: model.onnx (export) and model.sim.onnx (simplified), each with a sidecar JSON. A model over
the 2 GB protobuf limit is saved with its weights in "<name>.data" beside it (ONNX external data).
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from edgerep.errors import UserError, one_line
from edgerep.files.onnx_files import EXTERNAL_DATA_THRESHOLD, model_opset, save_onnx

# --- saving ----------------------------------------------------------------------------------------


def _check_model(path: Path, stage: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))  # by path: works with external data
    except Exception as exc:
        raise UserError(f"stage {stage}: onnx.checker rejects {path.name} ({one_line(exc)}); "
                        f"report it with the model spec") from None



# --- export ----------------------------------------------------------------------------------------


def export_onnx(model: nn.Module, example: torch.Tensor, out_path: Path, *, opset: int, dynamic_batch: bool = False,
                input_name: str = "input", output_names: list[str] | None = None, output_name: str | None = None,
                external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
                verify: Callable[[Path], None] | None = None) -> Path:
    """Export `model` (put in eval mode) to ONNX at `out_path`, checked by onnx.checker, written atomically.

    Every output the model returns (tensor, tuple/list, dict, nested) becomes a graph output, in
    edgerep.models.outputs order and named by `output_names` (default: edgerep.models.outputs.output_names of the model's
    return value: dict keys, else "output" for one and "output0".."outputK" for several), each with a
    dynamic batch axis when `dynamic_batch`. Returns the path. `verify(tmp_path)` may check the numbers
    before the file is moved into place. The exporter used is stored in the metadata ("edgerep.exporter").
    `output_name` (one name) is the older spelling of `output_names=[output_name]`, for one-output models.
    """
    import onnx

    model.eval()
    out_path = Path(out_path)
    if output_name is not None and output_names is None:
        output_names = [output_name]
    own = model_output_names(model, example)
    names = list(output_names) if output_names is not None else own
    if len(names) != len(own):
        raise UserError(f"stage export: the model to export returns {len(own)} output(s) {own}, expected {names}; "
                        f"the fused model must return what the original returns")
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=_ensure_dir(out_path.parent)))
    try:
        raw = work / "raw.onnx"
        exporter = _export_any(model, example, raw, opset=opset, dynamic_batch=dynamic_batch,
                               input_name=input_name, output_names=names)
        proto = onnx.load(str(raw))  # pulls in external data the exporter may have split out
        got = model_opset(proto)
        if got is None or got > opset:
            raise UserError(f"stage export: the {exporter} exporter wrote opset {got}, above the target's cap {opset}; "
                            f"pick a target with a higher opset or simplify the model's ops")
        _set_metadata(proto, {"edgerep.exporter": exporter, "edgerep.opset": str(opset)})
        _require_output_names(proto, names, exporter)
        name_nodes_by_module(proto)

        def check_then_verify(tmp: Path) -> None:
            _check_model(tmp, "export")
            if verify is not None:
                verify(tmp)

        return save_onnx(proto, out_path, external_data_threshold=external_data_threshold, verify=check_then_verify)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def model_output_names(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The ONNX output names of `model` on `example` (edgerep.models.outputs.output_names of its return value)."""
    from edgerep.models.outputs import output_names

    with torch.no_grad():
        return output_names(model(example))


def _require_output_names(proto: Any, names: list[str], exporter: str) -> None:
    """Both exporters must give the graph exactly `names`, in order (dropped or renamed outputs would make
    every later per-output check compare the wrong tensors)."""
    got = [o.name for o in proto.graph.output]
    if got != names:
        raise UserError(f"stage export: the {exporter} exporter wrote outputs {got}, expected {names}; "
                        f"the model's outputs must be tensors (a tuple, list or dict of them)")


def name_nodes_by_module(proto: Any) -> None:
    """Name each weighted node `/<module.path>/<OpType>` after its weight's initializer.

    The TorchScript exporter names nodes by the modules whose forward it saw; a fused GraphModule calls its
    convs directly, so they came out as `/reparam_3/Conv`. The weight initializer keeps the qualified name
    (`stages.1.0.reparam.weight`), which is what a user and the INT8 exclusion lists need to see.
    """
    initializers = {init.name for init in proto.graph.initializer}
    wanted: dict[int, str] = {}
    for index, node in enumerate(proto.graph.node):
        weight = next((name for name in node.input[1:] if name in initializers and name.endswith(".weight")), None)
        if weight is not None:
            wanted[index] = f"/{weight[: -len('.weight')]}/{node.op_type}"
    taken = {node.name for i, node in enumerate(proto.graph.node) if i not in wanted}
    counts: dict[str, int] = {}
    for name in wanted.values():
        counts[name] = counts.get(name, 0) + 1
    for index, name in wanted.items():
        if counts[name] == 1 and name not in taken:  # a weight shared by several nodes keeps the exporter's names
            proto.graph.node[index].name = name


def module_path_of(node_name: str) -> str | None:
    """`/stages.1.0.reparam/Conv` -> `stages.1.0.reparam` (None for names not made by name_nodes_by_module)."""
    parts = node_name.strip("/").split("/")
    return parts[0] if len(parts) == 2 and parts[0] else None


def _ensure_dir(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only, not a folder, permission: bad -o, not a crash
        raise UserError(f"-o {folder}: cannot create the output folder ({exc.strerror or exc}); "
                        f"pass a writable folder with -o") from None
    return folder


def _set_metadata(proto: Any, items: dict[str, str]) -> None:
    keep = [p for p in proto.metadata_props if p.key not in items]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in items.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _export_any(model: nn.Module, example: torch.Tensor, path: Path, *, opset: int, dynamic_batch: bool,
                input_name: str, output_names: list[str]) -> str:
    """Try the TorchScript exporter, then the dynamo exporter; return which one wrote `path`."""
    try:
        _export_torchscript(model, example, path, opset=opset, dynamic_batch=dynamic_batch,
                            input_name=input_name, output_names=output_names)
        return "torchscript"
    except (UserError, OSError):  # an OSError is the output folder (full, read-only), not the model
        raise
    except Exception as first:
        try:
            _export_dynamo(model, example, path, opset=opset, dynamic_batch=dynamic_batch,
                           input_name=input_name, output_names=output_names)
            return "dynamo"
        except Exception as second:
            raise UserError(f"stage export: torch.onnx.export failed (TorchScript exporter: {one_line(first)}; "
                            f"dynamo exporter: {one_line(second)}); the model needs export-friendly code") from None


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, *, opset: int, dynamic_batch: bool,
                        input_name: str, output_names: list[str]) -> None:
    axes = {name: {0: "batch"} for name in [input_name, *output_names]} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        # torch >= 2.9 warns on every call that this exporter is "legacy"; the choice is deliberate (see top).
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r".*feature will be removed.*")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=list(output_names), dynamic_axes=axes,
                          do_constant_folding=True)


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, *, opset: int, dynamic_batch: bool,
                   input_name: str, output_names: list[str]) -> None:
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    if dynamic_batch and example.shape[0] == 1:  # a batch of 1 would be specialized to a constant
        example = example.expand(2, *example.shape[1:]).contiguous()
    import sys

    with contextlib.redirect_stdout(sys.stderr):  # it prints progress on stdout, which `--json` needs clean
        torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset, input_names=[input_name],
                          output_names=list(output_names), dynamic_shapes=shapes, external_data=True, verbose=False)


# --- simplify --------------------------------------------------------------------------------------
















# --- numeric checks --------------------------------------------------------------------------------










# --- the whole stage -------------------------------------------------------------------------------






# --- the `edgerep export` command ------------------------------------------------------------------




