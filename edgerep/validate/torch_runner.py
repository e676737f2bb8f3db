"""The PyTorch original as a Runner, so the latency protocol times it beside the engines (the report's
"what you would get without edgerep" row): eager, unfused, no grad, at the engines' thread count."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgerep.backends.base import RunnerBase
from edgerep.backends.common import time_calls


def torch_threads() -> int:
    """The thread count the engines run with: the process's cap (edgerep matrix workers) else every usable core,
    which is what ONNX Runtime and OpenVINO take by default."""
    from edgerep.cpu.threads import runtime_threads, usable_cores

    return runtime_threads() or usable_cores()


class TorchRunner(RunnerBase):
    """An nn.Module in eval mode run under torch.inference_mode; `run` gives its first output as float32."""

    def __init__(self, module: Any, *, threads: int | None = None) -> None:
        import torch

        torch.set_num_threads(threads or torch_threads())
        self.module = module.eval()
        self._torch = torch
        self.input_name = "input"
        self.output_names: list[str] = []  # named by the module's return value; not needed for timing

    @classmethod
    def from_file(cls, path: Path, *, threads: int | None = None) -> TorchRunner:
        """A module saved whole by save_module (a file this process's parent wrote in its private temporary folder
        a moment ago, so the full unpickle reads nothing from outside)."""
        import torch

        return cls(torch.load(str(path), weights_only=False, map_location="cpu"), threads=threads)

    def _forward(self, batch: np.ndarray) -> Any:
        with self._torch.inference_mode():
            return self.module(self._torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.run_all(batch)[0]

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        from edgerep.models.outputs import flatten_outputs

        return [np.asarray(t.float().numpy(), dtype=np.float32) for t in flatten_outputs(self._forward(batch))]

    def latency(self, batch: np.ndarray, warmup: int, iterations: int) -> list[float]:
        x = self._torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))

        def call() -> None:
            with self._torch.inference_mode():
                self.module(x)

        return time_calls(call, warmup, iterations)

    def close(self) -> None:
        self.module = None


def save_module(module: Any, path: Path) -> None:
    """The whole module (class and weights) for TorchRunner.from_file in the timing child."""
    import torch

    torch.save(module, str(path))
