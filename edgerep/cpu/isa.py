"""The CPU an engine runs on: its instruction set, as far as INT8 results and OpenVINO's bf16 depend on it.

x86 INT8 kernels differ by ISA in more than speed. Without VNNI, ONNX Runtime's U8S8 kernels multiply
u8 activations by s8 weights with `vpmaddubsw`, which adds each pair of products into a *saturating*
int16 before widening (ONNX Runtime's quantization docs, "When to use reduce_range and per_channel
quantization"): 255*127*2 = 64770 > 32767, so full-range weights can clip. VNNI (`vpdpbusd`) and AMX
accumulate in int32 and cannot. ARM64 kernels widen before they add. So "which ISA" is part of a target.

Features are read with py-cpuinfo (a maintained library), not by parsing /proc/cpuinfo by hand.
"""
from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

from edgerep.errors import UserError

# Ordered from the weakest to the strongest x86 level; arm64 stands apart.
X86_ISAS = ("avx2", "avx_vnni", "avx512", "avx512_vnni", "amx")
ISAS = X86_ISAS + ("arm64",)
_VNNI = frozenset({"avx_vnni", "avx512_vnni", "amx"})
# oneDNN's names for the same levels (ONEDNN_MAX_CPU_ISA; oneDNN docs, "CPU Dispatcher Control").
ONEDNN_ISA = {"avx2": "AVX2", "avx_vnni": "AVX2_VNNI", "avx512": "AVX512_CORE",
              "avx512_vnni": "AVX512_CORE_VNNI", "amx": "AVX512_CORE_AMX"}
# The features with which OpenVINO's CPU plugin computes in bf16, and then runs every FP32 IR in bf16 unless told
# otherwise (its Config, with no INFERENCE_PRECISION_HINT: bf16 where oneDNN's avx512_core_bf16 is usable; AMX
# CPUs have AVX512_BF16 too). It computes no bf16 on ARM (hasHardwareSupport(bf16) is x86 only), and asked for bf16
# on a CPU without these it silently runs f32, or, on AVX-512 without AVX512_BF16, a slow emulation.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Target levels whose every CPU has those features (a named level below amx may lack them: Cascade Lake has
# avx512_vnni and no BF16); with isa auto the target is this CPU.
BF16_TARGETS = ("auto", "amx")


@dataclass(frozen=True)
class CpuInfo:
    brand: str
    arch: str  # "x86_64", "arm64" or what the platform says
    flags: frozenset[str]
    isa: str | None  # the strongest level of ISAS this CPU has (None: x86 older than AVX2, or unknown)

    @property
    def int8_features(self) -> dict[str, bool]:
        """The features that change INT8 kernels, for reports and `doctor`."""
        f = self.flags
        return {"avx2": "avx2" in f, "avx512": "avx512f" in f,
                "avx512_vnni": bool(f & {"avx512_vnni", "avx512vnni"}), "avx_vnni": "avx_vnni" in f,
                "amx": bool(f & {"amx_int8", "amx_tile"}), "arm_dotprod": bool(f & {"asimddp", "dotprod"})}

    @property
    def bf16_features(self) -> dict[str, bool]:
        """The features that let a runtime compute in bf16 or fp16 on this CPU: with avx512_bf16 or amx_bf16,
        OpenVINO's CPU plugin runs FP32 IRs in bf16 unless told otherwise (INFERENCE_PRECISION_HINT)."""
        f = self.flags
        return {"avx512_bf16": "avx512_bf16" in f, "amx_bf16": "amx_bf16" in f, "avx512_fp16": "avx512_fp16" in f,
                "arm_bf16": self.arch in ("arm64", "aarch64") and "bf16" in f}

    @property
    def has_bf16(self) -> bool:
        """OpenVINO computes in bf16 here (BF16_FLAGS on an AVX-512 level), and by default runs FP32 IRs in bf16.
        Judged on the level too: under EDGEREP_HOST_ISA (an emulator) the flags are the real host's."""
        return isa_rank(self.isa or "") >= isa_rank("avx512") and bool(self.flags & set(BF16_FLAGS))

    def bf16_missing(self) -> str | None:
        """None where has_bf16, else the one-line reason (what was looked for)."""
        if self.has_bf16:
            return None
        if self.isa == "arm64":
            found = "it is an ARM CPU, where OpenVINO computes no bf16"
        elif isa_rank(self.isa or "") >= isa_rank("avx512"):
            found = f"it is {self.isa} without them"
        else:
            found = f"it is {self.isa or 'below avx2'}"
        return f"this CPU has no BF16 (looked for {' or '.join(BF16_FLAGS)} on an AVX-512 CPU; {found})"

    def to_dict(self) -> dict[str, object]:
        return {"brand": self.brand, "arch": self.arch, "isa": self.isa, "features": self.int8_features,
                "bf16_features": self.bf16_features, "bf16": self.has_bf16}


def _isa_from_flags(arch: str, flags: frozenset[str]) -> str | None:
    if arch in ("arm64", "aarch64", "ARM_8"):
        return "arm64"
    if flags & {"amx_int8", "amx_tile"}:
        return "amx"
    if flags & {"avx512_vnni", "avx512vnni"}:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    if "avx_vnni" in flags and "avx2" in flags:
        return "avx_vnni"
    if "avx2" in flags:
        return "avx2"
    return None


@functools.lru_cache(maxsize=1)
def host_cpu() -> CpuInfo:
    """The CPU running this process (cached: py-cpuinfo's full probe takes about a second)."""
    import cpuinfo

    # The /proc/cpuinfo reader of py-cpuinfo answers in milliseconds on Linux; its full probe (cpuid in a
    # subprocess, clock measurement) is the portable fallback.
    fast = getattr(getattr(cpuinfo, "cpuinfo", None), "_get_cpu_info_from_proc_cpuinfo", None)
    info: dict = {}
    if fast is not None:
        try:
            info = fast() or {}
        except Exception:  # any parsing trouble: use the public probe
            info = {}
    if not info.get("flags"):
        info = cpuinfo.get_cpu_info()
    machine = platform.machine().lower()
    arch = "arm64" if machine in ("aarch64", "arm64") else machine or str(info.get("arch", "unknown")).lower()
    flags = frozenset(str(f).lower() for f in info.get("flags", ()))
    isa = _isa_from_flags(arch, flags)
    # Under an emulator (qemu-user -cpu Haswell) the runtimes see the emulated CPUID, but /proc/cpuinfo still
    # describes the real host: EDGEREP_HOST_ISA says which ISA the process really runs on.
    forced = os.environ.get("EDGEREP_HOST_ISA")
    if forced and forced.strip().lower() != "auto":
        isa = resolve_isa(forced, "EDGEREP_HOST_ISA")
    return CpuInfo(brand=str(info.get("brand_raw") or info.get("brand") or platform.processor() or "unknown"),
                   arch=arch, flags=flags, isa=isa)


def resolve_isa(value: str | None, where: str = "isa") -> str:
    """A profile's or flag's `isa` ("auto" or one of ISAS) as a concrete level; unknown names are a UserError."""
    name = (value or "auto").strip().lower()
    if name == "auto":
        found = host_cpu().isa
        # An x86 CPU without AVX2 runs the same non-VNNI (saturating or slower) kernels as AVX2 does.
        return found or "avx2"
    if name not in ISAS:
        raise UserError(f"{where}: unknown ISA {value!r}; use auto or one of {', '.join(ISAS)}")
    return name


def has_vnni(isa: str) -> bool:
    """True where x86 INT8 dot products accumulate in int32 (VNNI or AMX)."""
    return isa in _VNNI


def int16_saturation_risk(isa: str) -> bool:
    """True where ONNX Runtime's U8S8 kernels add products pairwise into a saturating int16 (x86 without VNNI)."""
    return isa in X86_ISAS and not has_vnni(isa)


def isa_rank(isa: str) -> int:
    """Order of x86 levels (arm64: -1, not comparable)."""
    return X86_ISAS.index(isa) if isa in X86_ISAS else -1


def isa_mismatch(built_for: str | None, running: str | None) -> str | None:
    """One line saying what a different running ISA risks for an INT8 engine, or None when it risks nothing."""
    if not built_for or not running or built_for == running:
        return None
    if int16_saturation_risk(running) and not int16_saturation_risk(built_for):
        return (f"the engine was built for {built_for} but this CPU is {running} (no VNNI): INT8 kernels here "
                f"add products into saturating int16, so accuracy can be lower than validated")
    if int16_saturation_risk(built_for) and not int16_saturation_risk(running):
        return (f"the engine was built for {built_for} but this CPU is {running}: accuracy measured here does not "
                f"show the int16 saturation a {built_for} CPU can have; validate on the target ISA")
    return (f"the engine was built for {built_for} but this CPU is {running}: latency measured here does not "
            f"predict the target's")


def precision_unavailable(precision: str, isa: str = "auto", cpu: CpuInfo | None = None) -> str | None:
    """Why a CPU target cannot get an engine of `precision` built here (None: it can). Only bf16 depends on the
    CPU: its validation must run bf16, so this CPU needs BF16, and the target (`isa`, a profile's or --isa) must
    be one that runs it, this CPU (auto) or an AMX CPU."""
    if precision != "bf16":
        return None
    cpu = cpu or host_cpu()
    missing = cpu.bf16_missing()
    if missing:
        return (f"{missing}, so a bf16 engine cannot be validated here; build fp32 (what OpenVINO runs on such a CPU) "
                f"or build bf16 on a CPU with BF16")
    if isa not in BF16_TARGETS:
        return (f"the target's ISA {isa} does not promise BF16 (a CPU of that level can lack it, and OpenVINO then runs "
                f"f32 or emulates bf16 slowly); build bf16 with isa auto on the target CPU itself, or isa amx")
    return None


def target_isa(profile: object, override: str | None = None) -> str:
    """The concrete ISA a build is for: `override` (the --isa flag), else the profile's `isa`, else auto."""
    if override:
        return resolve_isa(override, "--isa")
    return resolve_isa(getattr(profile, "isa", None) or "auto", "isa")
