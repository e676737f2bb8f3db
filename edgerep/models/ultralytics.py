"""Ultralytics models as a model source (optional extra `edgerep[ultralytics]`).

Two specs:
  * `ultralytics:<config>.yaml` (yolov8n.yaml, yolo11n.yaml, yolov10n.yaml, ...): any config Ultralytics ships,
    resolved by Ultralytics itself and built untrained; `--weights` loads a state dict with edgerep's checked
    loading (safetensors, or .pt through torch.load(weights_only=True)).
  * an Ultralytics checkpoint, `path/best.pt` or `ultralytics:path/best.pt`: a full pickle (the trainer pickles
    the whole model), so it is refused unless `--trust-pickle`; with it, Ultralytics' own loader reads it in
    float32, and the input size and class names come from its training arguments.

The head is put in the form Ultralytics' exporter gives it (engine/exporter.py sets `export`, `format`,
`dynamic` and resets the cached anchor `shape` on every Detect; `export` on Classify; the NMS-free branch off
unless NMS-free export is asked for), so a detection model returns one tensor (B, 4+nc, N): cx, cy, w, h in
input pixels, then the class scores. What the exporter does besides that, we leave to edgerep's own stages:
BN folding and RepConv fusion (edgerep's fuser), ONNX simplification (edgerep's simplifier).

Any other spec whose module is an Ultralytics model (a zoo entry such as `zoo:yolov8n_digits`, a
`pkg.module:factory` returning a DetectionModel) gets the same treatment once its weights are loaded
(`is_ultralytics_module`, `as_ultralytics_model`, called by edgerep.models.specs.load_model), and every Ultralytics
model is marked `family="ultralytics"` on its ModelInfo.

ultralytics is imported only inside these functions; nothing is downloaded (YOLO_OFFLINE stops its network
probe at import, YOLO_AUTOINSTALL its pip installs of missing modules).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

import torch.nn as nn

from edgerep.errors import UserError, one_line

FAMILY: Literal["ultralytics"] = "ultralytics"  # ModelInfo.family of every Ultralytics model
PREFIX = "ultralytics:"
CHECKPOINT_SUFFIXES = (".pt", ".pth")
CONFIG_SUFFIXES = (".yaml", ".yml")
DEFAULT_IMGSZ = 640  # Ultralytics' default training size, used when a checkpoint does not say
# Set before ultralytics is imported: no DNS probe, no pip installs, no banner per call.
_OFFLINE_ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false", "YOLO_VERBOSE": "false"}
# Ultralytics' task -> edgerep's task. Segment and pose heads return (B, 4+nc+extra, N) plus, for segment, the mask
# prototypes: more than a box decoder reads, so they are compared as tensors ("raw").
_TASKS = {"detect": "detect", "classify": "classify"}


def is_ultralytics_spec(spec: str) -> bool:
    """`ultralytics:...`, or a path to a .pt/.pth file given as the model (an Ultralytics checkpoint)."""
    return spec.startswith(PREFIX) or (":" not in spec and Path(spec).suffix.lower() in CHECKPOINT_SUFFIXES)


def import_ultralytics(spec: str) -> Any:
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import ultralytics
    except ImportError:
        raise UserError(f"--model {spec}: Ultralytics is not installed; pip install 'edgerep[ultralytics]'") from None
    return ultralytics


def load_ultralytics(spec: str, *, weights: str | Path | None, num_classes: int | None, trust_pickle: bool,
                     input_shape: tuple[int, ...] | None) -> tuple[nn.Module, dict[str, Any]]:
    """An Ultralytics config or checkpoint as (module, ModelInfo fields) (see the module docstring).

    A config's `weights` are loaded by the caller (edgerep.models, with its checked loading); a checkpoint
    refuses them."""
    target = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    suffix = Path(target).suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        if weights is not None:
            raise UserError(f"--weights {weights}: an Ultralytics checkpoint carries its own weights; drop --weights")
        if num_classes is not None:
            raise UserError(f"--num-classes {num_classes}: an Ultralytics checkpoint has its own classes; drop it")
        module, imgsz = _load_checkpoint(spec, Path(target), trust_pickle)
    elif suffix in CONFIG_SUFFIXES:
        module, imgsz = _build_config(spec, target, num_classes), None
    else:
        raise UserError(f"--model {spec}: expected ultralytics:<config>.yaml (e.g. ultralytics:yolov8n.yaml) or an "
                        f"Ultralytics checkpoint path/best.pt; pretrained names are not fetched (nothing is downloaded)")
    _export_form(module)
    return module, _info_fields(module, imgsz, input_shape)


def is_ultralytics_module(module: nn.Module) -> bool:
    """True for an Ultralytics model (a subclass of its nn.tasks.BaseModel: DetectionModel, ClassificationModel, ...).

    Ultralytics is not imported to answer: an object of its classes exists only once ultralytics.nn.tasks has been
    imported, so without it in sys.modules the answer is no."""
    if "ultralytics.nn.tasks" not in sys.modules:
        return False
    from ultralytics.nn.tasks import BaseModel

    return isinstance(module, BaseModel)


def as_ultralytics_model(module: nn.Module, *, input_shape: tuple[int, ...] | None = None,
                         spec: str = "model") -> dict[str, Any]:
    """An Ultralytics model built by another source (zoo, factory), weights loaded: its head put in export form
    in place, and its ModelInfo fields as for `ultralytics:` specs. The input size: `input_shape` when given, else
    the training size the model carries (`model.args["imgsz"]`, as a checkpoint's model does), else Ultralytics'
    640, then marked a guess (`shape_guessed`: the data's shape replaces it). `spec` names the model in errors."""
    args = getattr(module, "args", None)  # a dict on a checkpoint's model, a namespace on a trainer's
    train_size = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
    imgsz = None
    if train_size is not None and input_shape is None:
        imgsz = _imgsz(train_size, Path(spec))
    _export_form(module)
    fields = _info_fields(module, imgsz, input_shape)
    fields["shape_guessed"] = input_shape is None and imgsz is None
    return fields


def build_detection_model(cfg: str, num_classes: int, *, names: dict[int, str] | None, spec: str) -> nn.Module:
    """Ultralytics' DetectionModel from one of its configs (e.g. "yolov8n.yaml"), untrained, in train mode (as
    Ultralytics builds it). For zoo entries; without ultralytics, a UserError naming the extra."""
    import_ultralytics(spec)
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(cfg, nc=num_classes, verbose=False)
    if names is not None:
        model.names = dict(names)
    return model


# --- building ------------------------------------------------------------------------------------------


def _build_config(spec: str, cfg: str, num_classes: int | None) -> nn.Module:
    """Ultralytics resolves the name among its shipped configs (or reads a local yaml) and picks the model class."""
    import_ultralytics(spec)
    from ultralytics import YOLO

    try:
        model: Any = YOLO(cfg).model  # YOLO picks the class (detect, segment, pose, obb, classify) from the config
        if num_classes is not None:
            model = type(model)(model.yaml, nc=num_classes, verbose=False)
    except FileNotFoundError:
        raise UserError(f"--model {spec}: Ultralytics ships no config {cfg!r} and there is no such file; "
                        f"use one of its configs (yolov8n.yaml, yolo11n.yaml, yolov10n.yaml, ...) or a path") from None
    except Exception as exc:  # a malformed yaml, an unknown module in it
        raise UserError(f"--model {spec}: Ultralytics could not build it ({one_line(exc)})") from None
    return model


def _load_checkpoint(spec: str, path: Path, trust_pickle: bool) -> tuple[nn.Module, tuple[int, int]]:
    if not path.is_file():
        raise UserError(f"--model {path}: file not found")
    if not trust_pickle:
        raise UserError(f"--model {path}: an Ultralytics checkpoint is a full pickle, and unpickling runs code from "
                        f"the file; pass --trust-pickle only if you trust its source (or save its state dict as "
                        f"safetensors and use ultralytics:<config>.yaml --weights)")
    import_ultralytics(spec)
    from ultralytics.nn import tasks

    # 8.4 / older (mypy reads the installed Ultralytics, which may have only one of them)
    load = getattr(tasks, "load_checkpoint", None) or tasks.attempt_load_one_weight  # type: ignore[attr-defined]
    try:
        model, ckpt = load(str(path))  # float32, eval mode, as Ultralytics loads it for predict and export
    except Exception as exc:  # not a checkpoint, a truncated file, classes this Ultralytics lacks
        raise UserError(f"--model {path}: not a readable Ultralytics checkpoint ({one_line(exc)})") from None
    args = ckpt.get("train_args") or {}
    return model.float().eval(), _imgsz(args.get("imgsz"), path)


def _imgsz(value: Any, path: Path) -> tuple[int, int]:
    """train_args['imgsz']: an int (square) or [h, w]; missing: Ultralytics' default 640."""
    if value is None:
        return DEFAULT_IMGSZ, DEFAULT_IMGSZ
    size = [value, value] if isinstance(value, (int, float)) else list(value)
    if len(size) == 1:
        size = size * 2
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise UserError(f"--model {path}: its train_args imgsz {value!r} is not a size; pass --input-shape") from None
    return h, w


def _export_form(model: Any) -> None:  # an Ultralytics BaseModel (untyped)
    """The head in its export form, as Ultralytics' exporter sets it for ONNX (minimal: the same flags)."""
    from ultralytics.nn.modules.block import C2f
    from ultralytics.nn.modules.head import Classify, Detect

    if hasattr(model, "end2end"):
        model.end2end = False  # the exporter's default (nms=None): the one-to-many head, NMS outside the graph
    for m in model.modules():
        if isinstance(m, Classify):
            # ultralytics declares these class attributes untyped (`format = None`), so mypy takes them for None
            m.export, m.format = True, "onnx"  # type: ignore[assignment]  # softmax probabilities, one tensor
        elif isinstance(m, Detect):  # and its subclasses (Segment, Pose, OBB, v10Detect)
            m.export, m.format, m.dynamic = True, "onnx", False  # type: ignore[assignment]  # (as above)
            m.xyxy = False  # cx, cy, w, h boxes: the layout tasks.detect decodes
            m.shape = None  # recompute the anchors for the input size
        elif isinstance(m, C2f):  # and C3k2: one Split where chunk() exports two Slices, as the exporter does
            m.forward = m.forward_split  # type: ignore[method-assign]  # per instance, as the exporter does
    model.eval()


def _info_fields(model: Any, imgsz: tuple[int, int] | None, input_shape: tuple[int, ...] | None
                 ) -> dict[str, Any]:
    """ModelInfo's fields (edgerep.models.specs.ModelInfo) for an Ultralytics model in its export form."""
    from ultralytics.nn.modules import head as heads
    from ultralytics.nn.tasks import guess_model_task

    from edgerep.data.detect_labels import check_letterbox_size

    head = model.model[-1] if hasattr(model, "model") else None
    task = _TASKS.get(getattr(model, "task", None) or guess_model_task(model), "raw")
    plain_detect = tuple(getattr(heads, n) for n in ("Detect", "v10Detect") if hasattr(heads, n))
    if task == "detect" and type(head) not in plain_detect:
        task = "raw"  # e.g. RT-DETR's decoder, YOLOE/World heads: not the plain (B, 4+nc, N) head tasks.detect reads
    names = getattr(model, "names", None) or {}
    class_names = tuple(str(names[i]) for i in sorted(names)) if isinstance(names, dict) else tuple(map(str, names))
    nc = int(getattr(head, "nc", 0) or len(class_names)) or None
    channels = int((getattr(model, "yaml", None) or {}).get("channels", 3))
    if task == "classify":
        size = imgsz or (224, 224)  # Ultralytics' classification default
        return dict(input_shape=tuple(input_shape or (1, channels, *size)), mean=(0.0,) * channels,
                    std=(1.0,) * channels, num_classes=nc, task="classify", class_names=class_names or None,
                    family=FAMILY)
    stride = int(max(float(s) for s in model.stride)) if hasattr(model, "stride") else 32
    shape = tuple(input_shape) if input_shape is not None else (1, channels, *(imgsz or (DEFAULT_IMGSZ,) * 2))
    check_letterbox_size(shape[-2:], stride)
    return dict(input_shape=shape, mean=(0.0,) * channels, std=(1.0,) * channels, num_classes=nc, task=task,
                letterbox=True, pad_value=114, stride=stride, head_layout="ultralytics" if task == "detect" else None,
                class_names=class_names or None, family=FAMILY)



