"""The device bundle: everything a Jetson (or any GPU box) needs to build and check the TensorRT engines
without PyTorch and without edgerep's build machinery.

    bundle.json          manifest: profile, TensorRT version, engines to build (with their trtexec lines),
                         every file with its sha256, the reference, the host predictions (written last)
    model.onnx           the simplified FP32 ONNX (FP16 and calibrate-mode INT8 engines start here)
    model.qdq.onnx       INT8 Q/DQ in TensorRT's conventions (qdq-mode INT8 engines start here)
    model.fp16.onnx      float16 graph for TensorRT 11+ (strongly typed FP16)
    calib.cache          TensorRT calibration cache (+ calib.cache.json sidecar), calib_ranges.json
    reference.npz        x (inputs), the unfused PyTorch model's outputs: ref (the first), ref1, ref2, ... (the
                         others; bundle.json's reference.outputs maps each key to its ONNX output name), y (labels)
    profile.toml         the target profile
    build.sh             builds the engines with trtexec, guarding the TensorRT version
    README.md            what to do on the device

Files are written atomically one by one and the manifest last; `load_bundle` checks every listed hash,
so a half-written or edited bundle is refused rather than used.
"""
from __future__ import annotations

import json
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgerep.backends.tensorrt.trtexec import (
    ONNX_FP16,
    ONNX_FP32,
    ONNX_QDQ,
    ONNX_REPAIRED,
    engine_name,
    engine_source,
    trtexec_args,
)
from edgerep.backends.tensorrt.versions import (
    Version,
    api_features,
    cache_header,
    parse_version,
    version_code,
    version_spec,
    version_str,
)
from edgerep.errors import UserError

BUNDLE_FORMAT = "edgerep-tensorrt-bundle"
# 2: every model output carried (reference.outputs, output_names); 1 (one output, "ref") still reads
BUNDLE_SCHEMA = 2
READABLE_SCHEMAS = (1, 2)
MANIFEST = "bundle.json"
REFERENCE = "reference.npz"
CHECK_SCRIPT = "check_engine.py"  # standalone engine check for Pythons older than edgerep's (JetPack 4/5)
CACHE, CACHE_RANGES = "calib.cache", "calib_ranges.json"
REFERENCE_MAX_BYTES = 64 << 20  # cap on the reference inputs carried to the device


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @property
    def trt_version(self) -> Version:
        return parse_version(self.manifest["trt_version"])

    def file(self, name: str) -> Path:
        return self.path / name


def file_hash(path: Path) -> str:
    """The manifest's hash of a bundle file: onnx_sha256 for an ONNX model (the hash every engine sidecar
    records as onnx_sha256, whichever path built the engine; the guard compares the two), sha256 otherwise."""
    from edgerep.files.artifacts import file_sha256
    from edgerep.files.onnx_files import onnx_sha256

    return onnx_sha256(path) if Path(path).suffix == ".onnx" else file_sha256(path)


def copy_in(bundle_dir: Path, src: Path, name: str) -> str:
    """Copy `src` into the bundle as `name` atomically (skipped when identical); returns its hash (file_hash)."""
    from edgerep.files.artifacts import atomic_path, file_sha256

    dst = Path(bundle_dir) / name
    if not (dst.is_file() and file_sha256(dst) == file_sha256(src)):
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    return file_hash(dst)


def reference_keys(count: int) -> list[str]:
    """The reference.npz keys of a model's outputs: "ref" for the first (what schema-1 readers read), then
    "ref1", "ref2", ... (positions, since output names need not be valid file names inside an npz)."""
    return ["ref"] + [f"ref{i}" for i in range(1, count)]


def write_reference(bundle_dir: Path, x: np.ndarray, ref: np.ndarray | list[np.ndarray],
                    labels: Any | None) -> str:
    """Write reference.npz: the inputs `x`, every reference output (`ref`: one array or the list in ONNX order),
    and the labels when they are one array (class indices); returns its sha256."""
    from edgerep.files.artifacts import atomic_path

    refs = [ref] if isinstance(ref, np.ndarray) else list(ref)
    arrays: dict[str, np.ndarray] = {"x": np.ascontiguousarray(x, dtype=np.float32)}
    for key, out in zip(reference_keys(len(refs)), refs):
        arrays[key] = np.ascontiguousarray(out, dtype=np.float32)
    y = label_array(labels)
    if y is not None:
        arrays["y"] = y
    dst = Path(bundle_dir) / REFERENCE
    with atomic_path(dst) as tmp:
        with open(tmp, "wb") as f:  # np.savez on a path would append ".npz" to the temporary name
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub reads **kwds as allow_pickle
    return file_hash(dst)


def label_array(labels: Any | None) -> np.ndarray | None:
    """Labels as one int64 array (a classifier's class indices), or None: labels of another kind (a detector's
    boxes per image) are not carried, the device check then scores agreement with the reference only."""
    if labels is None:
        return None
    try:
        arr = np.asarray(labels)
    except (ValueError, TypeError):  # ragged per-image boxes
        return None
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number) or arr.ndim != 1:
        return None
    return arr.astype(np.int64)


def reference_outputs_entry(names: list[str], refs: list[np.ndarray]) -> list[dict[str, Any]]:
    """The manifest's reference.outputs: [{name, key, shape}] in ONNX order."""
    return [{"name": name, "key": key, "shape": list(out.shape)}
            for name, key, out in zip(names, reference_keys(len(refs)), refs)]


def reference_limit(sample_shape: tuple[int, ...], available: int) -> int:
    """How many reference samples to carry: all of them up to REFERENCE_MAX_BYTES of inputs."""
    per = int(np.prod(sample_shape)) * 4
    return max(1, min(available, REFERENCE_MAX_BYTES // max(per, 1)))


def batch_profile(profile: Any) -> tuple[int, int, int] | None:
    """(min, opt, max) batch of the optimization profile a dynamic-batch profile builds, else None.

    Refused with a DLA core: DLA runs static shapes only ("DLA does not support dynamic dimensions, so the
    profile's min, max, and opt values must be equal", TensorRT docs, DLA Supported Layers and Restrictions); a
    min != max profile sends the whole network to the GPU (or fails the build) while the engine says DLA."""
    if not profile.dynamic_batch:
        return None
    dla_core = profile.tensorrt.dla_core
    if dla_core is not None:
        raise UserError(f"--target {profile.source or profile.name}: dynamic_batch = true with dla_core = {dla_core}: "
                        f"the DLA runs static shapes only; set dynamic_batch = false, or drop dla_core (GPU engines)")
    sizes = sorted(set(int(b) for b in profile.latency.batch_sizes) | {1})
    return sizes[0], sizes[len(sizes) // 2], sizes[-1]


def input_profile(input_shape: list[int | None], dynamic: tuple[int, int, int] | None) -> dict[str, list[int]]:
    """The built optimization profile's input shapes {min, opt, max} (bundle.json input.profile): the dynamic
    batch's three sizes, or the static shape three times (a symbolic batch without a profile builds as 1)."""
    dims = [int(d) if d else 1 for d in input_shape]
    if dynamic is None:
        return {"min": list(dims), "opt": list(dims), "max": list(dims)}
    return {k: [b, *dims[1:]] for k, b in zip(("min", "opt", "max"), dynamic)}


def variant_engine_name(precision: str, dla_core: int | None) -> str:
    """model.<precision>.engine on the GPU, model.<precision>.dla<N>.engine on DLA core N."""
    base = engine_name(precision)
    return base if dla_core is None else base[: -len(".engine")] + f".dla{int(dla_core)}.engine"


def engine_plan(profile: Any, version: Version, precisions: list[str], *, input_name: str,
                input_shape: list[int | None], repaired: bool = False) -> list[dict[str, Any]]:
    """One entry per engine to build on the device: its source ONNX, engine file, DLA core and trtexec arguments.

    A profile with a DLA core gets each FP16/INT8 engine twice: on the GPU (model.int8.engine) and on the DLA
    (model.int8.dla0.engine). The DLA can be slower than the GPU, and on Orin the GPU is usually several times
    faster than one DLA, so both are built and checked on the device and the recommendation picks between them
    (recommend.py: same precision, the GPU engine first, the DLA one must be measurably faster)."""
    trt = profile.tensorrt
    dynamic = batch_profile(profile)
    plan = []
    for precision in precisions:
        cores = [None] if precision == "fp32" or trt.dla_core is None else [None, int(trt.dla_core)]
        for core in cores:
            name = variant_engine_name(precision, core)
            args = trtexec_args(version, precision, int8_mode=trt.int8_mode, input_name=input_name,
                                input_shape=[int(d) if d else 1 for d in input_shape], workspace_mb=trt.workspace_mb,
                                dynamic_batch=dynamic, dla_core=core, engine=name,
                                calib_cache=CACHE if precision == "int8" and trt.int8_mode == "calibrate" else None,
                                repaired=repaired)
            plan.append({"precision": precision, "onnx": engine_source(version, precision, trt.int8_mode,
                                                                       repaired=repaired),
                         "engine": name, "dla_core": core, "trtexec": args})
    return plan


def write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> Path:
    from edgerep.files.artifacts import write_json_atomic

    path = Path(bundle_dir) / MANIFEST
    write_json_atomic(path, manifest)
    return path


def new_manifest(profile: Any, version: Version, *, input_name: str, input_shape: list[Any],
                 output_name: str | None, output_names: list[str] | None = None) -> dict[str, Any]:
    from edgerep import __version__

    return {
        "format": BUNDLE_FORMAT, "schema": BUNDLE_SCHEMA, "edgerep_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "profile": profile.to_dict(), "trt_version": version_str(version), "trt_version_code": version_code(version),
        "trt_version_spec": str(profile.tensorrt.version),
        "cache_header": cache_header(version), "int8_mode": profile.tensorrt.int8_mode,
        "input": {"name": input_name, "shape": list(input_shape),
                  "profile": input_profile(list(input_shape), batch_profile(profile))},
        "output_name": output_name,
        "output_names": list(output_names) if output_names else ([output_name] if output_name else []),
        "files": {}, "engines": [], "reference": None, "calibration": None, "predictions": {},
    }


def load_bundle(path: Path) -> Bundle:
    """Read and check a bundle: its manifest, and every listed file against its hash."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"--bundle {path}: not a folder; pass the device bundle folder edgerep build wrote")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"--bundle {path}: no {MANIFEST} in it (an unfinished or foreign folder); re-run edgerep build")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"--bundle {path}: {MANIFEST} is not readable JSON ({exc}); re-run edgerep build") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise UserError(f"--bundle {path}: {MANIFEST} is not an edgerep TensorRT bundle manifest")
    if manifest.get("schema") not in READABLE_SCHEMAS:
        raise UserError(f"--bundle {path}: bundle schema {manifest.get('schema')} (this edgerep reads {BUNDLE_SCHEMA}); "
                        f"use the edgerep version that wrote it ({manifest.get('edgerep_version')})")
    for name, digest in (manifest.get("files") or {}).items():
        f = path / name
        if not f.is_file():
            raise UserError(f"--bundle {path}: {name} is missing; copy the whole bundle folder")
        if file_hash(f) != digest:
            raise UserError(f"--bundle {path}: {name} does not match its hash in {MANIFEST} (changed or truncated); "
                            f"copy the bundle again")
    return Bundle(path=path, manifest=manifest)


def read_reference(bundle: Bundle) -> tuple[Any, np.ndarray, np.ndarray | None]:
    """(a streaming DataSource over the reference inputs, the first reference output, labels)."""
    source, _, refs, labels = read_reference_all(bundle)
    return source, refs[0], labels


def read_reference_all(bundle: Bundle) -> tuple[Any, list[str], list[np.ndarray], np.ndarray | None]:
    """(a streaming DataSource over the reference inputs, output names, every reference output in ONNX order,
    labels). A schema-1 bundle carries one output, "ref", named by the manifest's output_name."""
    from edgerep.data.sources import open_data

    if not bundle.manifest.get("reference") or REFERENCE not in bundle.manifest.get("files", {}):
        raise UserError(f"--bundle {bundle.path}: it carries no reference outputs (the build stopped before "
                        f"validation); re-run edgerep build on the host")
    ref_path = bundle.file(REFERENCE)
    entries = bundle.manifest["reference"].get("outputs") or [
        {"name": bundle.manifest.get("output_name") or "output", "key": "ref"}]
    with np.load(ref_path, allow_pickle=False) as data:
        missing = [e["key"] for e in entries if e["key"] not in data.files]
        if missing:
            raise UserError(f"--bundle {bundle.path}: {REFERENCE} lacks the reference output(s) {missing} that "
                            f"{MANIFEST} lists; re-run edgerep build on the host")
        refs = [np.asarray(data[e["key"]], dtype=np.float32) for e in entries]
        labels = np.asarray(data["y"]) if "y" in data.files else None
    source = open_data(ref_path, None, role="val")
    return source, [str(e["name"]) for e in entries], refs, labels


# --- build.sh and README -------------------------------------------------------------------------


def build_script(manifest: dict[str, Any]) -> str:
    """A bash script that builds every engine of the manifest with trtexec on the device.

    It takes the device's TensorRT version from the library that will load the cache (the `tensorrt` Python
    package JetPack installs, else the libnvinfer Debian package), not from trtexec's banner: the banner's
    "[TensorRT v8502]" is NV_TENSORRT_VERSION as trtexec was compiled (samples/common/logging.h, release/8.5
    and release/10.3), which need not be the libnvinfer loaded. It refuses a version outside the profile's
    ("8.5": any 8.5.x, "10": any 10.x; the ONNX was linted for it) and re-heads the host-made calibration
    cache for the exact version (its scales are version-independent). That matters: trtexec's calibrator
    allocates no input buffers when a cache file is given (RndInt8Calibrator in samples/common/sampleEngines.cpp,
    release/8.5 - 10.3), so a cache TensorRT rejects makes the build fail ("Tensor "input" is bound to nullptr",
    NVIDIA/Deep-Learning-Accelerator-SW#26 with a TRT-8600 header on 10.3) instead of recalibrating.
    It writes a sidecar beside each engine."""
    version = parse_version(manifest["trt_version"])
    major, minor = version_spec(str(manifest.get("trt_version_spec") or version_str(version)))
    want_major, want_minor = major, ('""' if minor is None else minor)
    lines = [
        "#!/usr/bin/env bash",
        f"# Builds the TensorRT engines of this bundle on the device (edgerep {manifest.get('edgerep_version')},",
        f"# profile {manifest['profile']['name']}, TensorRT {version_str(version)}). Usage: bash build.sh [precision ...]",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
        'if [ ! -x "$TRTEXEC" ]; then',
        '  echo "error: trtexec not found; set TRTEXEC=/path/to/trtexec (JetPack: /usr/src/tensorrt/bin/trtexec)" >&2; exit 2',
        "fi",
        "# The TensorRT library's version (the cache header must name it): the tensorrt Python package, else the",
        "# libnvinfer package; trtexec's banner is only its compile-time NV_TENSORRT_VERSION, the last resort.",
        "# Codes: 8.x MAJOR*1000+MINOR*100+PATCH, 10+ MAJOR*10000+MINOR*100+PATCH (NvInferVersion.h).",
        'DEVICE_CODE="${DEVICE_CODE:-}"',
        'if [ -z "$DEVICE_CODE" ]; then',
        '  DEVICE_CODE="$(python3 -c \'import tensorrt; print(tensorrt.__version__)\' 2>/dev/null || true)"',
        "fi",
        'if [ -z "$DEVICE_CODE" ] && command -v dpkg-query >/dev/null 2>&1; then',
        "  DEVICE_CODE=\"$(dpkg-query -W -f='${Version}\\n' 'libnvinfer[0-9]*' 2>/dev/null"
        " | grep -o '^[0-9][0-9.]*' | head -n 1 || true)\"",
        "fi",
        'if [ -z "$DEVICE_CODE" ]; then',
        '  BANNER="$("$TRTEXEC" --help 2>&1 | grep -o "TensorRT v[0-9.]*" | head -n 1 || true)"',
        '  DEVICE_CODE="${BANNER#TensorRT v}"',
        '  [ -z "$DEVICE_CODE" ] || echo "warning: TensorRT version taken from trtexec\'s banner ($DEVICE_CODE), its'
        ' build-time version" >&2',
        "fi",
        'if [ -z "$DEVICE_CODE" ]; then',
        '  echo "error: cannot tell the TensorRT version (no tensorrt Python package, no libnvinfer package, no trtexec'
        ' banner); set DEVICE_CODE=<version, e.g. 8.5.2>" >&2; exit 2',
        "fi",
        'case "$DEVICE_CODE" in *.*) IFS=. read -r MA MI PA _ <<<"$DEVICE_CODE"; PA="${PA:-0}";',
        '  if [ "$MA" -ge 10 ]; then DEVICE_CODE=$((MA*10000+MI*100+PA)); else DEVICE_CODE=$((MA*1000+MI*100+PA)); fi;; esac',
        "DEV_MAJOR=$(( DEVICE_CODE >= 100000 ? DEVICE_CODE / 10000 : DEVICE_CODE / 1000 ))",
        "DEV_MINOR=$(( DEVICE_CODE >= 100000 ? DEVICE_CODE / 100 % 100 : DEVICE_CODE / 100 % 10 ))",
        f"WANT_MAJOR={want_major}; WANT_MINOR={want_minor}  # the profile's TensorRT version: {manifest.get('trt_version_spec')}",
        'if [ "$DEV_MAJOR" != "$WANT_MAJOR" ] || { [ -n "$WANT_MINOR" ] && [ "$DEV_MINOR" != "$WANT_MINOR" ]; }; then',
        f'  echo "error: this device has TensorRT $DEV_MAJOR.$DEV_MINOR ($DEVICE_CODE), the bundle is for TensorRT '
        f'{manifest.get("trt_version_spec")};" >&2',
        '  echo "       run edgerep build with a profile for this TensorRT version" >&2; exit 2',
        "fi",
        'WANT="${*:-ALL}"',
        "want() { [ \"$WANT\" = ALL ] || [[ \" $WANT \" == *\" $1 \"* ]]; }",
    ]
    if CACHE in manifest.get("files", {}):
        lines += [
            "# The cache's scales come from ONNX Runtime on the host: re-head it for this exact TensorRT version.",
            f'sed "1s/.*/TRT-$DEVICE_CODE-EntropyCalibration2/" {CACHE} > calib.device.cache',
        ]
    for eng in manifest["engines"]:
        args = [a.replace(f"--calib={CACHE}", "--calib=calib.device.cache") for a in eng["trtexec"]]
        cmd = " ".join(shlex.quote(a) for a in args)
        p, engine = eng["precision"], eng["engine"]
        lines += [
            f"if want {p}; then",
            f'  echo "building {engine} from {eng["onnx"]} ..."',
            f'  "$TRTEXEC" {cmd} --verbose > {engine}.build.log 2>&1 || '
            f'{{ echo "error: trtexec failed for {p}; see {engine}.build.log" >&2; exit 1; }}',
            f"  write_sidecar {p} {engine} {eng['onnx']}",
            f'  echo "built {engine}; check it: {device_check_command(manifest, engine)}"',
            "fi",
        ]
    sidecar_py = _SIDECAR_PY.replace("__INT8_MODE__", manifest["int8_mode"])
    func = ["write_sidecar() {", "  DEVICE_CODE=\"$DEVICE_CODE\" python3 - \"$@\" <<'PY'", sidecar_py.rstrip(), "PY", "}"]
    # the function must exist before it is called
    head, body = lines[:lines.index('WANT="${*:-ALL}"')], lines[lines.index('WANT="${*:-ALL}"'):]
    return "\n".join(head + func + body) + "\n"


# JetPack 6 ships Python 3.10, edgerep's minimum; JetPack 4 (3.6) and 5 (3.8) run the standalone check instead.
EDGEREP_JETPACK = 6


def edgerep_runs_on_device(manifest: dict[str, Any]) -> bool:
    """Whether edgerep can be installed on the profile's device: a JetPack from EDGEREP_JETPACK on (its Python
    is >= 3.10), or no JetPack at all (a desktop or server GPU, whatever Python the user brings)."""
    jetpack = str((manifest.get("profile") or {}).get("tensorrt", {}).get("jetpack") or "")
    try:
        return not jetpack or int(jetpack.split(".")[0]) >= EDGEREP_JETPACK
    except ValueError:
        return True


def device_check_command(manifest: dict[str, Any], engine: str) -> str:
    """The command that checks `engine` on the device: edgerep validate where edgerep installs, else the
    bundle's standalone check_engine.py (numpy, tensorrt and pycuda or cuda-python only)."""
    if edgerep_runs_on_device(manifest):
        return f"edgerep validate --bundle . --engine {engine}"
    return f"python3 {CHECK_SCRIPT} {engine}"


# A stdlib-only sidecar writer (the device may have neither edgerep nor numpy): the same fields and the
# same artifact hash as edgerep.files.artifacts.write_sidecar, plus the DLA/GPU layer split from the build log.
_SIDECAR_PY = r'''
import ctypes, hashlib, json, os, re, subprocess, sys, time
precision, engine, onnx = sys.argv[1:4]
def sha(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()
art = hashlib.sha256(engine.encode() + b"\0" + bytes.fromhex(sha(engine))).hexdigest()
code = int(os.environ["DEVICE_CODE"])
ver = (code // 10000, code // 100 % 100, code % 100) if code >= 100000 else (code // 1000, code // 100 % 10, code % 100)
def cuda_gpu():
    # the CUDA driver itself (libcuda ships with every JetPack and driver), as pycuda and cuda-python read it:
    # cuDeviceGetName ("Orin") and the compute capability (attributes 75/76 of CUdevice_attribute)
    lib = ctypes.CDLL("libcuda.so.1")
    dev, major, minor, name = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.create_string_buffer(256)
    if lib.cuInit(0) or lib.cuDeviceGet(ctypes.byref(dev), 0) or lib.cuDeviceGetName(name, 256, dev):
        raise RuntimeError("CUDA driver call failed")
    if lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev) or lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev):
        raise RuntimeError("CUDA driver call failed")
    return name.value.decode("utf-8", "replace"), "%d.%d" % (major.value, minor.value)
gpu = cc = source = None
try:
    gpu, cc = cuda_gpu()
    source = "cuda"
except Exception:
    try:
        import pycuda.driver as cuda
        cuda.init(); dev = cuda.Device(0); gpu = dev.name(); cc = "%d.%d" % dev.compute_capability()
        source = "cuda"
    except Exception:
        pass
if gpu is None:
    try:
        # check_output(universal_newlines=...), not run(capture_output=, text=): those need Python 3.7 and
        # JetPack 4 has 3.6. An nvidia-smi without the compute_cap field fails: then the name alone.
        for query in ("name,compute_cap", "name"):
            try:
                out = subprocess.check_output(["nvidia-smi", "--query-gpu=" + query, "--format=csv,noheader"],
                                              stderr=subprocess.DEVNULL, universal_newlines=True,
                                              timeout=20).strip().splitlines()
            except subprocess.CalledProcessError:
                continue
            if out:
                parts = [x.strip() for x in out[0].split(",")]
                gpu, cc, source = parts[0], (parts[1] if len(parts) > 1 else None), "nvidia-smi"
                break
    except Exception:
        pass
model = os.environ.get("EDGEREP_DEVICE_TREE_MODEL", "/proc/device-tree/model")
if gpu is None and os.path.exists(model):
    gpu, source = open(model).read().strip("\x00\n "), "device-tree"
dla, gpu_layers = [], []
if os.path.exists(engine + ".build.log"):
    # TensorRT's builder log: "[I] [TRT] [DlaLayer] {ForeignNode[...]}" / "[GpuLayer] POOLING: ...", at INFO
    # on 8.x and possibly VERBOSE ("[V]") on 10.x: build.sh runs trtexec --verbose, the pattern takes both
    for line in open(engine + ".build.log", errors="replace"):
        m = re.search(r"\[(DlaLayer|GpuLayer)\]\s*(.*)", line)
        if m:
            (dla if m.group(1) == "DlaLayer" else gpu_layers).append(m.group(2).strip())
manifest = json.load(open("bundle.json"))
entry = [e for e in manifest.get("engines", []) if e.get("engine") == engine]
if entry and "dla_core" in entry[0]:
    dla_core = entry[0]["dla_core"]  # per engine: a DLA profile builds GPU and DLA variants
else:
    dla_core = manifest["profile"].get("tensorrt", {}).get("dla_core") if precision != "fp32" else None
body = {"schema": 1, "artifact": engine, "files": [engine], "artifact_sha256": art,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "kind": "tensorrt-engine", "backend": "tensorrt",
        "precision": precision, "trt_version": "%d.%d.%d" % ver, "gpu_name": gpu, "gpu_name_source": source,
        "compute_capability": cc,
        # the manifest's hash of the source ONNX: bundle.file_hash, i.e. onnx_sha256, as edgerep's own sidecars
        "opset": manifest["profile"].get("opset"), "onnx": onnx, "onnx_sha256": manifest["files"].get(onnx),
        "calib_sha256": (manifest.get("calibration") or {}).get("data_sha256") if precision == "int8" else None,
        "int8_mode": "__INT8_MODE__" if precision == "int8" else None,
        "dla_core": dla_core,
        # With a DLA core asked for, every GPU layer is a fallback, also when none landed on the DLA
        "dla_layers": dla, "gpu_fallback_layers": gpu_layers if dla_core is not None else [],
        "built_by": "trtexec (bundle build.sh)", "target": manifest["profile"]["name"]}
tmp = engine + ".json.partial-%d" % os.getpid()
json.dump(body, open(tmp, "w"), indent=2)
os.replace(tmp, engine + ".json")
'''


def readme(manifest: dict[str, Any]) -> str:
    version = parse_version(manifest["trt_version"])
    prof = manifest["profile"]
    feats = api_features(version)
    rows = "\n".join(f"| {e['precision']} | {_device(e)} | `{e['onnx']}` | `{e['engine']}` |" for e in manifest["engines"])
    pred = manifest.get("predictions") or {}
    pred_lines = "\n".join(
        f"- {k}: {v.get('backend')} on the host CPU: cosine {_fmt(v.get('accuracy', {}).get('cosine'))}, "
        f"top-1 agreement {_fmt(v.get('accuracy', {}).get('top1_agreement'))}%, "
        f"top-1 {_fmt(v.get('accuracy', {}).get('top1'))}%" for k, v in pred.items()) or "- (none)"
    steps = [
        f"# TensorRT bundle for `{prof['name']}`",
        "",
        f"{prof.get('description', '')}",
        "",
        f"Made on a machine without TensorRT/GPU: the engines must be built on the device, which must run "
        f"TensorRT {version.__getitem__(0)}.{version[1]}.x (the ONNX was checked against that version's parser; "
        f"JetPack {prof.get('tensorrt', {}).get('jetpack') or '-'}).",
        "",
        "| precision | runs on | built from | engine |",
        "|---|---|---|---|",
        rows,
        "",
        "## On the device",
        "",
        "TensorRT comes from JetPack (`sudo apt install python3-libnvinfer`; `tensorrt` on the system Python), not",
        "from PyPI: do not `pip install tensorrt` or `'edgerep[tensorrt]'` on a Jetson (PyPI's wheels are for x86-64",
        "and SBSA servers and shadow JetPack's package). A venv must be made with `--system-site-packages` to see it.",
        "First ask the device what it is missing (TensorRT and CUDA versions against this bundle, trtexec, memory",
        "and swap, DLA cores, power mode; one line per finding with what to do):",
        "",
        "```bash",
        f"python3 {CHECK_SCRIPT} --doctor",
        "bash build.sh                 # every engine; or: bash build.sh fp16",
        "```",
        "",
        "The checks need a CUDA binding: cuda-python is a wheel (pip install cuda-python==12.* on JetPack 6, ==11.* on",
        "JetPack 5; NVIDIA's samples use it from TensorRT 10.14); pycuda has no Jetson wheel and compiles on",
        "install, which needs the CUDA compiler on the PATH first:",
        "`export PATH=/usr/local/cuda/bin:$PATH CPATH=/usr/local/cuda/include LIBRARY_PATH=/usr/local/cuda/lib64`",
        "then `pip install pycuda` (JetPack 4's CUDA 10.2 has no cuda-python).",
        "",
        "With JetPack 6 (Python 3.10, edgerep's minimum):",
        "",
        "```bash",
        "python3 -m venv --system-site-packages ~/edgerep && . ~/edgerep/bin/activate",
        "pip install --no-deps ./edgerep && pip install numpy typer rich onnx   # no PyTorch",
        *[f"edgerep validate --bundle . --engine {e['engine']}" for e in manifest["engines"]],
        "```",
        "",
        "On JetPack 4/5 (Python 3.6/3.8, older than edgerep needs), check the engines with the standalone script",
        "(numpy, tensorrt and pycuda or cuda-python only; exit 1 when an engine misses its gate):",
        "",
        "```bash",
        *[f"python3 {CHECK_SCRIPT} {e['engine']}" for e in manifest["engines"]],
        "```",
        "",
        "Given several engines at once, it ends with the one to ship on this device (recommend.py's rule: the",
        "fastest that passes its gate; a lower precision, or the DLA over the GPU at one precision, must be at",
        "least 5% faster to be preferred):",
        "",
        "```bash",
        f"python3 {CHECK_SCRIPT} " + " ".join(e["engine"] for e in manifest["engines"]),
        "```",
        "",
        "`build.sh` reads the device's TensorRT version from the library (`python3 -c 'import tensorrt'`, else the",
        "libnvinfer package; trtexec's banner last), refuses another major.minor, and re-heads `calib.cache` for the",
        "exact version (its scales were computed on the host by ONNX Runtime and do not depend on the TensorRT",
        "version; TensorRT rejects a cache whose header names another version, and trtexec then fails the build).",
        "Each engine gets a sidecar `<engine>.json` (TensorRT version, GPU, precision, hashes, and DLA/GPU layers",
        "from the build log); `edgerep validate --bundle` refuses an engine whose sidecar does not match the running",
        "TensorRT and GPU, and compares its outputs with `reference.npz` (the unfused PyTorch model's outputs).",
        "",
        "## Host predictions",
        "",
        pred_lines,
        "",
        "## trtexec commands",
        "",
        "```",
        *[f"trtexec {' '.join(e['trtexec'])}" for e in manifest["engines"]],
        "```",
        "",
        f"INT8 mode: `{manifest['int8_mode']}`"
        + (" (implicit quantization with `calib.cache`)" if manifest["int8_mode"] == "calibrate"
           else " (explicit Q/DQ in `model.qdq.onnx`; the scales are in the graph)"),
        "" if feats.calibrators else ("TensorRT 11+: no calibrators; FP16 comes from `model.fp16.onnx`, INT8 from "
                                      "`model.qdq.onnx`."),
    ]
    return "\n".join(steps) + "\n"


def _device(entry: dict[str, Any]) -> str:
    core = entry.get("dla_core")
    return "GPU" if core is None else f"DLA {core} (GPU fallback)"


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def write_text(bundle_dir: Path, name: str, text: str, *, executable: bool = False) -> str:
    from edgerep.files.artifacts import atomic_path

    dst = Path(bundle_dir) / name
    with atomic_path(dst) as tmp:
        tmp.write_text(text, encoding="utf-8")
        if executable:
            tmp.chmod(0o755)
    return file_hash(dst)


__all__ = ["Bundle", "BUNDLE_FORMAT", "CACHE", "CACHE_RANGES", "MANIFEST", "ONNX_FP16", "ONNX_FP32", "ONNX_QDQ",
           "ONNX_REPAIRED",
           "REFERENCE", "batch_profile", "build_script", "copy_in", "device_check_command", "engine_plan",
           "input_profile", "variant_engine_name", "label_array", "load_bundle", "new_manifest",
           "read_reference", "read_reference_all", "readme", "reference_keys", "reference_limit",
           "reference_outputs_entry", "write_manifest", "write_reference", "write_text"]
