"""Device profiles: memory, storage, compute by precision, bandwidth and power of edge targets.

The built-in catalogue (``profiles/devices.json``) covers typical tiers: Cortex-M4 and M7
microcontrollers, ESP32-S3 (internal SRAM, or PSRAM), Raspberry Pi 4 and 5, Jetson Orin Nano,
Coral Edge TPU, a mid-range and a flagship phone. Its figures are nominal datasheet figures or
derived from them (units x width x clock); every device carries its ``sources`` and
``assumptions``. Users add or override devices with a JSON (or, on Python 3.11+, TOML) file of
the same shape, loaded through a schema allow-list and validated field by field.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgetune.errors import ConfigError, UnknownNameError

__all__ = ["DEVICES_SCHEMA", "PRECISIONS", "Device", "device_names", "get_device", "load_devices"]

DEVICES_SCHEMA = "edgetune.devices/1"
_READABLE = {DEVICES_SCHEMA}
PRECISIONS = ("fp32", "fp16", "int8", "int4")
_STORAGE_KINDS = ("flash", "storage", "weight-cache")
_CLASSES = ("mcu", "sbc", "accelerator", "phone", "other")
# A precision a device does not list runs at another one's rate, when a runtime would do that.
_FALLBACK = {"fp16": "fp32", "int4": "int8"}


@dataclass(frozen=True, kw_only=True)
class Device:
    name: str
    title: str
    kind: str
    ram_bytes: int
    reserved_ram_bytes: int
    storage_bytes: int
    storage_kind: str
    """``flash`` or ``storage``: a hard limit; ``weight-cache``: weights beyond it are streamed."""
    weights_in_ram: bool
    """Weights are loaded into RAM (Linux, phones) rather than read in place from flash (MCUs)."""
    runtime_name: str
    runtime_ram_bytes: int
    runtime_storage_bytes: int
    compute_ops_per_s: dict[str, float]
    memory_bandwidth_bytes_per_s: float | None
    weight_stream_bytes_per_s: float | None
    power_w: float
    compute_efficiency: float
    bandwidth_efficiency: float
    aliases: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)
    assumptions: tuple[str, ...] = ()
    origin: str = "built-in"

    @property
    def usable_ram_bytes(self) -> int:
        return self.ram_bytes - self.reserved_ram_bytes

    def rate(self, precision: str) -> tuple[float | None, str | None]:
        """Peak ops/s for ``precision`` and, when another precision's rate is used, why."""
        if precision in self.compute_ops_per_s:
            return self.compute_ops_per_s[precision], None
        other = _FALLBACK.get(precision)
        if other is not None and other in self.compute_ops_per_s:
            why = f"{self.name} lists no {precision} rate; {other}'s used"
            return self.compute_ops_per_s[other], why
        return None, f"{self.name} cannot run {precision} layers"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "class": self.kind,
            "ram_bytes": self.ram_bytes, "reserved_ram_bytes": self.reserved_ram_bytes,
            "storage_bytes": self.storage_bytes, "storage_kind": self.storage_kind,
            "weights_in_ram": self.weights_in_ram,
            "runtime": {"name": self.runtime_name, "ram_bytes": self.runtime_ram_bytes,
                        "storage_bytes": self.runtime_storage_bytes},
            "compute_ops_per_s": dict(self.compute_ops_per_s),
            "memory_bandwidth_bytes_per_s": self.memory_bandwidth_bytes_per_s,
            "weight_stream_bytes_per_s": self.weight_stream_bytes_per_s,
            "power_w": self.power_w,
            "efficiency": {"compute": self.compute_efficiency,
                           "bandwidth": self.bandwidth_efficiency},
            "aliases": list(self.aliases), "sources": dict(self.sources),
            "assumptions": list(self.assumptions), "origin": self.origin,
        }


def builtin_devices() -> dict[str, Device]:
    text = (resources.files("edgetune.analyze") / "profiles" / "devices.json").read_text("utf-8")
    return _parse(json.loads(text), "built-in catalogue")


def load_devices(path: Path | str) -> dict[str, Device]:
    """Devices from a user file (JSON, or TOML on Python 3.11+), validated."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read devices file {str(path)!r}: {exc.strerror}; check the "
                          "path") from None
    return _parse(_decode(text, path), str(path))


def _decode(text: str, path: Path) -> Any:
    if path.suffix.lower() == ".toml":
        if sys.version_info < (3, 11):
            raise ConfigError(f"devices file {str(path)!r} is TOML, which needs Python 3.11+; "
                              "write it as JSON instead")
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"devices file {str(path)!r} is not valid TOML: {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"devices file {str(path)!r} is not valid JSON: {exc}") from None


def catalogue(extra: Path | str | None = None) -> dict[str, Device]:
    """The built-in devices, overridden or extended by those in ``extra``; aliases included."""
    devices = builtin_devices()
    if extra is not None:
        devices.update(load_devices(extra))
    named = dict(devices)
    for device in devices.values():
        for alias in device.aliases:
            named.setdefault(alias, device)
    return named


def device_names(extra: Path | str | None = None) -> list[str]:
    devices = builtin_devices()
    if extra is not None:
        devices.update(load_devices(extra))
    return sorted(devices)


def get_device(name: str, extra: Path | str | None = None) -> Device:
    devices = catalogue(extra)
    if name not in devices:
        raise UnknownNameError("device", name, device_names(extra))
    return devices[name]


# -- validation --------------------------------------------------------------------------------

def _parse(data: Any, where: str) -> dict[str, Device]:
    if not isinstance(data, dict) or data.get("schema") not in _READABLE:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{where} is not a devices file this version reads (schema {got!r}); "
                          f"start it with \"schema\": \"{DEVICES_SCHEMA}\"")
    entries = data.get("devices")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where} must hold a non-empty 'devices' list; got "
                          f"{type(entries).__name__}")
    devices = [_device(entry, where) for entry in entries]
    for device in devices:
        if device.reserved_ram_bytes >= device.ram_bytes:
            raise ConfigError(f"field 'reserved_ram_bytes' of device {device.name!r} in {where} "
                              f"must be below ram_bytes ({device.ram_bytes}); got "
                              f"{device.reserved_ram_bytes}")
    return {d.name: d for d in devices}


def _device(entry: Any, where: str) -> Device:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        raise ConfigError(f"every device in {where} needs a 'name' string; got {entry!r:.80}")
    check = _Checker(entry, f"device {entry['name']!r} in {where}")
    runtime = entry.get("runtime") or {}
    efficiency = entry.get("efficiency") or {}
    return Device(
        name=entry["name"], title=str(entry.get("title", entry["name"])),
        kind=check.choice("class", _CLASSES, "other"),
        ram_bytes=check.count("ram_bytes"), reserved_ram_bytes=check.count("reserved_ram_bytes", 0),
        storage_bytes=check.count("storage_bytes"),
        storage_kind=check.choice("storage_kind", _STORAGE_KINDS, "flash"),
        weights_in_ram=bool(entry.get("weights_in_ram", False)),
        runtime_name=str(runtime.get("name", "unspecified runtime")),
        runtime_ram_bytes=check.count("ram_bytes", 0, runtime, "runtime.ram_bytes"),
        runtime_storage_bytes=check.count("storage_bytes", 0, runtime, "runtime.storage_bytes"),
        compute_ops_per_s=check.rates(),
        memory_bandwidth_bytes_per_s=check.positive("memory_bandwidth_bytes_per_s", optional=True),
        weight_stream_bytes_per_s=check.positive("weight_stream_bytes_per_s", optional=True),
        power_w=check.positive("power_w") or 0.0,
        compute_efficiency=check.fraction(efficiency, "compute", 0.5),
        bandwidth_efficiency=check.fraction(efficiency, "bandwidth", 0.6),
        aliases=tuple(str(a) for a in entry.get("aliases", ())),
        sources={str(k): str(v) for k, v in (entry.get("sources") or {}).items()},
        assumptions=tuple(str(a) for a in entry.get("assumptions", ())),
        origin=where)


class _Checker:
    """Field checks with one message shape: field, value given, what is expected."""

    def __init__(self, entry: dict[str, Any], where: str) -> None:
        self.entry = entry
        self.where = where

    def _fail(self, key: str, value: Any, wanted: str) -> ConfigError:
        return ConfigError(f"field {key!r} of {self.where} must be {wanted}; got {value!r}")

    def count(self, key: str, default: int | None = None, source: dict[str, Any] | None = None,
              label: str | None = None) -> int:
        value = (source if source is not None else self.entry).get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._fail(label or key, value, "a whole number of bytes >= 0")
        return value

    def positive(self, key: str, optional: bool = False) -> float | None:
        value = self.entry.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                or not math.isfinite(value):
            raise self._fail(key, value, "a positive number" + (" or null" if optional else ""))
        return float(value)

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.entry.get(key, default)
        if value not in options:
            raise self._fail(key, value, f"one of {list(options)}")
        return str(value)

    def rates(self) -> dict[str, float]:
        value = self.entry.get("compute_ops_per_s")
        if not isinstance(value, dict) or not value:
            raise self._fail("compute_ops_per_s", value,
                             f"a mapping of {list(PRECISIONS)} to ops/s")
        for precision, rate in value.items():
            if precision not in PRECISIONS or isinstance(rate, bool) or \
                    not isinstance(rate, (int, float)) or not rate > 0:
                raise self._fail(f"compute_ops_per_s.{precision}", rate,
                                 f"a positive ops/s for one of {list(PRECISIONS)}")
        return {str(k): float(v) for k, v in value.items()}

    def fraction(self, source: dict[str, Any], key: str, default: float) -> float:
        value = source.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise self._fail(f"efficiency.{key}", value, "a number in (0, 1]")
        return float(value)
