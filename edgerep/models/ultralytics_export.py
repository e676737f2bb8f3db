"""Ultralytics' own exporter run on a model edgerep loaded: the engine a user of Ultralytics gets without
edgerep, built in edgerep's work folder so a build can validate and time it beside its own (pipeline.baselines).

Ultralytics' INT8 exports (OpenVINO through NNCF, ONNX through onnxruntime.quantization) calibrate on a dataset
yaml's split, `val` by default; here they are given edgerep's own calibration images through a yaml this module
writes (split `train`, a list of the images), so both engines calibrate on the same images and are scored on the
held-out ones. Nothing is downloaded (models.ultralytics sets Ultralytics' offline switches before its import).
"""
from __future__ import annotations

import contextlib
import copy
import io
import shutil
from pathlib import Path
from typing import Any, Sequence

from edgerep.errors import UserError, one_line

DEFAULT_SPLIT_NOTE = ("Ultralytics' INT8 export calibrates on the dataset's val split by default; here it was given "
                      "edgerep's calibration images")


def is_ultralytics_module(module: Any) -> bool:
    """A model of Ultralytics' own classes (DetectionModel, ClassificationModel, ...), whatever spec loaded it."""
    return any(cls.__module__.startswith("ultralytics.") for cls in type(module).__mro__[:-1])


def calibration_yaml(path: Path, images: Sequence[Path], names: Sequence[str]) -> Path:
    """An Ultralytics dataset yaml whose train and val splits are `images` (a list file beside it), written
    atomically; the exporter is pointed at split `train`."""
    from edgerep.files.artifacts import atomic_path

    listing = path.with_suffix(".txt")
    with atomic_path(listing) as tmp:
        tmp.write_text("".join(f"{Path(p).resolve()}\n" for p in images))
    body = ["# written by edgerep: the calibration images of this build, for Ultralytics' INT8 export",
            f"path: {path.parent.resolve()}", f"train: {listing.name}", f"val: {listing.name}", "names:"]
    body += [f"  {i}: {name!r}" for i, name in enumerate(names)]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(body) + "\n")
    return path


def export_with_ultralytics(module: Any, *, fmt: str, int8: bool, imgsz: tuple[int, int], out_dir: Path,
                            data_yaml: Path | None = None) -> Path:
    """Run Ultralytics' Exporter on a copy of `module` (batch 1, static shape: its defaults) for `fmt`
    ("onnx" | "openvino"), into `out_dir`; returns the engine file (the .onnx, or the IR's .xml). `int8` needs
    `data_yaml` (calibration_yaml). A failure is a RuntimeError with Ultralytics' reason."""
    from edgerep.models.ultralytics import import_ultralytics

    import_ultralytics("ultralytics export")
    from ultralytics.engine.exporter import Exporter

    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)  # a killed export's leftovers are never reused
    out_dir.mkdir(parents=True)
    from ultralytics.nn.tasks import guess_model_task

    model = copy.deepcopy(module).float().eval()
    if not getattr(model, "task", None):  # YOLO(...) sets these on the models it wraps; a bare module lacks them
        model.task = guess_model_task(model)
    if not getattr(model, "names", None):
        model.names = {i: str(i) for i in range(int(getattr(model.model[-1], "nc", 0)))}
    model.pt_path = str(out_dir / "ultralytics.pt")  # the exporter names and places its files after this path
    args: dict[str, Any] = {"format": fmt, "imgsz": list(imgsz), "batch": 1, "device": "cpu", "verbose": False,
                            "mode": "export"}
    if int8:
        if data_yaml is None:
            raise ValueError("an INT8 export needs data_yaml")
        args.update(quantize=8, data=str(data_yaml), split="train")
    import logging
    import warnings

    quiet = logging.getLogger()  # onnxruntime.quantization warns through the root logger
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)
        # its progress lines would mix into edgerep's (and --json's) output; torch.jit.trace's deprecation too
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            produced = Path(Exporter(overrides=args)(model=model))
    except UserError:
        raise
    except Exception as exc:
        raise RuntimeError(f"Ultralytics' exporter failed: {one_line(exc)}") from None
    finally:
        quiet.setLevel(level)
    if produced.is_dir():  # OpenVINO: a folder holding <stem>.xml/.bin and metadata.yaml
        found = sorted(produced.glob("*.xml"))
        if not found:
            raise RuntimeError(f"Ultralytics' exporter wrote no .xml into {produced}")
        return found[0]
    return produced
