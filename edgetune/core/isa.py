"""Which instruction set the model will run on, and what that means for INT8 kernels.

Why this matters: on x86 CPUs without VNNI, ONNX Runtime's u8 x s8 kernels multiply with
VPMADDUBSW, which adds two u8*s8 products into a *16-bit* register with saturation. Two products
of 255 * 127 overflow it (64,770 > 32,767), so full-range int8 weights can silently clip, and the
same INT8 model loses accuracy on an AVX2 CPU that it keeps on a VNNI CPU (VPDPBUSD accumulates
into 32 bits). Two settings are saturation-free by construction on such CPUs:

* 7-bit weights (``reduce_range``): 2 * 255 * 64 = 32,640 fits in int16;
* u8 x u8 (uint8 weights): ONNX Runtime widens both operands to 16 bits (VPMADDWD), no overflow.

Signed int8 activations give no escape on x86: ONNX Runtime shifts them to uint8 before the
same u8s8 kernel.
"""

from __future__ import annotations

import logging
import platform
from enum import Enum
from pathlib import Path

from edgetune.errors import ConfigError

__all__ = ["Isa", "detect_isa", "parse_isa"]

log = logging.getLogger(__name__)


class Isa(str, Enum):
    """Target instruction sets edgetune knows how to choose INT8 settings for."""

    AVX2 = "avx2"
    AVX512 = "avx512"
    AVX_VNNI = "avx-vnni"
    AVX512_VNNI = "avx512-vnni"
    ARM64 = "arm64"
    GENERIC = "generic"

    @property
    def u8s8_saturates(self) -> bool:
        """True where full-range u8 x s8 products can saturate a 16-bit intermediate."""
        return self in (Isa.AVX2, Isa.AVX512, Isa.GENERIC)

    @property
    def is_x86(self) -> bool:
        return self not in (Isa.ARM64,)


_X86_FLAG_ORDER = (
    ("avx512_vnni", Isa.AVX512_VNNI),
    ("avx_vnni", Isa.AVX_VNNI),
    ("avx512bw", Isa.AVX512),
    ("avx2", Isa.AVX2),
)


def parse_isa(name: str) -> Isa:
    """Turn ``--target-isa`` text into an :class:`Isa`; list the choices when unknown."""
    try:
        return Isa(name.strip().lower())
    except ValueError:
        known = ", ".join(i.value for i in Isa)
        raise ConfigError(
            f"The target ISA must be one of {known}; got {name!r}. "
            "Use the instruction set of the CPU the model will run on."
        ) from None


def isa_from_flags(machine: str, flags: set[str]) -> Isa:
    """Pick the best INT8-relevant ISA from a machine name and CPU flags."""
    machine = machine.lower()
    if machine in ("arm64", "aarch64"):
        return Isa.ARM64
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return Isa.GENERIC
    for flag, isa in _X86_FLAG_ORDER:
        if flag in flags:
            return isa
    return Isa.GENERIC


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def detect_isa() -> Isa:
    """The instruction set of the CPU this process runs on."""
    isa = isa_from_flags(platform.machine(), _cpu_flags())
    if isa is Isa.GENERIC:
        log.warning("could not identify the CPU's instruction set; assuming the safest settings")
    return isa
