"""The contract every backend keeps: the whole interface is here, so nothing looks members up by reflection.

A backend is an object registered in backends/__init__.py's REGISTRY (its adapter module's `BACKEND`) with:
  name            e.g. "openvino"
  capabilities    what it builds and takes (Capabilities below): precisions, calibration methods, build
                  options, whether it builds without its runtime (TensorRT: a device bundle), the packages whose
                  versions key its engines, and the Q/DQ placement that predicts its INT8 engine
  available()     None when usable, else the reason ("openvino is not installed; pip install ..."); never raises
  build(onnx_path, precision, *, out_dir, profile, calib=None, options=None) -> Artifact
                  one engine from the simplified ONNX, written atomically with a sidecar JSON beside it
  load(artifact) -> Runner
                  a context manager that runs the engine on NCHW float32 numpy batches
Heavy imports (openvino, onnxruntime, tensorrt, nncf) happen inside these methods, never at import.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from edgerep.backends.repair import REPAIR_OPTION
from edgerep.files.artifacts import Artifact

if TYPE_CHECKING:
    from edgerep.targets import TargetProfile

# Options every backend's build takes; each backend lists its own on top in its Capabilities. ignored_nodes: the
# user's float layers; head_float_nodes: those INT8 keeps in float by default (quant.float_policy decides them);
# range_repair (REPAIR_OPTION): range repairs applied to the float ONNX before INT8 (backends.repair), in order.
COMMON_OPTIONS = frozenset({"ignored_nodes", "head_float_nodes", "calib_method", "num_samples", REPAIR_OPTION})
# `edgerep validate --inference-precision VALUE`, for that process and its children (the timing child): a backend
# whose Capabilities.inference_precisions lists VALUE compiles engines at it instead of at their own; "default"
# compiles with no precision hint, as a plain deployment does.
INFERENCE_PRECISION_ENV = "EDGEREP_INFERENCE_PRECISION"
RUNTIME_DEFAULT = "default"


@dataclass(frozen=True)
class Capabilities:
    title: str  # the runtime's name in messages ("ONNX Runtime")
    precisions: tuple[str, ...]  # what it can build, from targets.PRECISIONS
    calib_methods: tuple[str, ...]  # INT8 calibration methods, the default first
    options: frozenset[str]  # the build options it accepts
    packages: tuple[str, ...]  # distributions whose versions are part of its engines' cache key
    qdq_style: str  # the Q/DQ placement (quant.qdq.STYLES) whose ONNX Runtime run predicts its INT8 engine
    install: str  # what to install when its runtime is missing
    offline_build: bool = False  # build() works without the runtime (it prepares what the device builds)
    # Ultralytics' exporter's `format` for this runtime ("onnx", "openvino"): the baseline a YOLO user gets
    # without edgerep (pipeline.baselines); None: Ultralytics' export is not compared on this backend.
    ultralytics_format: str | None = None
    inference_precisions: tuple[str, ...] = ()  # what its runners take from INFERENCE_PRECISION_ENV (none: no choice)

    @property
    def default_calib_method(self) -> str:
        return self.calib_methods[0]


@runtime_checkable
class Runner(Protocol):
    input_name: str
    output_names: list[str]  # every output of the engine, in the ONNX graph's order

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one NCHW float32 batch; returns the first output as float32."""

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one NCHW float32 batch; returns every output as float32, in `output_names` order."""

    def latency(self, batch: np.ndarray, warmup: int, iterations: int) -> list[float]:
        """Milliseconds per inference of `batch`, after `warmup` untimed ones, by the runtime's best clock."""

    def close(self) -> None: ...

    def precision_warning(self) -> str | None:
        """One line when the engine runs here at another precision than it was validated at, else None."""

    def __enter__(self) -> Runner: ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None: ...


_R = TypeVar("_R", bound="RunnerBase")


class RunnerBase:
    """What every runner shares: `with backend.load(artifact) as runner:` closes it on the way out."""

    def close(self) -> None:  # pragma: no cover - each runner frees its own session
        raise NotImplementedError

    def precision_warning(self) -> str | None:
        """None: a runtime without a choice of inference precision runs an engine as it was built."""
        return None

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Backend(Protocol):
    name: str
    capabilities: Capabilities

    def available(self) -> str | None: ...

    def build(self, onnx_path: Path, precision: str, *, out_dir: Path, profile: TargetProfile, calib: Any = None,
              options: dict[str, Any] | None = None) -> Artifact: ...

    def load(self, artifact: Artifact) -> Runner: ...
