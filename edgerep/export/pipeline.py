"""Export, then simplify, each stage checked against PyTorch: model.onnx and model.sim.onnx with their sidecars."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from edgerep.errors import UserError
from edgerep.export.compare import check_inputs, compare_onnx, torch_reference
from edgerep.export.onnx_export import export_onnx, model_output_names
from edgerep.export.simplify import simplify_onnx
from edgerep.files.artifacts import package_versions, write_sidecar
from edgerep.files.onnx_files import EXTERNAL_DATA_THRESHOLD, onnx_output_names, onnx_sha256


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
