"""The contract every backend keeps.

A backend module `edgerep/backends/<name>.py` defines `BACKEND`, an object with:
  name: str                         e.g. "openvino"
  precisions: tuple[str, ...]       what it can build, from ("fp32", "fp16", "int8")
  available() -> str | None         None when usable, else the reason (e.g. "openvino is not installed;
                                    pip install 'edgerep[openvino]'"). Must not raise.
  build(onnx_path, precision, *, out_dir, profile, calib=None, options=None) -> Artifact
                                    builds one engine from the simplified ONNX; writes it atomically
                                    (temporary name, then rename) with a sidecar JSON beside it.
  load(artifact) -> Runner          an object that runs the engine on NCHW float32 numpy batches: `run` (the
                                    first output), `run_all` (every output, ONNX order), `output_names`.
Heavy imports (openvino, onnxruntime, tensorrt, nncf) happen inside these methods, never at import.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgerep.files.artifacts import Artifact  # noqa: F401 (part of the contract)


@runtime_checkable
class Runner(Protocol):
    input_name: str
    output_names: list[str]  # every output of the engine, in the ONNX graph's order

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one NCHW float32 batch; returns the first output as float32."""

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one NCHW float32 batch; returns every output as float32, in `output_names` order."""

    def close(self) -> None: ...


class Backend(Protocol):
    name: str
    precisions: tuple[str, ...]

    def available(self) -> str | None: ...

    def build(self, onnx_path: Path, precision: str, *, out_dir: Path, profile: Any, calib: Any = None,
              options: dict[str, Any] | None = None) -> Artifact: ...

    def load(self, artifact: Artifact) -> Runner: ...
