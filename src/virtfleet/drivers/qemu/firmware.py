"""UEFI firmware for q35 guests, found the way QEMU and libvirt find it: through firmware descriptors.

QEMU's docs/interop/firmware.json: packages install JSON descriptors in /usr/share/qemu/firmware; a file of the same
name in /etc/qemu/firmware overrides one there; lower file names win. We take the first descriptor that offers plain
UEFI from flash for x86_64 q35 and needs neither SMM nor enrolled Secure Boot keys (those need machine settings the
spec does not have). Pure apart from reading the directories, so tests point it at their own.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

DESCRIPTOR_DIRS = (Path("/etc/qemu/firmware"), Path("/usr/share/qemu/firmware"))
_UNWANTED_FEATURES = frozenset({"requires-smm", "secure-boot", "enrolled-keys"})
Q35_MACHINE = "pc-q35-7.2"  # a versioned q35 name, matched against the descriptors' machine globs


@dataclass(frozen=True)
class UefiFirmware:
    code: Path  # the firmware itself, read-only, shared by every VM
    vars_template: Path  # the empty variable store each VM copies once into its own NVRAM file
    descriptor: Path


def _descriptors(dirs: tuple[Path, ...]) -> list[Path]:
    chosen: dict[str, Path] = {}
    for directory in reversed(dirs):  # later dirs first, so an earlier dir's file of the same name replaces it
        try:
            files = [path for path in directory.iterdir() if path.suffix == ".json"]
        except OSError:
            continue
        for path in files:
            chosen[path.name] = path
    return [chosen[name] for name in sorted(chosen)]


def _suits(descriptor: dict[str, object]) -> UefiFirmware | None:
    if "uefi" not in (descriptor.get("interface-types") or []):  # type: ignore[operator]
        return None
    features = descriptor.get("features") or []
    if not isinstance(features, list) or _UNWANTED_FEATURES & set(features):
        return None
    targets = descriptor.get("targets") or []
    if not isinstance(targets, list) or not any(
        isinstance(target, dict) and target.get("architecture") == "x86_64"
        and any(fnmatch.fnmatch(Q35_MACHINE, str(glob)) for glob in target.get("machines") or [])
        for target in targets
    ):
        return None
    mapping = descriptor.get("mapping")
    if not isinstance(mapping, dict) or mapping.get("device") != "flash":
        return None
    executable, template = mapping.get("executable"), mapping.get("nvram-template")
    if not isinstance(executable, dict) or not isinstance(template, dict):
        return None  # a stateless or combined image: no per-VM variable store to keep
    if executable.get("format", "raw") != "raw" or template.get("format", "raw") != "raw":
        return None
    code, store = Path(str(executable.get("filename"))), Path(str(template.get("filename")))
    if not code.is_file() or not store.is_file():
        return None
    return UefiFirmware(code, store, Path())


def find_uefi(dirs: tuple[Path, ...] = DESCRIPTOR_DIRS) -> UefiFirmware | None:
    """The UEFI firmware to boot q35 guests with, or None when none is installed (Debian: apt install ovmf)."""
    for path in _descriptors(dirs):
        try:
            descriptor = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # an unreadable descriptor is skipped, as QEMU's own tools do
        if isinstance(descriptor, dict) and (found := _suits(descriptor)) is not None:
            return UefiFirmware(found.code, found.vars_template, path)
    return None
