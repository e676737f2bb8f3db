"""Run one engine on saved inputs and save its outputs: the child process behind isa_check.

It runs where the parent cannot: under oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA is read once, when the CPU plugin
loads) or inside qemu-user emulating a weaker CPU. It imports numpy and the one runtime it needs, nothing
else of edgerep's pipeline, so it starts fast even under emulation.

Usage: python -m edgerep.validate.isa_probe ENGINE INPUTS.npy OUTPUTS.npz BATCH
OUTPUTS.npz holds every output of the engine in ONNX order as out0, out1, ... (runner.run_all).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> int:
    engine, inputs, output, batch = Path(argv[0]), Path(argv[1]), Path(argv[2]), int(argv[3])
    from edgerep.backends import get_backend
    from edgerep.files.artifacts import load_artifact

    artifact = load_artifact(engine)
    x = np.load(inputs)
    n = x.shape[0]
    pad = (-n) % batch  # a fixed-batch engine takes whole batches only: pad, then drop the padding's outputs
    if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), dtype=x.dtype)])
    with get_backend(artifact.backend).load(artifact) as runner:
        chunks = [runner.run_all(x[i:i + batch]) for i in range(0, x.shape[0], batch)]
    outputs = {f"out{k}": np.concatenate([c[k] for c in chunks])[:n] for k in range(len(chunks[0]))}
    tmp = output.with_name(output.name + ".partial.npz")
    with open(tmp, "wb") as f:  # np.savez on a path would append ".npz" to the temporary name
        np.savez(f, **outputs)  # type: ignore[arg-type]  # numpy's stub reads **kwds as allow_pickle
    tmp.replace(output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
