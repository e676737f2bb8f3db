"""The PyTorch original as a Runner, so the latency protocol times it beside the engines (the report's
"what you would get without edgerep" row): eager, unfused, no grad, at the engines' thread count."""
from __future__ import annotations

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
    def from_spec(cls, load_args: dict[str, Any], *, threads: int | None = None) -> TorchRunner:
        """The model `load_args` names (models.load_model's arguments and the seed), loaded the way the build loaded
        it: a full pickle only when the build was given --trust-pickle."""
        import torch

        from edgerep.models.specs import load_model

        args = dict(load_args)
        torch.manual_seed(int(args.pop("seed", 0) or 0))
        shape = args.pop("input_shape", None)
        info = load_model(args.pop("spec"), input_shape=tuple(shape) if shape else None, **args)
        return cls(info.module, threads=threads)

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

