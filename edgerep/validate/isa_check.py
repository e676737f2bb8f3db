"""Validate an engine on the target's ISA from a machine with another one, where the runtime allows it.

How each runtime can be held to a lower ISA on a stronger CPU:
- OpenVINO: its CPU plugin is built on oneDNN, which caps its JIT kernels at ONEDNN_MAX_CPU_ISA (oneDNN docs,
  "CPU Dispatcher Controls"); the variable is read once, when the plugin loads, so the engine runs in a child
  process. Checked here on OpenVINO 2026.4: with ONEDNN_MAX_CPU_ISA=AVX2 the runtime model's INT8 convolutions
  report `jit_avx2_I8` instead of `brgconv_avx512_I8` (tests/cpu/test_isa.py asserts it). OV_CPU_MAX_ISA is not
  honoured by that release.
- ONNX Runtime: none. MLAS picks its kernels from CPUID when the library loads (onnxruntime/core/mlas/lib/
  platform.cpp) and exposes no switch. Two things stand in for it:
  * a static proof: with 7-bit (reduce_range) or uint8 weights no u8*s8 pair can reach int16's limit, so the
    integer results are the same on every x86 ISA (backends.onnxruntime.int16_saturation_check);
  * emulation: where qemu-user is installed (Debian: qemu-user), the engine runs in `qemu-x86_64 -cpu Haswell`,
    a CPU with AVX2 and FMA but no AVX-512 or VNNI, so MLAS takes its AVX2 kernels exactly as on such a box.
    QEMU's TCG emulates no AVX-512, so only the avx2 level can be emulated this way.
Where neither applies, the result says "not verified" and why, rather than claiming the engine holds.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgerep.cpu.isa import ONEDNN_ISA, X86_ISAS, host_cpu, isa_rank

# qemu's CPU model for each x86 level it can emulate (TCG: up to AVX2; no AVX-512, no VNNI).
QEMU_CPU = {"avx2": "Haswell"}
# Samples run in the child: enough for the gates' percentages, bounded for emulation's speed.
MAX_SAMPLES = 512
TIMEOUT_S = 900


def plan(backend: str, precision: str, target: str, settings: dict[str, Any] | None = None,
         host: str | None = None) -> dict[str, Any]:
    """How an engine can be checked on `target` from this machine: {"method", "env", "command_prefix", "note"}.

    method: "native" (this CPU is the target's ISA), "onednn-cap", "qemu", "by-construction" or "not-verified".
    """
    host = host or host_cpu().isa or "avx2"
    settings = settings or {}
    if target == host:
        return {"method": "native", "note": f"validated on a {host} CPU, the target's ISA"}
    if precision != "int8":
        # Float kernels of another ISA differ in rounding only; the gates' FP32/FP16 tolerances cover that.
        return {"method": "by-construction", "note": f"{precision}: float kernels differ across ISAs only in rounding"}
    if (target == "arm64") != (host == "arm64"):
        return {"method": "not-verified",
                "note": f"built for {target} but validated on {host}: another architecture, no emulation here"}
    if backend == "openvino" and target in ONEDNN_ISA and isa_rank(target) < isa_rank(host):
        return {"method": "onednn-cap", "env": {"ONEDNN_MAX_CPU_ISA": ONEDNN_ISA[target]},
                "note": f"validated again with oneDNN capped at {ONEDNN_ISA[target]} (ONEDNN_MAX_CPU_ISA)"}
    if backend == "onnxruntime":
        qemu = shutil.which("qemu-x86_64")
        if target in QEMU_CPU and qemu and host in X86_ISAS:
            return {"method": "qemu", "command_prefix": [qemu, "-cpu", QEMU_CPU[target]],
                    "note": f"validated again under qemu-x86_64 -cpu {QEMU_CPU[target]} (AVX2, no VNNI)"}
        sat = settings.get("int16_saturation") or {}
        if sat.get("isa_independent"):
            return {"method": "by-construction",
                    "note": (f"weights {settings.get('int8_weights')}: no u8*s8 pair can exceed int16 "
                             f"({sat.get('worst_pair_sum')} <= 32767), so integer results are the same on every "
                             f"x86 ISA; ONNX Runtime has no switch to run {target} kernels here")}
        why = "install qemu-user to emulate avx2" if target in QEMU_CPU else "no emulator for it here"
        return {"method": "not-verified",
                "note": f"ONNX Runtime cannot be restricted to {target} kernels on this {host} CPU ({why})"}
    return {"method": "not-verified",
            "note": f"{backend} cannot be restricted to {target} on this {host} CPU"}


def run_on_target(engine: Path, inputs: np.ndarray, batch: int, how: dict[str, Any]) -> np.ndarray:
    """Run `engine` on `inputs` in a child process the way `how` (from plan()) says; returns its first output."""
    return run_on_target_all(engine, inputs, batch, how)[0]


def run_on_target_all(engine: Path, inputs: np.ndarray, batch: int, how: dict[str, Any]) -> list[np.ndarray]:
    """Run `engine` on `inputs` in a child process the way `how` (from plan()) says; returns every output, in
    ONNX order."""
    env = {**os.environ, **how.get("env", {})}
    # The child must find this very edgerep (a source checkout may not be the installed one).
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    work = Path(tempfile.mkdtemp(prefix="edgerep-isa-"))
    try:
        np.save(work / "x.npy", np.ascontiguousarray(inputs, dtype=np.float32))
        # sys.executable is the real interpreter (not a shell shim), which qemu-user needs.
        cmd = [*how.get("command_prefix", []), sys.executable, "-m", "edgerep.validate.isa_probe", str(engine),
               str(work / "x.npy"), str(work / "y.npz"), str(batch)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"{how['method']} run failed: {tail[0][:200]}")
        with np.load(work / "y.npz", allow_pickle=False) as data:
            return [np.asarray(data[f"out{k}"]) for k in range(len(data.files))]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_check(artifact: Any, source: Any, *, target: str, engine_batch: int,
              limit: int | None = None) -> tuple[dict[str, Any], np.ndarray | None]:
    """run_check_all with the first output alone (or None)."""
    record, outs = run_check_all(artifact, source, target=target, engine_batch=engine_batch, limit=limit)
    return record, (outs[0] if outs is not None else None)


def run_check_all(artifact: Any, source: Any, *, target: str, engine_batch: int,
                  limit: int | None = None) -> tuple[dict[str, Any], list[np.ndarray] | None]:
    """Where the engine is validated, {"target", "measured_on", "method", "note"}, and its outputs (every one, in
    ONNX order) on the first samples of `source` run on the target's ISA where this machine can give such a run
    (else None). validate.check_on_target_isa scores them."""
    host = host_cpu().isa or "avx2"
    how = plan(artifact.backend, artifact.precision, target, (artifact.info or {}).get("settings"), host)
    record: dict[str, Any] = {"target": target, "measured_on": host, "method": how["method"], "note": how["note"]}
    if how["method"] not in ("onednn-cap", "qemu"):
        return record, None
    xs = [x for x, _ in source.iter_batches(64, limit=min(limit or MAX_SAMPLES, MAX_SAMPLES))]
    try:
        outs = run_on_target_all(Path(artifact.path), np.concatenate(xs), engine_batch, how)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        record.update(method="not-verified", note=f"{how['note']}: could not run ({str(exc)[:200]})")
        return record, None
    return record, outs
