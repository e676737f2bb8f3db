"""`edgerep doctor`: what edgerep sees on this machine, to paste into a bug report.

Versions come from the installed distributions' metadata (importlib.metadata) and presence from
importlib.util.find_spec, so nothing is imported to list it. Only the runtimes whose answer needs their code are
imported, and only when installed: onnxruntime (execution providers), openvino (devices), tensorrt and pycuda
(do they load; CUDA devices). torch, nncf, timm, ultralytics, ray, onnx, onnxsim and onnxslim each take
seconds to import and are not imported. A package that fails to import is reported with its error in one line
and the rest goes on; doctor never fails because of a package.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from edgerep.errors import one_line

# (row name, module to find, distributions that provide it, the edgerep extra that installs it)
PACKAGES: tuple[tuple[str, str, tuple[str, ...], str | None], ...] = (
    ("torch", "torch", ("torch",), None),
    ("onnx", "onnx", ("onnx",), None),
    ("onnxsim", "onnxsim", ("onnxsim", "onnx-simplifier"), None),
    ("onnxslim", "onnxslim", ("onnxslim",), "slim"),
    ("onnxruntime", "onnxruntime", ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"), "onnxruntime"),
    ("openvino", "openvino", ("openvino",), "openvino"),
    ("nncf", "nncf", ("nncf",), "openvino"),
    ("timm", "timm", ("timm",), "timm"),
    ("ultralytics", "ultralytics", ("ultralytics",), "ultralytics"),
    ("ray", "ray", ("ray",), "ray"),
    # JetPack installs tensorrt as a Debian package (python3-libnvinfer): no pip metadata, __version__ instead.
    ("tensorrt", "tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11"), "tensorrt"),
    ("pycuda", "pycuda", ("pycuda",), "tensorrt"),
)
NVIDIA_SMI_TIMEOUT_S = 1.0


@dataclass
class PackageRow:
    name: str
    status: str  # ok (imported fine) | installed (found, not imported) | missing | broken
    version: str | None
    detail: str
    seconds: float



def _dist_version(dists: tuple[str, ...]) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


# --- what the imported runtimes say ---------------------------------------------------------------------------


def _onnxruntime_detail() -> tuple[str, str | None]:
    import onnxruntime

    return "providers: " + ", ".join(onnxruntime.get_available_providers()), getattr(onnxruntime, "__version__", None)


def _openvino_detail() -> tuple[str, str | None]:
    import openvino

    core = openvino.Core()
    devices = []
    for dev in core.available_devices:
        try:
            devices.append(f"{dev} ({core.get_property(dev, 'FULL_DEVICE_NAME')})")
        except Exception:  # a device that cannot describe itself is still a device
            devices.append(dev)
    return "devices: " + (", ".join(devices) or "none"), None


def _tensorrt_detail() -> tuple[str, str | None]:
    import tensorrt

    return "loads", getattr(tensorrt, "__version__", None)


def _pycuda_detail() -> tuple[str, str | None]:
    import pycuda.driver as cuda

    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # imported, but no driver or no device
        return f"no usable CUDA device ({one_line(exc)})", None
    names = [cuda.Device(i).name() for i in range(count)]
    return f"{count} CUDA device(s)" + (f": {', '.join(names)}" if names else ""), None


def _torch_detail() -> tuple[str, str | None]:
    """torch's CUDA build from torch/version.py, read as text: importing torch takes seconds."""
    spec = importlib.util.find_spec("torch")
    locations = spec.submodule_search_locations if spec else None
    folder = locations[0] if locations else None
    values: dict[str, Any] = {}
    if folder and (Path(folder) / "version.py").is_file():
        for node in ast.parse((Path(folder) / "version.py").read_text()).body:
            target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
            value = getattr(node, "value", None)
            if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
                values[target.id] = value.value
    build = (f"CUDA {values['cuda']} build" if values.get("cuda") else
             f"ROCm {values['hip']} build" if values.get("hip") else "CPU-only build")
    return f"{build} (not imported)", None


PROBES: dict[str, Callable[[], tuple[str, str | None]]] = {
    "onnxruntime": _onnxruntime_detail, "openvino": _openvino_detail, "tensorrt": _tensorrt_detail,
    "pycuda": _pycuda_detail, "torch": _torch_detail,
}


def probe_package(name: str, module: str, dists: tuple[str, ...], extra: str | None) -> PackageRow:
    """One package: installed or not (and how to get it), its version, and, for the runtimes, what it offers."""
    t0 = time.perf_counter()
    version = _dist_version(dists)
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:  # a broken parent package or a half-removed module
        return PackageRow(name, "broken", version, one_line(exc), time.perf_counter() - t0)
    if spec is None:
        how = f"pip install 'edgerep[{extra}]'" if extra else f"pip install {dists[0]}"
        if name == "tensorrt":
            how += " (on a Jetson: JetPack's python3-libnvinfer); without it TensorRT targets build a device bundle"
        detail = "not installed; " + how + (" (metadata present, module missing: reinstall)" if version else "")
        return PackageRow(name, "missing", version, detail, time.perf_counter() - t0)
    if spec.origin in (None, "namespace"):  # a folder without __init__.py, e.g. what tensorrt-stubs installs
        where = ", ".join(spec.submodule_search_locations or [])
        how = f"pip install 'edgerep[{extra}]'" if extra else f"pip install {dists[0]}"
        return PackageRow(name, "missing", version, f"only a namespace folder ({where}; type stubs?), not the "
                                                     f"package; {how}", time.perf_counter() - t0)
    probe = PROBES.get(name)
    if probe is None:
        return PackageRow(name, "installed", version, "", time.perf_counter() - t0)
    try:
        detail, module_version = probe()
    except Exception as exc:  # noqa: BLE001 - any failure of a runtime is a finding, not a crash
        return PackageRow(name, "broken", version, one_line(exc), time.perf_counter() - t0)
    status = "installed" if name == "torch" else "ok"
    return PackageRow(name, status, version or module_version, detail, time.perf_counter() - t0)


# --- hardware ---------------------------------------------------------------------------------------------------


def probe_cpu() -> dict[str, Any]:
    from edgerep.cpu.isa import host_cpu

    t0 = time.perf_counter()
    try:
        info: dict[str, Any] = host_cpu().to_dict()
    except Exception as exc:  # noqa: BLE001 - py-cpuinfo missing or unreadable: say so
        info = {"error": one_line(exc)}
    info["cores"] = os.cpu_count()
    info["seconds"] = time.perf_counter() - t0
    return info


def probe_gpus() -> dict[str, Any]:
    """NVIDIA GPUs as nvidia-smi lists them (if it is on PATH), and whether this is a Jetson."""
    t0 = time.perf_counter()
    found: dict[str, Any] = {"nvidia_smi": shutil.which("nvidia-smi"), "gpus": [], "jetson": None, "error": None}
    if found["nvidia_smi"]:
        try:
            proc = subprocess.run([found["nvidia_smi"], "--query-gpu=name,driver_version,memory.total",
                                   "--format=csv,noheader"], capture_output=True, text=True,
                                  timeout=NVIDIA_SMI_TIMEOUT_S)
            if proc.returncode == 0:
                found["gpus"] = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
            else:
                said = (proc.stderr or proc.stdout).strip()  # e.g. "NVIDIA-SMI has failed ... driver"
                found["error"] = said.splitlines()[0][:200] if said else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            found["error"] = f"nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT_S:g} s"
        except OSError as exc:
            found["error"] = one_line(exc)
    release = Path("/etc/nv_tegra_release")
    if release.is_file():  # Jetsons have no nvidia-smi (before JetPack 6) but this file
        try:
            found["jetson"] = release.read_text().splitlines()[0].strip()
        except (OSError, IndexError):
            found["jetson"] = "present"
    found["seconds"] = time.perf_counter() - t0
    return found


# --- which shipped targets build here ---------------------------------------------------------------------------


def target_rows(packages: dict[str, PackageRow]) -> list[dict[str, Any]]:
    """Each shipped profile: builds engines here (yes), builds a device bundle (bundle), or cannot (no), and why."""
    from edgerep.targets import list_targets

    def usable(name: str) -> bool:
        return packages[name].status in ("ok", "installed")

    rows = []
    for prof in list_targets():
        if prof.backend == "openvino":
            if not usable("openvino"):
                can, why = "no", packages["openvino"].detail
            elif "int8" in prof.precisions and not usable("nncf"):
                can, why = "partly", "fp32/fp16 only: INT8 needs nncf (pip install 'edgerep[openvino]')"
            else:
                can, why = "yes", packages["openvino"].detail
        elif prof.backend == "onnxruntime":
            can, why = ("yes", packages["onnxruntime"].detail) if usable("onnxruntime") else \
                ("no", packages["onnxruntime"].detail)
        elif prof.backend == "tensorrt":
            cuda = packages["pycuda"]
            gpu_ok = cuda.status == "ok" and not cuda.detail.startswith("no usable")
            if usable("tensorrt") and gpu_ok:
                can, why = "yes", f"TensorRT {packages['tensorrt'].version}, {cuda.detail}"
            elif usable("onnxruntime"):
                missing = ("tensorrt" if not usable("tensorrt") else "pycuda" if cuda.status != "ok"
                           else "a CUDA GPU")
                can, why = "bundle", f"no {missing} here: engines are built on the device from a device bundle"
            else:
                can, why = "no", "a device bundle needs onnxruntime (calibration and the Q/DQ prediction)"
        else:
            can, why = "no", f"unknown backend {prof.backend}"
        if prof.unavailable and can != "no":  # listed by the profile, not buildable on this CPU (bf16 without BF16)
            why += "; not built here: " + ", ".join(f"{k} ({v.split(' (')[0]})" for k, v in prof.unavailable.items())
        rows.append({"name": prof.name, "backend": prof.backend, "can_build": can, "detail": why})
    return rows


# --- the command ------------------------------------------------------------------------------------------------


def collect() -> dict[str, Any]:
    """Everything doctor reports, as plain data (the --json output)."""
    from edgerep import __version__

    t0 = time.perf_counter()
    packages = {name: probe_package(name, module, dists, extra) for name, module, dists, extra in PACKAGES}
    cpu = probe_cpu()
    gpus = probe_gpus()
    targets = target_rows(packages)
    return {
        "edgerep": {"version": __version__, "path": str(Path(__file__).resolve().parents[1])},
        "python": {"version": platform.python_version(), "executable": sys.executable,
                   "platform": platform.platform()},
        "packages": {name: asdict(row) for name, row in packages.items()},
        "cpu": cpu,
        "gpus": gpus,
        "targets": targets,
        "seconds": time.perf_counter() - t0,
    }


def run_doctor(*, as_json: bool = False, out: Any = None) -> int:
    """`edgerep doctor`: print the tables (or one JSON object); always exit 0."""
    import json

    report = collect()
    if out is None:
        return 0
    if as_json:
        sys.stdout.write(json.dumps(report, default=str) + "\n")
        return 0
    for table in render(report):
        out.print(table)
    return 0


def render(report: dict[str, Any]) -> list[Any]:
    """Three rich tables: software, hardware, targets."""
    from rich import box
    from rich.markup import escape as esc
    from rich.table import Table

    style = {"ok": "green", "installed": "green", "missing": "yellow", "broken": "red",
             "yes": "green", "partly": "yellow", "bundle": "cyan", "no": "red"}
    sw = Table(title="edgerep doctor", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("component", "status", "version", "detail"):
        sw.add_column(col, no_wrap=col != "detail", overflow="fold")
    sw.add_row("edgerep", "ok", report["edgerep"]["version"], esc(report["edgerep"]["path"]))
    sw.add_row("python", "ok", report["python"]["version"], esc(report["python"]["executable"]))
    for name, row in report["packages"].items():
        sw.add_row(name, f"[{style[row['status']]}]{row['status']}[/]", esc(row["version"] or "-"), esc(row["detail"]))

    hw = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    hw.add_column("hardware", no_wrap=True)
    hw.add_column("what edgerep sees", overflow="fold")
    cpu = report["cpu"]
    if "error" in cpu:
        hw.add_row("CPU", f"[red]{esc(cpu['error'])}[/]")
    else:
        feats = cpu.get("features") or {}
        on = [k for k, v in feats.items() if v]
        hw.add_row("CPU", esc(f"{cpu['brand']} ({cpu['arch']}, {cpu['cores']} cores), ISA {cpu['isa'] or 'below avx2'}"))
        hw.add_row("INT8 features", ", ".join(on) or "none")
        vnni = feats.get("avx512_vnni") or feats.get("avx_vnni") or feats.get("amx")
        hw.add_row("VNNI / AVX-512 / AMX", " / ".join("yes" if x else "no" for x in
                                                      (vnni, feats.get("avx512"), feats.get("amx"))))
        bf16 = ", ".join(k for k, v in (cpu.get("bf16_features") or {}).items() if v) or "none"
        hw.add_row("BF16 / FP16 features", bf16 + (": OpenVINO runs FP32 IRs in bf16 here unless compiled with an engine's "
                                                   "compile.json; edgerep builds bf16 engines" if cpu.get("bf16") else
                                                   ": no BF16 for OpenVINO, FP32 IRs run in f32; no bf16 engines here"))
    gpus = report["gpus"]
    if gpus["gpus"]:
        gpu_text = "; ".join(gpus["gpus"])
    elif gpus["error"]:
        gpu_text = f"nvidia-smi: {gpus['error']}"
    else:
        gpu_text = "none (no nvidia-smi on PATH)" if not gpus["nvidia_smi"] else "none listed by nvidia-smi"
    hw.add_row("GPUs", esc(gpu_text))
    if gpus["jetson"]:
        hw.add_row("Jetson", esc(gpus["jetson"]))

    tg = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("target", "backend", "builds here", "why"):
        tg.add_column(col, no_wrap=col != "why", overflow="fold")
    for row in report["targets"]:
        tg.add_row(row["name"], row["backend"], f"[{style[row['can_build']]}]{row['can_build']}[/]", esc(row["detail"]))
    return [sw, hw, tg]
