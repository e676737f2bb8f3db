"""Model specs: turn `zoo:NAME`, `timm:NAME`, `file.pt2` or `pkg.module:factory` into an nn.Module.

Weights are loaded safely: safetensors, or a .pt/.pth state dict through `torch.load(weights_only=True)`.
A full pickle is only unpickled behind an explicit `trust_pickle=True` (`--trust-pickle`).
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from edgerep.errors import UserError, one_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelInfo:
    """A loaded model and what we know about its input."""

    module: nn.Module
    spec: str
    input_shape: tuple[int, ...]  # NCHW, batch 1
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    deploy: bool = False  # the zoo model was built in its deploy (fused) form
    weights: str | None = None
    # What the model is for, when the model tells us ("classify" | "detect" | "raw"; None: not known, the
    # task is inferred later). Detectors also say how their input is made and their head is read.
    task: str | None = None
    letterbox: bool = False  # keep aspect ratio, pad to the input size with pad_value (YOLO's preprocessing)
    pad_value: int = 114
    stride: int | None = None  # the input size must be a multiple of this (a detector's largest stride)
    head_layout: str | None = None  # tasks.detect.LAYOUTS, or None: inferred from the output's shape
    class_names: tuple[str, ...] | None = None
    # "ultralytics": an Ultralytics model (an `ultralytics:` spec, a best.pt, or a zoo entry or factory whose module
    # is one), head in export form; what Ultralytics' own exporter can make a baseline of. None: any other model.
    family: Literal["ultralytics"] | None = None
    # True when neither the spec nor --input-shape said the input shape (a factory's module without an
    # `input_shape` attribute): input_shape is then a guess, replaced by the data's shape when it is arrays.
    shape_guessed: bool = False

    @property
    def name(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.spec.split("/")[-1].split(":")[-1]) or "model"


def parse_input_shape(text: str) -> tuple[int, ...]:
    """'1x3x224x224' (or '1,3,224,224') -> (1, 3, 224, 224)."""
    parts = re.split(r"[x,\s]+", text.strip().lower())
    try:
        shape = tuple(int(p) for p in parts if p)
    except ValueError:
        shape = ()
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise UserError(f"--input-shape {text!r}: expected positive sizes like 1x3x224x224")
    return shape


def load_model(
    spec: str,
    *,
    weights: str | Path | None = None,
    input_shape: tuple[int, ...] | str | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
    fallback_shape: tuple[int, ...] | None = None,
) -> ModelInfo:
    """Build the model named by `spec`, load `weights` into it, and put it in eval mode.

    `fallback_shape`: the input shape when neither `input_shape` nor the spec gives one (the shape of the
    preprocessed arrays the model will run on, edgerep.data.sources.array_input_shape)."""
    if isinstance(input_shape, str):
        input_shape = parse_input_shape(input_shape)
    if spec.startswith("zoo:"):
        info = _load_zoo(spec[4:], weights, num_classes, trust_pickle)
    elif spec.startswith("timm:"):
        info = _load_timm(spec[5:], num_classes)
        if weights is not None:
            load_weights_into(info.module, weights, trust_pickle=trust_pickle)
    elif _is_ultralytics(spec):  # ultralytics:CFG.yaml, ultralytics:best.pt or path/best.pt (edgerep.models.ultralytics)
        from edgerep.models.ultralytics import load_ultralytics

        module, fields = load_ultralytics(spec, weights=weights, num_classes=num_classes, trust_pickle=trust_pickle,
                                          input_shape=input_shape)
        if weights is not None:
            load_weights_into(module, weights, trust_pickle=trust_pickle)
        info = ModelInfo(module=module, spec=spec, **fields)
    elif spec.endswith(".pt2"):
        info = _load_exported(spec, tuple(input_shape) if input_shape is not None else fallback_shape)
        if weights is not None:
            raise UserError(f"--weights {weights}: a .pt2 archive carries its own weights; drop --weights")
    elif ":" in spec and not Path(spec).exists():
        info = _load_factory(spec, num_classes)
        if weights is not None:
            load_weights_into(info.module, weights, trust_pickle=trust_pickle)
    else:
        raise UserError(
            f"--model {spec!r}: unknown model spec; use zoo:NAME, timm:NAME, ultralytics:CFG.yaml, path/best.pt, "
            f"path/to/file.pt2 or package.module:factory"
        )
    if weights is not None:
        info.weights = str(weights)
    if info.family is None and _is_ultralytics_module(info.module):  # a zoo entry's or a factory's, weights loaded
        info = _as_ultralytics(info, tuple(input_shape) if input_shape is not None else None)
    if input_shape is not None:
        info.input_shape, info.shape_guessed = tuple(input_shape), False
    elif info.shape_guessed and fallback_shape is not None:
        info.input_shape, info.shape_guessed = tuple(fallback_shape), False
    if info.letterbox and info.stride and len(info.input_shape) == 4:
        from edgerep.data.detect_labels import check_letterbox_size

        check_letterbox_size(info.input_shape[2:], int(info.stride), "--input-shape")
    info.module.eval()
    _refuse_batch_statistics(info)
    _check_forward(info, shape_given=input_shape is not None)
    return info


def _is_ultralytics(spec: str) -> bool:
    from edgerep.models.ultralytics import is_ultralytics_spec  # a light import: ultralytics itself loads later

    return is_ultralytics_spec(spec)


def _is_ultralytics_module(module: nn.Module) -> bool:
    from edgerep.models.ultralytics import is_ultralytics_module  # imports ultralytics only if it already is

    return is_ultralytics_module(module)


def _as_ultralytics(info: ModelInfo, input_shape: tuple[int, ...] | None) -> ModelInfo:
    """An Ultralytics model from another source, treated as `ultralytics:` specs are: the head in export form and
    its detect (or classify) fields. Its input shape: --input-shape, else the source's own when it gave one."""
    from edgerep.models.ultralytics import as_ultralytics_model

    shape = input_shape if input_shape is not None else (None if info.shape_guessed else tuple(info.input_shape))
    return replace(info, **as_ultralytics_model(info.module, input_shape=shape, spec=info.spec))



def _refuse_batch_statistics(info: ModelInfo) -> None:
    """A BN without running statistics normalizes with each batch's own statistics even in eval mode: its
    output depends on the batch, so no engine (and no fused conv) can reproduce it."""
    for name, mod in info.module.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and (not mod.track_running_stats or mod.running_mean is None):
            raise UserError(f"--model {info.spec}: {name or 'the model'} ({type(mod).__name__}) keeps no running "
                            f"statistics (track_running_stats=False), so it normalizes with each batch's statistics "
                            f"even in eval mode and cannot become a fixed layer; give it running statistics "
                            f"(track_running_stats=True) and train or recalibrate them")


def _check_forward(info: ModelInfo, *, shape_given: bool) -> None:
    """Run the model once on a random input of its shape: a model that fails there fails here, in one line."""
    x = torch.randn(*info.input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            result = info.module(x)
    except Exception as exc:
        shape = "x".join(map(str, info.input_shape))
        if shape_given:
            raise UserError(f"--input-shape {shape}: the model rejects this input ({one_line(exc)}); "
                            f"pass the shape it expects") from exc
        raise UserError(f"--model {info.spec}: the forward failed on a {shape} input ({one_line(exc)}); "
                        f"pass the shape it expects with --input-shape") from exc
    check_outputs(result, info.spec)


def check_outputs(result: Any, spec: str) -> list[str]:
    """The names of a forward's outputs (edgerep.models.outputs order): a tensor, or a tuple, list or dict of them (nested
    too). Anything else (a string, a number, an object) cannot be exported or compared: a one-line UserError."""
    from edgerep.models.outputs import flatten_named

    try:
        named = flatten_named(result)
    except UserError as exc:
        raise UserError(f"--model {spec}: {exc.message}") from None
    for name, value in named:
        if not isinstance(value, torch.Tensor):
            raise UserError(f"--model {spec}: output '{name}' of the forward is a {type(value).__name__}, not a "
                            f"tensor; return a tensor, or a tuple, list or dict of tensors")
    return [name for name, _ in named]


# --- zoo -------------------------------------------------------------------------------------------


def _load_zoo(name: str, weights: str | Path | None, num_classes: int | None, trust_pickle: bool) -> ModelInfo:
    from edgerep import zoo

    entry = zoo.get_entry(name)
    path = Path(weights) if weights is not None else entry.weights_path()
    module = zoo.create_model(name, num_classes=num_classes)
    deploy = False
    if path is not None:
        state = _refit_prefix(module, read_state_dict(path, trust_pickle=trust_pickle))
        if _matches(module, state):
            _load_checked(module, state, path)
        else:
            # A fused checkpoint (written by `edgerep fuse`) loads into the deploy form.
            deployed = zoo.create_model(name, num_classes=num_classes, deploy=True)
            if _matches(deployed, state):
                module, deploy = deployed, True
                _load_checked(module, state, path)
            else:
                _load_checked(module, state, path)  # raises with the first mismatches
    if entry.post_load is not None:
        entry.post_load(module)
    return ModelInfo(
        module=module,
        spec=f"zoo:{name}",
        input_shape=entry.input_shape,
        mean=entry.mean,
        std=entry.std,
        num_classes=num_classes or entry.num_classes,
        deploy=deploy,
        weights=str(path) if path is not None else None,
        **_zoo_task_fields(entry, module),
    )


def _zoo_task_fields(entry: Any, module: nn.Module) -> dict[str, Any]:
    """The zoo's detectors (tag "detect") are letterboxed YOLO-style models; everything else classifies."""
    if "detect" not in entry.tags:
        return {"task": "classify"}
    stride = torch.as_tensor(getattr(module, "stride", 32))  # an int, or per level (an Ultralytics model's tensor)
    return {"task": "detect", "letterbox": True, "stride": int(stride.max()),
            "head_layout": getattr(module, "head_layout", None)}


# --- timm ------------------------------------------------------------------------------------------


def _load_timm(name: str, num_classes: int | None) -> ModelInfo:
    try:
        import timm
    except ImportError:
        raise UserError(f"--model timm:{name}: timm is not installed; pip install 'edgerep[timm]'") from None
    if not timm.list_models(name):
        raise UserError(f"--model timm:{name}: timm has no model of that name; timm.list_models('*{name}*') lists close ones")
    kwargs: dict[str, Any] = {"pretrained": False}  # nothing is downloaded at run time
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    module = timm.create_model(name, **kwargs)
    cfg = getattr(module, "pretrained_cfg", None) or {}
    size = tuple(cfg.get("input_size", (3, 224, 224)))
    return ModelInfo(
        module=module,
        spec=f"timm:{name}",
        input_shape=(1, *size),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        num_classes=getattr(module, "num_classes", num_classes),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bilinear")),
        task="classify",  # timm's models are image classifiers (their feature-extractor modes are not loaded here)
    )


# --- torch.export archives -------------------------------------------------------------------------


def _load_exported(path_text: str, fallback_shape: tuple[int, ...] | None = None) -> ModelInfo:
    path = Path(path_text)
    if not path.is_file():
        raise UserError(f"--model {path}: file not found")
    # A .pt2 archive may unpickle internally: it is trusted input by contract (README says so).
    import zipfile

    if not zipfile.is_zipfile(path):  # torch.export.load would log a traceback before failing
        raise UserError(f"--model {path}: not a torch.export archive (not a zip file); "
                        f"save one with torch.export.save(torch.export.export(model, args), path)")
    import logging

    export_log = logging.getLogger("torch.export")  # it logs a traceback for an archive it cannot read
    was_disabled, export_log.disabled = export_log.disabled, True
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # corrupt archive, wrong format
        msg = str(exc).split(". Please check the warnings")[0].splitlines()[0] if str(exc) else ""
        raise UserError(f"--model {path}: not a readable torch.export archive ({type(exc).__name__}: {msg}); "
                        f"save one with torch.export.save(torch.export.export(model, args), path)") from None
    finally:
        export_log.disabled = was_disabled
    module = program.module()
    shape = None
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name not in program.graph_signature.inputs_to_parameters \
                and node.name not in program.graph_signature.inputs_to_buffers:
            val = node.meta.get("val")
            if val is not None and hasattr(val, "shape"):
                shape = tuple(int(d) if isinstance(d, int) else 1 for d in val.shape)
                break
    if shape is None:
        if fallback_shape is None:
            raise UserError(f"--model {path}: cannot tell the input shape; pass --input-shape 1x3xHxW")
        shape = tuple(fallback_shape)  # --input-shape, else the data's arrays
    return ModelInfo(module=_ExportedWrapper(module), spec=str(path), input_shape=shape)


class _ExportedWrapper(nn.Module):
    """`ExportedProgram.module()` has no train/eval switch worth calling; keep the rest of edgerep uniform."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def train(self, mode: bool = True) -> "_ExportedWrapper":  # noqa: D401 - exported graphs are fixed
        self.training = mode
        return self


# --- package.module:factory ------------------------------------------------------------------------


def _load_factory(spec: str, num_classes: int | None) -> ModelInfo:
    mod_name, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise UserError(f"--model {spec}: cannot import module {mod_name!r} ({exc})") from exc
    except Exception as exc:  # the user's module itself fails while importing
        raise UserError(f"--model {spec}: importing {mod_name!r} raised {one_line(exc)}") from exc
    factory = getattr(mod, attr, None)
    if factory is None or not callable(factory):
        raise UserError(f"--model {spec}: module {mod_name!r} has no callable {attr!r}")
    try:
        module = factory(num_classes=num_classes) if num_classes is not None else factory()
    except Exception as exc:  # the user's code: one line here, the traceback with --debug
        raise UserError(f"--model {spec}: the factory raised {one_line(exc)}") from exc
    if not isinstance(module, nn.Module):
        raise UserError(f"--model {spec}: the factory returned {type(module).__name__}, not an nn.Module")
    given = getattr(module, "input_shape", None)
    shape = tuple(given) if given is not None else (1, 3, 224, 224)
    return ModelInfo(module=module, spec=spec, input_shape=shape, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     num_classes=num_classes, shape_guessed=given is None)


# --- weights ---------------------------------------------------------------------------------------


def read_state_dict(path: str | Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict: safetensors, or .pt/.pth with weights_only=True unless trust_pickle."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--weights {path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise UserError(f"--weights {path}: not a readable safetensors file ({exc})") from None
    if trust_pickle:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)  # --trust-pickle given
        except Exception as exc:  # corrupt file, or a pickle whose classes are not importable here
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"--weights {path}: cannot unpickle it ({type(exc).__name__}: {msg}); "
                            f"re-save it with torch.save(model.state_dict(), path) or as safetensors") from None
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "Unsupported operand" in str(exc):  # not pickle bytes at all: a corrupt or foreign file
                raise UserError(f"--weights {path}: not a readable PyTorch file (corrupt or another format); "
                                f"re-save it with torch.save(model.state_dict(), path) or as safetensors") from None
            if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "pickle" in str(exc).lower():
                raise UserError(
                    f"--weights {path}: holds pickled objects beyond tensors; refusing to unpickle it "
                    f"(convert it to safetensors, or pass --trust-pickle if you trust its source)"
                ) from None
            raise UserError(f"--weights {path}: cannot read it ({msg})") from None
    return _extract_state_dict(obj, path)


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "ema"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return inner.state_dict()
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return _strip_prefix(inner)
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return _strip_prefix(obj)
    raise UserError(f"--weights {path}: no state dict found in it (expected a dict of tensors)")


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _matches(module: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = module.state_dict()
    return set(own) == set(state) and all(own[k].shape == state[k].shape for k in own)


def _load_checked(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + "; ".join(wrong[:3]))
        if missing:
            parts.append("missing: " + ", ".join(missing[:3]))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:3]))
        raise UserError(f"--weights {path}: does not fit the model ({' | '.join(parts)})")
    module.load_state_dict(state)


def load_weights_into(module: nn.Module, weights: str | Path, *, trust_pickle: bool = False) -> None:
    path = Path(weights)
    _load_checked(module, _refit_prefix(module, read_state_dict(path, trust_pickle=trust_pickle)), path)


def _refit_prefix(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """read_state_dict strips a "model." prefix shared by every key (a wrapper's); put it back when the model's
    own keys all have it (an Ultralytics model keeps its layers in `model`)."""
    own = set(module.state_dict())
    if set(state) != own and {f"model.{k}" for k in state} == own:
        return {f"model.{k}": v for k, v in state.items()}
    return state


def with_shape(info: ModelInfo, shape: tuple[int, ...]) -> ModelInfo:
    return replace(info, input_shape=tuple(shape))


def example_input(info: ModelInfo, seed: int = 0) -> torch.Tensor:
    """A random input of the model's shape; a model that rejects it is a user error naming the shape."""
    x = torch.randn(*info.input_shape, generator=torch.Generator().manual_seed(seed))
    try:
        with torch.no_grad():
            info.module(x)
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        shape = "x".join(map(str, info.input_shape))
        raise UserError(f"--input-shape {shape}: the model rejects this input ({first}); pass the shape it expects") from None
    return x
