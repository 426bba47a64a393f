"""Sizes with units, as users type them ("256M", "1G", "512MiB")."""

from __future__ import annotations

import re

_MIB = 1024 * 1024
_FACTORS = {"": _MIB, "b": 1, "k": 1024, "m": _MIB, "g": 1024 * _MIB, "t": 1024 * 1024 * _MIB}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgtb]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size_bytes(value: str | int, *, default_unit: str = "m") -> int:
    """Parse a size; a bare number means `default_unit` (MiB unless told). Binary units: 1K = 1024."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 256M or 2G")
    text = f"{value}{default_unit}" if isinstance(value, int) else value
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"'{value}' is not a size (use a number with K, M, G or T, e.g. 256M)")
    number, unit = match.groups()
    unit = unit.lower() if unit else (default_unit if not text.strip().lower().endswith("b") else "b")
    return int(number) * _FACTORS[unit]


def parse_size_mib(value: str | int) -> int:
    """Parse a size into whole MiB, refusing sizes that are not a multiple of 1 MiB."""
    size = parse_size_bytes(value)
    if size % _MIB:
        raise ValueError(f"'{value}' is not a whole number of MiB")
    return size // _MIB


def format_mib(mib: int) -> str:
    if mib % 1024 == 0:
        return f"{mib // 1024}G"
    return f"{mib}M"


_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_size(size: int) -> str:
    """A byte count as people read it: "60 TiB", "1.5 GiB", "512 bytes"."""
    value, unit = float(size), 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return f"{size} bytes" if unit == 0 else f"{value:.1f}".removesuffix(".0") + f" {_UNITS[unit]}"
