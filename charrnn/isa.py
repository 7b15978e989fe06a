"""Which vector instruction set the engine is built for: detected once per process,
or forced lower with CHARRNN_ISA.

  avx512    x86 with AVX-512F and FMA: 32 registers of 16 floats
  avx2      x86 with AVX2 and FMA: 16 registers of 8 floats
  portable  anything else (ARM, POWER, x86 without FMA): plain compiled loops, no
            x86 instruction and no vector width assumed; LLVM vectorises them for
            whatever the CPU has

The level is the best one the features Numba compiles for allow (the host's, or
those NUMBA_CPU_NAME / NUMBA_CPU_FEATURES give it). CHARRNN_ISA=avx2 or portable
forces a lower one, for every kernel Numba compiles in the process, not only the
matrix tiles: kernels/__init__.py passes the restricted CPU features to Numba
before its first compilation. A level the CPU lacks, or an unknown name, is refused.

This module imports llvmlite only (not Numba), so `charrnn --version` can name the
level without loading the engine.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from charrnn.errors import CharrnnError

LEVELS = ("avx512", "avx2", "portable")  # best first
ENV = "CHARRNN_ISA"

# Features a level needs, as LLVM names them.
_NEEDS = {"avx512": ("avx512f", "avx2", "fma"), "avx2": ("avx2", "fma"), "portable": ()}
# What AVX-512 brings or needs, switched off to restrict code to AVX2 (LLVM also
# clears every feature that implies one it clears).
_WIDE_PREFIXES = ("avx512", "avx10", "amx", "evex512")


@dataclass(frozen=True)
class Isa:
    """The active level and what Numba must be told to compile for it.

    cpu_name, cpu_features: None to leave Numba's choice alone (the host, or the
    user's NUMBA_CPU_NAME / NUMBA_CPU_FEATURES); else the values to set.
    supported: every level this CPU runs, best first."""

    level: str
    forced: bool
    supported: tuple[str, ...]
    cpu_name: str | None = None
    cpu_features: str | None = None
    bf16: str | None = None  # the unit precision bf16 multiplies on (BF16_UNITS), None if none

    def describe(self) -> str:
        how = f"forced by {ENV}; the CPU supports {', '.join(self.supported)}" if self.forced else "detected"
        return f"{self.level} ({how})"

    def describe_bf16(self) -> str:
        return f"bfloat16 on {self.bf16}" if self.bf16 else "no bfloat16"


def parse_features(text: str) -> dict[str, bool]:
    """'+avx2,-avx512f,...' (LLVM's feature string) as {name: enabled}."""
    out = {}
    for item in text.split(","):
        item = item.strip()
        if len(item) > 1 and item[0] in "+-":
            out[item[1:]] = item[0] == "+"
    return out


def format_features(features: dict[str, bool]) -> str:
    return ",".join(("+" if on else "-") + name for name, on in sorted(features.items()))


def _host_cpu() -> tuple[str, dict[str, bool]]:
    import llvmlite.binding as llvm

    try:
        features = dict(llvm.get_host_cpu_features())
    except RuntimeError:  # LLVM cannot tell on this platform
        features = {}
    return llvm.get_host_cpu_name(), features


def compiled_features(environ=os.environ) -> tuple[str, dict[str, bool]]:
    """The CPU name and features Numba compiles for when left alone: the host's,
    unless NUMBA_CPU_NAME / NUMBA_CPU_FEATURES say otherwise (read as Numba reads
    them: 'generic' alone means no optional feature; NUMBA_ENABLE_AVX=0 drops AVX)."""
    host_name, host_features = _host_cpu()
    name = environ.get("NUMBA_CPU_NAME") or host_name
    given = environ.get("NUMBA_CPU_FEATURES")
    if given is not None:
        features = parse_features(given)
    elif environ.get("NUMBA_CPU_NAME", "").lower() == "generic":
        features = {}
    else:
        features = dict(host_features)
        if environ.get("NUMBA_ENABLE_AVX", "").strip() == "0":
            features = {k: v and not k.startswith("avx") for k, v in features.items()}
    return name, features


def _has_all(features: dict[str, bool], needed) -> bool:
    return all(features.get(f, False) for f in needed)


def supported_levels(features: dict[str, bool]) -> tuple[str, ...]:
    return tuple(level for level in LEVELS if _has_all(features, _NEEDS[level]))


def _forced(environ, variable: str, names: tuple[str, ...], available: tuple[str, ...], lacking: str) -> str:
    """The name the environment variable forces, '' if unset; a CharrnnError if it is
    not one of names, or not one of those available (saying `lacking`)."""
    wanted = environ.get(variable, "").strip().lower()
    if wanted and wanted not in names:
        raise CharrnnError(f"{variable} must be one of {', '.join(names)}, got {environ[variable]!r}")
    if wanted and wanted not in available:
        raise CharrnnError(f"{variable}={wanted}: {lacking}")
    return wanted


def select(environ=os.environ) -> Isa:
    """The level for this process: the best the compiled-for CPU supports, or the
    one CHARRNN_ISA names (refused, with a CharrnnError, if unknown or unsupported)."""
    name, features = compiled_features(environ)
    supported = supported_levels(features)
    wanted = _forced(environ, ENV, LEVELS, supported, f"this CPU lacks it; it supports {', '.join(supported)}")
    level, forced = wanted or supported[0], bool(wanted)
    if level == supported[0]:
        return Isa(level, forced, supported, *_full_width(level, name, features, environ),
                   select_bf16(level, features, environ))
    if level == "portable":
        # The architecture's baseline: for x86-64 SSE2, no AVX and no FMA.
        return Isa(level, forced, supported, "generic", "", select_bf16(level, {}, environ))
    narrowed = {k: v and not k.startswith(_WIDE_PREFIXES) for k, v in features.items()}
    return Isa(level, forced, supported, name, format_features(narrowed), select_bf16(level, narrowed, environ))


def _full_width(level: str, name: str, features: dict[str, bool], environ) -> tuple[str | None, str | None]:
    """What Numba is told at the CPU's own level: nothing, except at avx512 (unless
    the user set NUMBA_CPU_FEATURES), where LLVM's "prefer-256-bit" tuning is switched
    off. LLVM sets it for Intel's AVX-512 CPUs (Skylake-SP to Sapphire Rapids), and
    then vectorises every plain loop -- the cells, the bfloat16 rounding passes, Adam
    -- with 256-bit vectors, half the width. Measured on a 2-core Xeon (family 6 model
    167), LSTM 2x256 bf16 training step: 94.1 -> 80.4 ms (`python -m
    benchmarks.probes.profile_step --model lstm-2x256 --precision bf16`)."""
    if level != "avx512" or "NUMBA_CPU_FEATURES" in environ:
        return None, None
    return name, format_features({**features, "prefer-256-bit": False})


@functools.lru_cache(maxsize=None)
def active() -> Isa:
    """This process's level (the environment as it was at the first call)."""
    return select()


# Linux's arch_prctl: a process must ask for the AMX tile data state before its
# first tile instruction, or that instruction faults (Documentation/arch/x86/xstate.rst).
_SYS_ARCH_PRCTL = 158  # x86-64
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18

# The units that multiply bfloat16 for precision bf16, best first, and the features
# each needs: AMX's tiles (Intel Sapphire Rapids and later), else AVX512-BF16's
# vdpbf16ps (AMD Zen 4 and later, Intel Cooper Lake). CHARRNN_BF16 forces one the CPU
# has, so that an AMX machine tests and measures the other too.
BF16_UNITS = ("amx", "avx512bf16")
BF16_ENV = "CHARRNN_BF16"
_BF16_NEEDS = {"amx": ("amx-tile", "amx-bf16"), "avx512bf16": ("avx512bf16",)}


def bf16_units(level: str, features: dict[str, bool]) -> tuple[str, ...]:
    """The bfloat16 units a level with these features may use, best first (none below avx512)."""
    if level != "avx512":
        return ()
    return tuple(unit for unit in BF16_UNITS if _has_all(features, _BF16_NEEDS[unit]))


def select_bf16(level: str, features: dict[str, bool], environ=os.environ) -> str | None:
    """The unit precision bf16 runs on: the best one, or the one CHARRNN_BF16 names
    (refused, with a CharrnnError, if unknown or not available); None if none is."""
    units = bf16_units(level, features)
    has = ", ".join(units) or "none at the engine's level " + level
    wanted = _forced(environ, BF16_ENV, BF16_UNITS, units, f"not available here; this process has {has}")
    return wanted or (units[0] if units else None)


def bf16_missing(isa: Isa) -> str | None:
    """Why this process cannot multiply in bfloat16, or None if it can (as far as
    the CPU's features tell; for AMX the OS is asked in enable_bf16)."""
    if isa.bf16 is not None:
        return None
    if isa.level != "avx512":
        return f"the engine's level is {isa.describe()}, and bfloat16 products need avx512"
    return "this CPU has neither AVX512-BF16 nor AMX-BF16 (AMD Zen 4 and Intel Sapphire Rapids or later have one)"


@functools.lru_cache(maxsize=None)
def enable_bf16() -> None:
    """Make sure this process may run the bfloat16 kernels: the CPU has a unit for
    them and, for AMX, Linux granted the tile state; a CharrnnError saying why not
    otherwise. Asked once per process (the permission is the whole process's)."""
    import ctypes
    import platform

    isa = active()
    reason = bf16_missing(isa)
    if reason is None and isa.bf16 == "amx":
        if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
            reason = "AMX is used on x86-64 Linux only"
        else:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) != 0:
                reason = f"Linux refused the AMX tile state ({os.strerror(ctypes.get_errno())}; kernel 5.16 or later)"
    if reason is not None:
        raise CharrnnError(f"precision bf16 is not available here: {reason}; train in float32 (a resumed run "
                           "may change its precision)")


def configure_numba(isa: Isa) -> None:
    """Make Numba compile everything for the level: set its CPU name and features
    before its first compilation. A level forced below the CPU's is refused if Numba
    already compiled something for other features in this process (the level would
    then apply to charrnn's tiles but not to the rest); at the CPU's own level the
    features Numba already has are kept (only _full_width's tuning is lost)."""
    import numba
    from numba.core import registry

    if isa.cpu_name is None:
        return
    target = registry.cpu_target
    if "_toplevel_target_context" in vars(target):  # Numba's codegen already exists
        codegen = target.target_context.codegen()
        if codegen._tm_features == isa.cpu_features or isa.level == isa.supported[0]:
            return  # at the CPU's own level only the width preferred for plain loops differs
        raise CharrnnError(f"{ENV}={isa.level} must be set before anything in the process compiles with Numba")
    numba.config.CPU_NAME = isa.cpu_name
    numba.config.CPU_FEATURES = isa.cpu_features
