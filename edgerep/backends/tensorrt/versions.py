"""TensorRT version facts: parsing, the version number in calibration-cache headers, which API each
version has, the ONNX parser's operator table per version, and the JetPack table.

Sources (copied into edgerep, never read from elsewhere at run time):
  * NVIDIA/TensorRT release/X python bindings (pyCore.cpp, pyInt8.cpp) and NvInfer*.h deprecation notes,
    summarised per call in the API matrix below;
  * onnx/onnx-tensorrt docs/operators.md at the commits NVIDIA's release branches pin
    (edgerep/backends/tensorrt/data/onnx_parser_ops.json, each table with its `source`);
  * NVIDIA's JetPack pages and TensorRT docs for JetPack -> TensorRT (JETPACK below, each row with its source).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgerep.errors import UserError

Version = tuple[int, int, int]

# Patch releases the Jetson profiles ship (JetPack pages: 4.6 -> 8.0.1, 4.6.1/4.6.2 -> 8.2.1,
# 5.0.2 -> 8.4.1, 5.1.x -> 8.5.2, 6.1/6.2 -> 10.3.0, 7.1 -> 10.13.3; 8.6.1 is TensorRT OSS release/8.6, the
# desktop 8.6; JetPack 6.0's 8.6.2 is written out in full where it matters). The patch matters for the
# calibration-cache header, which TensorRT compares with its own version.
KNOWN_PATCH: dict[tuple[int, int], int] = {(8, 0): 1, (8, 2): 1, (8, 4): 1, (8, 5): 2, (8, 6): 1, (10, 3): 0,
                                           (10, 13): 3}

# ONNX opsets the Q/DQ models need: QuantizeLinear/DequantizeLinear take an `axis` (per-channel scales) from
# opset 13, and float16 scales and inputs from opset 19 (onnx/onnx docs/Operators.md, QuantizeLinear-13 and -19:
# T1 gains tensor(float16); NVIDIA ModelOpt's autocast.convert_to_f16 says "Opset 19 is the first to support fp16
# scales in Q/DQ nodes"). TensorRT 11 builds INT8 from a Q/DQ graph whose float parts are FP16, so it needs 19.
PER_CHANNEL_QDQ_MIN_OPSET = 13
FP16_QDQ_MIN_OPSET = 19

def parse_version(text: str | tuple[int, ...], *, what: str = "TensorRT version") -> Version:
    """'8.5' -> (8, 5, p) with the patch the Jetson release ships (else 0); '8.5.2.2' -> (8, 5, 2);
    '10.x' or '10' -> (10, 0, 0), the oldest of that major (the conservative choice for lint)."""
    if isinstance(text, tuple):
        parts = list(text)
    else:
        m = re.fullmatch(r"\s*(\d+)(?:\.(\d+|x|\*))?(?:\.(\d+))?(?:\.\d+)*\s*", str(text))
        if not m:
            raise UserError(f"{what} {text!r}: expected MAJOR.MINOR[.PATCH], e.g. 8.5 or 10.3.0")
        major = int(m.group(1))
        minor = int(m.group(2)) if m.group(2) and m.group(2).isdigit() else None
        patch = int(m.group(3)) if m.group(3) else None
        if minor is None:
            return (major, 0, 0)
        parts = [major, minor] + ([patch] if patch is not None else [])
    major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    patch = int(parts[2]) if len(parts) > 2 else KNOWN_PATCH.get((major, minor), 0)
    return (major, minor, patch)


def version_spec(spec: str) -> tuple[int, int | None]:
    """A profile's version prefix as (major, minor or None): "8.5" -> (8, 5), "10" or "10.x" -> (10, None).
    The one reading of the rule: Python matching (version_matches) and build.sh's bash test both start here."""
    parts = [p for p in str(spec).split(".") if p]
    if not parts or not parts[0].isdigit():
        raise UserError(f"TensorRT version {spec!r}: expected a version like '8.5' or '10'")
    minor = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return int(parts[0]), minor


def version_matches(spec: str, installed: str) -> bool:
    """True when the installed TensorRT falls under the profile's prefix ("8.5" ~ "8.5.2.2", "10" ~ any 10.x);
    components are compared, not strings ("10.3" does not match "10.30.1")."""
    major, minor = version_spec(spec)
    have = [int(p) if p.isdigit() else -1 for p in str(installed).split(".")]
    return have[:1] == [major] and (minor is None or have[1:2] == [minor])


def version_str(v: Version) -> str:
    return ".".join(map(str, v))


def version_code(v: Version) -> int:
    """NV_TENSORRT_VERSION: MAJOR*1000+MINOR*100+PATCH before 10 (NvInferRuntimeBase.h, release/8.6),
    MAJOR*10000+MINOR*100+PATCH from 10.0 (NvInferVersion.h, release/10.3): 8.5.2 -> 8502, 10.3.0 -> 100300."""
    major, minor, patch = v
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def code_to_versions(code: int | str) -> list[Version]:
    """The version a header number means, as a list: [] for a number TensorRT never writes. TensorRT < 10 writes
    4 digits (MAJOR*1000+MINOR*100+PATCH, majors 1-9), TensorRT >= 10 writes 6 digits (MAJOR*10000+MINOR*100+PATCH;
    third-party caches show TRT-100300-... for 10.3 and TRT-101300-... for 10.13). A 5-digit number such as 10300
    is a 10.x version written with the 8.x rule, which TensorRT 10 rejects, so it names no version. Given as text,
    leading zeros count as digits ("08502" is 5 digits)."""
    digits = str(code) if isinstance(code, str) else str(int(code))
    if not digits.isdigit():
        return []
    value = int(digits)
    if len(digits) == 4 and value >= 1000:
        return [(value // 1000, (value // 100) % 10, value % 100)]
    if len(digits) == 6 and value >= 100000:
        return [(value // 10000, (value // 100) % 100, value % 100)]
    return []


CACHE_HEADER_RE = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")


def cache_header(v: Version, algorithm: str = "EntropyCalibration2") -> str:
    """First line of a calibration cache: 'TRT-<NV_TENSORRT_VERSION>-<algorithm>' (NVIDIA release/8.0
    samples/sampleINT8/README.md). trtexec's --calib and our device calibrator are EntropyCalibrator2,
    so the algorithm stays EntropyCalibration2 whatever method found the ranges (recorded in the sidecar)."""
    return f"TRT-{version_code(v)}-{algorithm}"


def parse_cache_header(line: str) -> tuple[int, list[Version], str]:
    m = CACHE_HEADER_RE.match(line.strip())
    if not m:
        raise ValueError(f"not a TensorRT calibration cache header: {line.strip()[:60]!r}")
    return int(m.group(1)), code_to_versions(m.group(1)), m.group(2)


# --- the Python API per version ------------------------------------------------------------------


@dataclass(frozen=True)
class ApiFeatures:
    """Which builder/runtime calls the installed TensorRT has (the API matrix per release, from the py@X bindings:
    data/names-*.json)."""

    version: Version
    explicit_batch_flag: bool  # NetworkDefinitionCreationFlag.EXPLICIT_BATCH needed (8.x); ignored in 10, gone in 11
    strongly_typed_flag: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED bound (9.0 .. 10.x); 11: always on
    always_strongly_typed: bool  # 11+: weak typing (precision flags, calibrators) removed
    precision_flags: bool  # BuilderFlag.FP16 / INT8 present (< 11)
    precision_flags_deprecated: bool  # deprecated from 10.12 (superseded by strong typing)
    calibrators: bool  # IInt8EntropyCalibrator2, config.int8_calibrator (< 11)
    calibrators_deprecated: bool  # deprecated from 10.1
    memory_pool_limit: bool  # config.set_memory_pool_limit (8.4+)
    max_workspace_size: bool  # config.max_workspace_size (8.x only; the only option before 8.4)
    tensor_api: bool  # num_io_tensors / set_tensor_address / execute_async_v3 (8.5+)
    bindings_api: bool  # get_binding_index / execute_async_v2 (removed in 10.0)
    version_compatible: bool  # BuilderFlag.VERSION_COMPATIBLE (8.6+)
    dla: bool  # DLA usable by this release (DLA_SUPPORT)
    layer_info: bool  # engine inspector / --exportLayerInfo (8.2+)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "version"}


def api_features(v: Version) -> ApiFeatures:
    mm = (v[0], v[1])
    return ApiFeatures(
        version=v,
        explicit_batch_flag=mm < (10, 0),
        strongly_typed_flag=(9, 0) <= mm < (11, 0),
        always_strongly_typed=mm >= (11, 0),
        precision_flags=mm < (11, 0),
        precision_flags_deprecated=(10, 12) <= mm < (11, 0),
        calibrators=mm < (11, 0),
        calibrators_deprecated=(10, 1) <= mm < (11, 0),
        memory_pool_limit=mm >= (8, 4),
        max_workspace_size=mm < (10, 0),
        tensor_api=mm >= (8, 5),
        bindings_api=mm < (10, 0),
        version_compatible=mm >= (8, 6),
        dla=dla_support(v)[0],
        layer_info=mm >= (8, 2),
    )


# DLA support per TensorRT release, first match wins: (from, to (exclusive), supported, source).
# Patch-level bounds: 11.4.0 and 11.4.1 differ.
DLA_SUPPORT: list[tuple[Version, Version, bool, str]] = [
    ((8, 0, 0), (9, 0, 0), True,
     "TensorRT 8.x ships in JetPack 4.6 - 5.1 for Xavier/Orin with DLA (JetPack pages; NVIDIA/TensorRT#2222 discusses "
     "DLA on 8.x)"),
    ((9, 0, 0), (10, 0, 0), False,
     "UNCONFIRMED: no JetPack ships TensorRT 9.x (the JetPack table), so no DLA build is known"),
    ((10, 0, 0), (10, 8, 0), True,
     "docs.nvidia.com/deeplearning/tensorrt/11.4.1/inference-library/work-with-dla.html: 'TensorRT 10.7 was the "
     "last 10.x release that supported DLA'; JetPack 6.1/6.2 ship 10.3"),
    ((10, 8, 0), (11, 0, 0), False,
     "same page: 10.7 was the last 10.x release with DLA (JetPack 7.x's 10.13 is for Thor, which has no DLA)"),
    ((11, 0, 0), (11, 4, 0), False,
     "docs .../11.3.0/inference-library/work-with-dla.html: 'DLA was also not supported in TensorRT 11.0, 11.1, or 11.2' "
     "nor 11.3"),
    ((11, 4, 0), (11, 4, 1), False,
     "docs .../11.4.0/inference-library/work-with-dla.html: DLA only on Windows on ARM (beta, no GPU fallback); "
     "not on JetPack"),
    ((11, 4, 1), (99, 0, 0), True,
     "docs .../11.4.1/inference-library/work-with-dla.html and the 11.4.1 release notes: Jetson AGX Orin with JetPack "
     "7.2.2+, strongly typed networks, GPU fallback as in 10.x"),
]


def dla_support(v: Version) -> tuple[bool, str]:
    """(whether TensorRT `v` can build for DLA on a Jetson, the source saying so)."""
    for lo, hi, ok, source in DLA_SUPPORT:
        if lo <= v < hi:
            return ok, source
    return False, "older than TensorRT 8.0: not supported by edgerep"


def int8_modes(v: Version) -> tuple[str, ...]:
    """INT8 modes a version can build: 'calibrate' (implicit quantization with a cache) up to 10.x,
    'qdq' (explicit Q/DQ in the ONNX) from 8.0 on; 11 only has 'qdq'."""
    return ("qdq",) if v[0] >= 11 else ("calibrate", "qdq")


# --- the ONNX parser's operator table ------------------------------------------------------------


@dataclass
class OpsTable:
    """onnx-tensorrt docs/operators.md for one TensorRT version."""

    key: str  # the table used ("8.5", "10.3", ...)
    requested: Version
    max_opset: int | None
    min_opset: int | None
    supported: set[str]
    unsupported: set[str]
    restrictions: dict[str, str]
    int64_native: bool  # INT64 listed among the parser's ONNX data types (10.0+)
    source: str
    notes: list[str] = field(default_factory=list)


def _data_dir() -> Path:
    return Path(__file__).resolve().parent / "data"


@lru_cache(maxsize=1)
def parser_data() -> dict[str, Any]:
    path = _data_dir() / "onnx_parser_ops.json"
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _key_version(key: str) -> tuple[int, int]:
    a, b = key.split(".")
    return int(a), int(b)


def ops_table(v: Version) -> OpsTable:
    """The parser table for version `v`: the exact MAJOR.MINOR table, else the newest older table of the
    same major (a later minor only adds operators), else the newest older table at all."""
    data = parser_data()
    tables: dict[str, Any] = data["versions"]
    want = (v[0], v[1])
    older = sorted((k for k in tables if _key_version(k) <= want), key=_key_version)
    if not older:
        oldest = min(tables, key=_key_version)
        raise UserError(f"TensorRT {version_str(v)}: older than any parser table edgerep knows (oldest {oldest}); "
                        f"use a profile with TensorRT >= {oldest}")
    same_major = [k for k in older if _key_version(k)[0] == v[0]]
    key = (same_major or older)[-1]
    t = tables[key]
    notes: list[str] = []
    if key != f"{v[0]}.{v[1]}":
        notes.append(f"no parser table for TensorRT {v[0]}.{v[1]}; using the {key} table")
    if t.get("derived"):
        notes.append(t.get("note", "derived table"))
    max_opset, min_opset, types = t.get("max_opset"), t.get("min_opset"), t.get("onnx_data_types")
    if max_opset is None:
        # 10.3 is derived from 10.1 (operators.md at the 10.3 pin was not retrievable): take the opset
        # range and data types from the newest older table that states them.
        for k in reversed(older):
            if tables[k].get("max_opset") is not None:
                max_opset, min_opset = tables[k]["max_opset"], tables[k].get("min_opset")
                types = types or tables[k].get("onnx_data_types")
                notes.append(f"opset range taken from the {k} table")
                break
    return OpsTable(
        key=key,
        requested=v,
        max_opset=max_opset,
        min_opset=min_opset,
        supported=set(t.get("supported", [])),
        unsupported=set(t.get("unsupported", [])),
        restrictions=dict(t.get("restrictions", {})),
        int64_native="INT64" in (types or ""),
        source=str(data["source"].get(key, "")),
        notes=notes,
    )


# --- JetPack -> TensorRT ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JetPackRelease:
    """One JetPack release: what it ships, the ONNX opset edgerep exports for it (`opset_cap`, at most the
    parser's maximum) and the parser table lint uses (ops_table(tensorrt).key), with the source of each fact.
    `confirmed` is False where no primary NVIDIA source was found (a lead, kept tolerant in the code)."""

    jetpack: str
    l4t: str
    tensorrt: str  # MAJOR.MINOR.PATCH as shipped
    cuda: str
    python: str
    devices: str
    dla: bool
    opset_cap: int
    profile: str | None  # the shipped targets/*.toml for it, if any
    source: str
    confirmed: bool = True

    @property
    def version(self) -> Version:
        return parse_version(self.tensorrt)

    def parser_table(self) -> str:
        return ops_table(self.version).key


_JP = "developer.nvidia.com/embedded/jetpack-sdk-"
_TRT11_JETSON = ("docs.nvidia.com/deeplearning/tensorrt/11.4.1/api/migration/tensorrt-10x-to-11x-jetson.html: "
                 "'TensorRT 11.4.1 supports NVIDIA JetPack 7.2.2 or later on Jetson AGX Orin and Jetson Thor' (the SBSA "
                 "build), 'TensorRT 11.4.1 also restores DLA support, on Jetson AGX Orin only'; 11.4.1 release notes: "
                 "DLA builds are strongly typed; 11.5.0 page: 11.4.1 'is the latest release that supports NVIDIA JetPack'")
JETPACK: list[JetPackRelease] = [
    JetPackRelease("4.6", "32.6.1", "8.0.1", "10.2", "3.6", "Nano, TX2, Xavier NX, AGX Xavier", True, 13, None,
                   "NVIDIA/TensorRT release/8.2 README: 'JetPack >= 4.6 (current support only for TensorRT 8.0.1)'"),
    JetPackRelease("4.6.1", "32.7.1", "8.2.1", "10.2", "3.6", "Nano, TX2, Xavier NX, AGX Xavier", True, 13,
                   "jetson-nano", _JP + "461"),
    JetPackRelease("4.6.2", "32.7.2", "8.2.1", "10.2", "3.6", "Nano, TX2, Xavier NX, AGX Xavier", True, 13,
                   "jetson-nano", "developer.nvidia.com/embedded/linux-tegra-r3272 (a security update of 32.7.1)", False),
    JetPackRelease("5.0.2", "35.1", "8.4.1", "11.4", "3.8", "Xavier NX, AGX Xavier, Orin", True, 17, None, _JP + "502"),
    JetPackRelease("5.1.x", "35.2.1-35.6.0", "8.5.2", "11.4", "3.8", "Xavier NX, AGX Xavier, Orin", True, 17,
                   "jetson-xavier-nx", _JP + "51, -511, -512, -514 ('same compute stack')"),
    JetPackRelease("6.0", "36.3", "8.6.2", "12.2", "3.10", "Orin", True, 17, None,
                   "UNCONFIRMED (no primary page found; the widely quoted JetPack 6.0 GA component list)", False),
    JetPackRelease("6.1 / 6.2", "36.4", "10.3.0", "12.6", "3.10", "Orin", True, 17, "jetson-agx-orin",
                   "pytorch.org/TensorRT getting_started/jetpack (secondary); DLA: the 11.4.1 DLA page, 10.7 was the "
                   "last 10.x release with DLA", False),
    JetPackRelease("7.0 / 7.1", "38.2 / 38.4", "10.13.3", "13.0", "3.12", "Thor (sm_110)", False, 17, "jetson-thor",
                   "developer.nvidia.com/embedded/jetpack/downloads/archive-7.0 (CUDA 13.0); 7.1's TensorRT 10.13.3 "
                   "quoted from its archive page (NVIDIA/IsaacTeleop PR #1050); Thor has no DLA (11.4.1 DLA page)",
                   False),
    JetPackRelease("7.2.2+", "39.2", "11.4.1", "13.2", "3.12", "AGX Orin (sm_87), Thor", True, 19,
                   "jetson-agx-orin-jp7", _TRT11_JETSON + "; CUDA 13.2 UNCONFIRMED", True),
]


def jetpack_release(jetpack: str) -> JetPackRelease:
    """The JETPACK row whose name is, or covers, `jetpack` ("6.2" -> "6.1 / 6.2", "5.1.3" -> "5.1.x")."""
    want = str(jetpack).strip()
    for row in JETPACK:
        names = [n.strip() for n in row.jetpack.split("/")]
        for name in names:
            base = name.rstrip("+").removesuffix(".x")
            if want == name or want == base or (name.endswith(".x") and want.startswith(base + ".")):
                return row
            if name.endswith("+") and parse_version(want) >= parse_version(base):
                return row
    raise UserError(f"JetPack {jetpack}: not in edgerep's table ({', '.join(r.jetpack for r in JETPACK)}); "
                    f"pass the profile's TensorRT version instead")
