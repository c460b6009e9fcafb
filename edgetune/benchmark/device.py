"""Facts about the machine a benchmark ran on, so every number carries its device with it.

CPU model, the ISA flags that decide which kernels run (AVX2, AVX-512, VNNI, AMX, NEON dot
product...), the cores this process may use (its affinity, which is what a pinned agent sees),
memory, and the version of every runtime installed here.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from edgetune.core.isa import detect_isa
from edgetune.errors import ConfigError, EdgetuneError
from edgetune.runtimes import get_runtime, runtime_names
from edgetune.runtimes.base import Checkable

__all__ = ["device_facts", "runtime_versions", "tier_name"]

_ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimddp", "i8mm", "sve", "bf16", "fphp",
)  # fmt: skip


def device_facts() -> dict[str, Any]:
    """A JSON-able description of this machine as the benchmark process sees it."""
    flags = _cpu_flags()
    return {
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "isa": detect_isa().value,
        "isa_flags": [f for f in _ISA_FLAGS if f in flags],
        "cores_online": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)),
        "memory_bytes": _memory_bytes(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "runtimes": runtime_versions(),
    }


def tier_name(facts: dict[str, Any]) -> str:
    """A device tier label: '<cores>-core <isa>' (an agent may set its own with --tier)."""
    return str(
        facts.get("tier") or f"{facts.get('cores_available', '?')}-core {facts.get('isa', '?')}"
    )


def runtime_versions() -> dict[str, str]:
    """Version of each runtime installed here; 'not installed' or why it cannot run otherwise."""
    return {name: _describe(name) for name in runtime_names() if name != "null"}


def _describe(name: str) -> str:
    runtime = get_runtime(name)
    try:
        version = str(runtime.version())
    except EdgetuneError:
        return "not installed"
    if isinstance(runtime, Checkable):
        try:
            runtime.check()
        except ConfigError:
            pass  # needs settings (torch: a module), but is installed
        except EdgetuneError as exc:
            return f"{version} (cannot run here: {str(exc)[:200]})"
    return version


def _cpu_flags() -> set[str]:
    text = _read("/proc/cpuinfo")
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("model name", "hardware", "cpu model"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
