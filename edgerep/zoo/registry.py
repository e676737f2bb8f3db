"""A registry of our own model families, filled by a decorator (timm's pattern)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from edgerep.errors import UserError


@dataclass(frozen=True)
class ZooEntry:
    name: str
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, int, int, int] = (1, 3, 224, 224)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    num_classes: int = 1000
    # Weights shipped with the package (a path relative to edgerep/zoo/weights), loaded by default.
    default_weights: str | None = None
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    # Applied in place once the weights are loaded (models.load_model), e.g. a function-preserving surgery
    # that makes a test variant from the shipped weights (repyolo_digits_stress).
    post_load: Callable[[nn.Module], None] | None = None

    def weights_path(self) -> Path | None:
        if self.default_weights is None:
            return None
        return Path(__file__).parent / "weights" / self.default_weights


_REGISTRY: dict[str, ZooEntry] = {}


def register_model(
    name: str | None = None,
    *,
    input_shape: tuple[int, int, int, int] = (1, 3, 224, 224),
    mean: tuple[float, ...] = (0.485, 0.456, 0.406),
    std: tuple[float, ...] = (0.229, 0.224, 0.225),
    num_classes: int = 1000,
    default_weights: str | None = None,
    description: str = "",
    tags: tuple[str, ...] = (),
    post_load: Callable[[nn.Module], None] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a factory `fn(*, num_classes=..., deploy=False, **kw) -> nn.Module`.

    Its description is `description`, else fn's docstring on one line (`edgerep models` prints one a line).
    `tags` say what the model is for beyond classifying (e.g. "detect" for the zoo's detectors);
    `post_load(module)` runs in place after the weights (shipped or --weights) are loaded.
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise RuntimeError(f"zoo model {key!r} registered twice")
        _REGISTRY[key] = ZooEntry(
            key, fn, input_shape, mean, std, num_classes, default_weights, description or " ".join((fn.__doc__ or "").split()),
            tuple(tags), post_load,
        )
        return fn

    return wrap


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def get_entry(name: str) -> ZooEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = [n for n in _REGISTRY if name.lower() in n or n in name.lower()][:5]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise UserError(
            f"--model zoo:{name}: no such zoo model{hint}; `edgerep models` lists them"
        ) from None


def create_model(name: str, *, num_classes: int | None = None, deploy: bool = False, **kwargs: Any) -> nn.Module:
    entry = get_entry(name)
    return entry.factory(num_classes=num_classes or entry.num_classes, deploy=deploy, **kwargs)
