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
import math
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

from .artifacts import package_versions, write_sidecar
from .errors import UserError
from .onnx_files import EXTERNAL_DATA_THRESHOLD, onnx_output_names, onnx_sha256, save_onnx

# A serialized ModelProto must stay under 2 GiB (protobuf's limit); keep 64 MiB for the graph itself.
SIMPLIFIERS = ("onnxsim", "onnxslim", "none")


@dataclass
class ExportResult:
    onnx_path: Path
    sim_path: Path
    checks: list[dict] = field(default_factory=list)
    exporter: str = "torchscript"
    simplifier: str = "onnxsim"
    opset: int = 17
    notes: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=lambda: ["output"])  # the graph's outputs, in order

    def to_dict(self) -> dict[str, Any]:
        return {"onnx": str(self.onnx_path), "sim": str(self.sim_path), "checks": self.checks,
                "exporter": self.exporter, "simplifier": self.simplifier, "opset": self.opset, "notes": self.notes,
                "output_names": self.output_names}


# --- saving ----------------------------------------------------------------------------------------


def _check_model(path: Path, stage: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))  # by path: works with external data
    except Exception as exc:
        raise UserError(f"stage {stage}: onnx.checker rejects {path.name} ({_first_line(exc)}); "
                        f"report it with the model spec") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# --- export ----------------------------------------------------------------------------------------


def export_onnx(model: nn.Module, example: torch.Tensor, out_path: Path, *, opset: int, dynamic_batch: bool = False,
                input_name: str = "input", output_names: list[str] | None = None, output_name: str | None = None,
                external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
                verify: Callable[[Path], None] | None = None) -> Path:
    """Export `model` (put in eval mode) to ONNX at `out_path`, checked by onnx.checker, written atomically.

    Every output the model returns (tensor, tuple/list, dict, nested) becomes a graph output, in
    edgerep.outputs order and named by `output_names` (default: edgerep.outputs.output_names of the model's
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
        got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
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
    """The ONNX output names of `model` on `example` (edgerep.outputs.output_names of its return value)."""
    from .outputs import output_names

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
            raise UserError(f"stage export: torch.onnx.export failed (TorchScript exporter: {_first_line(first)}; "
                            f"dynamo exporter: {_first_line(second)}); the model needs export-friendly code") from None


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
    import contextlib
    import sys

    with contextlib.redirect_stdout(sys.stderr):  # it prints progress on stdout, which `--json` needs clean
        torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset, input_names=[input_name],
                          output_names=list(output_names), dynamic_shapes=shapes, external_data=True, verbose=False)


# --- simplify --------------------------------------------------------------------------------------


def simplify_onnx(in_path: Path, out_path: Path, *, method: str = "onnxsim",
                  external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
                  verify: Callable[[Path], None] | None = None) -> tuple[Path, str]:
    """Simplify an ONNX file; returns (out_path, the method that produced it).

    method "onnxsim" falls back to onnxslim, with a warning, when onnxsim raises, reports failure, or
    its result fails `verify`. "onnxslim" uses onnxslim only; "none" copies the model unchanged.
    """
    if method not in SIMPLIFIERS:
        raise UserError(f"--simplifier {method}: unknown; use one of {', '.join(SIMPLIFIERS)}")
    in_path, out_path = Path(in_path), Path(out_path)
    order = ["onnxsim", "onnxslim"] if method == "onnxsim" else [method]
    failures: list[str] = []
    for name in order:
        try:
            proto = _SIMPLIFY[name](in_path)
            save_onnx(proto, out_path, external_data_threshold=external_data_threshold,
                      verify=lambda tmp: (_check_model(tmp, "simplify"), verify(tmp) if verify else None))
        except _SimplifierMissing as exc:
            failures.append(str(exc))
            continue
        except Exception as exc:
            failures.append(f"{name}: {exc.message if isinstance(exc, UserError) else _first_line(exc)}")
            continue
        if failures:
            warnings.warn(f"simplify: {failures[0]}; used {name} instead", UserWarning, stacklevel=2)
        return out_path, name
    if method == "onnxslim" and len(failures) == 1 and "not installed" in failures[0]:
        raise UserError(f"--simplifier onnxslim: onnxslim is not installed; pip install 'edgerep[slim]'")
    raise UserError(f"stage simplify: {' | '.join(failures)}; try --simplifier none to keep the exported graph")


class _SimplifierMissing(Exception):
    pass


@contextlib.contextmanager
def _native_output_silenced() -> Iterator[None]:
    """onnxsim's C++ constant folder prints a "WARNING: failed to run ... op, skip" line per shape op it leaves
    alone (a detector's decode has dozens) straight to the process's stdout, past Python's sys.stdout: point
    file descriptors 1 and 2 at /dev/null while it runs. The outcome is checked numerically right after."""
    import os

    from .std_fds import std_fds_to

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        with std_fds_to(devnull):
            yield
    finally:
        os.close(devnull)


def _run_onnxsim(path: Path) -> Any:
    try:
        import onnxsim
    except ImportError:
        raise _SimplifierMissing("onnxsim is not installed; pip install onnxsim") from None
    import inspect

    kwargs: dict[str, Any] = {}
    if "certify" in inspect.signature(onnxsim.simplify).parameters:
        kwargs["certify"] = False  # the optional Z3 proof is slow; our ONNX Runtime check follows anyway
    with _native_output_silenced():
        model, ok = onnxsim.simplify(str(path), **kwargs)
    if not ok:
        raise RuntimeError("onnxsim reported that its simplified model is not equivalent")
    return model


def _run_onnxslim(path: Path) -> Any:
    try:
        import onnxslim
    except ImportError:
        raise _SimplifierMissing("onnxslim is not installed; pip install 'edgerep[slim]'") from None
    return onnxslim.slim(str(path))


def _run_none(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


_SIMPLIFY: dict[str, Callable[[Path], Any]] = {"onnxsim": _run_onnxsim, "onnxslim": _run_onnxslim, "none": _run_none}


# --- numeric checks --------------------------------------------------------------------------------


def ort_session(onnx_path: Path) -> Any:
    """An ONNX Runtime CPU session (intra-op threads left to ORT)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def torch_reference(model: nn.Module) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A numpy-in function running `model` in eval mode without gradients; returns every output as float32
    numpy arrays in ONNX order (edgerep.outputs)."""
    from .outputs import to_numpy_list

    model.eval()

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return to_numpy_list(model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))))

    return run


def compare_onnx(onnx_path: Path, reference: Callable[[np.ndarray], Any] | nn.Module,
                 inputs: list[np.ndarray], *, stage: str, tol: float, reference_name: str = "PyTorch") -> dict:
    """Run the ONNX file in ONNX Runtime (CPU) and compare every output with `reference` on each input.

    `reference(x)` returns the outputs in ONNX order (a list of arrays, or one array for a one-output model).
    Each output's error is relative to its own largest reference magnitude: max|ort - ref| / max|ref|, so one
    tolerance fits logits, scores and box coordinates alike. Raises UserError naming `stage` and the output
    when one exceeds `tol`, a count or shape differs or an output is not finite; else returns the numbers:
    max_abs_err / max_rel_err (the worst output's, today's keys) and `per_output`
    [{name, shape, max_abs_err, max_rel_err}].
    """
    from .output_errors import describe_failures, merge_errors, output_errors, worst_output

    ref_fn = torch_reference(reference) if isinstance(reference, nn.Module) else reference
    try:
        session = ort_session(Path(onnx_path))
    except Exception as exc:
        raise UserError(f"stage {stage}: ONNX Runtime cannot load {Path(onnx_path).name} ({_first_line(exc)})") from None
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    per_output: list[dict] = []
    shapes = []
    for x in inputs:
        x = np.ascontiguousarray(x, dtype=np.float32)
        try:
            outs = session.run(None, {input_name: x})
        except Exception as exc:
            raise UserError(f"stage {stage}: ONNX Runtime fails on input {list(x.shape)} ({_first_line(exc)})") from None
        ref = ref_fn(x)
        refs = [ref] if isinstance(ref, np.ndarray) else list(ref)
        for name, out in zip(names, outs):
            if not np.all(np.isfinite(out)):
                raise UserError(f"stage {stage}: ONNX Runtime output '{name}' holds NaN/Inf on input {list(x.shape)}")
        try:
            found = output_errors(refs, outs, names, where=f"stage {stage}: ONNX")
        except UserError as exc:
            raise UserError(f"{exc.message} ({reference_name}, input {list(x.shape)})") from None
        per_output = merge_errors(per_output, found)
        shapes.append(list(x.shape))
    worst = worst_output(per_output)
    max_rel = worst["max_rel_err"] if worst else 0.0
    max_abs = max((r["max_abs_err"] for r in per_output), default=0.0)
    result = {"stage": stage, "reference": reference_name, "onnx": Path(onnx_path).name, "max_abs_err": max_abs,
              "max_rel_err": max_rel, "tol": tol, "shapes": shapes, "passed": max_rel <= tol,
              "per_output": per_output}
    if not result["passed"] or math.isnan(max_rel):
        raise UserError(f"stage {stage}: ONNX Runtime output differs from {reference_name}: "
                        f"{describe_failures(per_output, tol)}; the {stage} step changed the numbers")
    return result


def check_inputs(shape: tuple[int, ...], *, dynamic_batch: bool, seed: int = 0) -> list[np.ndarray]:
    """Random normal inputs for the stage checks: two at the model's shape, one more at batch 2 if dynamic."""
    rng = np.random.default_rng(seed)
    shapes = [tuple(shape), tuple(shape)]
    if dynamic_batch:
        shapes.append((shape[0] + 1, *shape[1:]))
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


# --- the whole stage -------------------------------------------------------------------------------


def export_pipeline(model_info: Any, fused: nn.Module, out_dir: Path, *, opset: int, dynamic_batch: bool,
                    simplifier: str = "onnxsim", tol: float = 1e-4,
                    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD, extra: dict | None = None) -> ExportResult:
    """Export `fused` to out_dir/model.onnx and simplify it to out_dir/model.sim.onnx.

    After each stage ONNX Runtime's output is compared with the fused model and with the original
    (`model_info.module`); a file whose check fails is never moved into place. Each file gets a sidecar
    (`extra` is added to both, e.g. the fuse summary and the target name).
    """
    out_dir = Path(out_dir)
    shape = tuple(model_info.input_shape)
    inputs = check_inputs(shape, dynamic_batch=dynamic_batch)
    fused_ref, original_ref = torch_reference(fused), torch_reference(model_info.module)
    # the names come from the original model: the fused one must return the same outputs in the same order
    names = model_output_names(model_info.module, torch.from_numpy(inputs[0]))
    checks: list[dict] = []

    def verify(stage: str) -> Callable[[Path], None]:
        def run(tmp: Path) -> None:
            got = onnx_output_names(tmp)
            if got != names:  # a simplifier that drops, renames or reorders outputs breaks every later check
                raise UserError(f"stage {stage}: the graph's outputs are {got}, expected {names} (names and order)")
            found = [compare_onnx(tmp, fused_ref, inputs, stage=stage, tol=tol, reference_name="the fused PyTorch model")]
            try:
                found.append(compare_onnx(tmp, original_ref, inputs, stage=stage, tol=tol,
                                          reference_name="the original PyTorch model"))
            except UserError as exc:  # ONNX matches the fused model, so the fusion changed the function
                raise UserError(exc.message.replace(f"the {stage} step changed the numbers",
                                                    "the fused model is not equivalent to the original "
                                                    "(`edgerep fuse` shows where)")) from None
            for item, ref in zip(found, ("fused", "original")):
                item["reference"], item["onnx"] = ref, f"model{'.sim' if stage == 'simplify' else ''}.onnx"
            checks[:] = [c for c in checks if c["stage"] != stage] + found

        return run

    example = torch.from_numpy(inputs[0])
    onnx_path = export_onnx(fused, example, out_dir / "model.onnx", opset=opset, dynamic_batch=dynamic_batch,
                            output_names=names, external_data_threshold=external_data_threshold, verify=verify("export"))
    exporter = _metadata(onnx_path).get("edgerep.exporter", "torchscript")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sim_path, used = simplify_onnx(onnx_path, out_dir / "model.sim.onnx", method=simplifier,
                                       external_data_threshold=external_data_threshold, verify=verify("simplify"))
    notes = [str(w.message) for w in caught]
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)

    common = {
        "stage": "export", "model": model_info.spec, "weights": model_info.weights, "input_shape": list(shape),
        "input_name": "input", "output_name": names[0], "output_names": names, "opset": opset, "dynamic_batch": dynamic_batch,
        "exporter": exporter, "tol": tol,
        "packages": package_versions("torch", "onnx", "onnxruntime", "onnxsim", "onnxslim"),
        **(extra or {}),
    }
    write_sidecar(onnx_path, {**common, "checks": [c for c in checks if c["stage"] == "export"]})
    write_sidecar(sim_path, {**common, "stage": "simplify", "simplifier": used, "notes": notes,
                             "source_onnx_sha256": onnx_sha256(onnx_path),
                             "checks": checks})
    return ExportResult(onnx_path=onnx_path, sim_path=sim_path, checks=checks, exporter=exporter, simplifier=used,
                        opset=opset, notes=notes, output_names=names)


def _metadata(path: Path) -> dict[str, str]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


# --- the `edgerep export` command ------------------------------------------------------------------


def run_export(*, model: str, weights: Path | None, input_shape: str | None, num_classes: int | None,
               trust_pickle: bool, target: str, dynamic_batch: bool | None, simplifier: str, output: Path,
               tol: float, as_json: bool, out: Any, console: Any) -> int:
    """Load, fuse, export and simplify; print a summary (or JSON). Returns the exit code."""
    import json

    from .models import load_model
    from .targets import load_target

    profile = load_target(target)
    info = load_model(model, weights=weights, input_shape=input_shape, num_classes=num_classes,
                      trust_pickle=trust_pickle)
    dynamic = profile.dynamic_batch if dynamic_batch is None else dynamic_batch
    fused, fuse_summary = _fused_model(info)
    try:
        result = export_pipeline(info, fused, Path(output), opset=profile.opset, dynamic_batch=dynamic,
                                 simplifier=simplifier, tol=tol, extra={"target": profile.name, "fuse": fuse_summary})
    except OSError as exc:  # read-only or full output folder: a bad -o, not a crash (writes are atomic)
        raise UserError(f"-o {output}: cannot write the ONNX files ({exc.strerror or exc}); "
                        f"pass a writable folder with -o") from None
    summary = {"model": info.spec, "target": profile.name, "fuse": fuse_summary, **result.to_dict()}
    if as_json:
        out.print_json(json.dumps(summary, default=str))
        return 0
    for note in result.notes:
        console.print(f"[yellow]warning:[/] {note}", highlight=False)
    if fuse_summary.get("note"):
        console.print(f"[yellow]note:[/] {fuse_summary['note']}", highlight=False)
    for check in result.checks:
        out.print(f"{check['stage']:<9} vs {check['reference']:<8} max rel err {check['max_rel_err']:.2e} "
                  f"(tol {check['tol']:g})  ok", highlight=False)
        if len(check.get("per_output") or []) > 1:
            for item in check["per_output"]:
                out.print(f"{'':<9}    {item['name']} {item['shape']}: max rel err {item['max_rel_err']:.2e}",
                          highlight=False)
    out.print(f"exported {info.spec} with the {result.exporter} exporter (opset {result.opset}, "
              f"{'dynamic' if dynamic else 'static'} batch), simplified with {result.simplifier}:", highlight=False)
    out.print(f"  {result.onnx_path}\n  {result.sim_path}", highlight=False)
    return 0


def _fused_model(info: Any) -> tuple[nn.Module, dict]:
    """The fused model (a deploy-form zoo model is already fused) and a short summary of the fusion."""
    from .fuse.command import example_input

    x = example_input(info)  # a shape the model rejects is a user error naming --input-shape, not a trace crash
    if getattr(info, "deploy", False):
        return info.module, {"skipped": True, "note": "the weights are already in deploy (fused) form"}
    from .fuse import fuse

    result = fuse(info.module, x)
    rep = result.report
    return result.model, {"skipped": False, "method": rep.method, "max_rel_err": rep.max_rel_err,
                          "ops_before": rep.ops_before, "ops_after": rep.ops_after, "notes": rep.notes}
