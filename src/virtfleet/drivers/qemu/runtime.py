"""A VM's run directory on the host: the files that let a restarted agent find and re-adopt its QEMU.

    <run_dir>/<vm_id>/domain.json   the spec, written by define() (versioned record)
                      runtime.json  how the running QEMU was started: pid, accel, argv (versioned record)
                      exit.json     why it last stopped, written when we saw it go
                      qemu-start.log  what QEMU printed before it daemonized (start-up errors)
                      qemu.pid      QEMU's own pidfile (QEMU removes it on a normal exit, not when killed)
                      qmp.sock      QMP monitor
                      console.sock  serial console (one client at a time)
                      console.log   everything the serial console printed, trimmed like a ring
                      vnc.sock      graphical console (RFB), when the spec asks for a display
                      uefi-vars.fd  the VM's own UEFI variable store (boot entries), kept across boots
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECORD_FORMAT = 1


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def domain(self) -> Path:
        return self.root / "domain.json"

    @property
    def runtime(self) -> Path:
        return self.root / "runtime.json"

    @property
    def exit(self) -> Path:
        return self.root / "exit.json"

    @property
    def startup_log(self) -> Path:
        return self.root / "qemu-start.log"

    @property
    def pidfile(self) -> Path:
        return self.root / "qemu.pid"

    @property
    def qmp(self) -> Path:
        return self.root / "qmp.sock"

    @property
    def console(self) -> Path:
        return self.root / "console.sock"

    @property
    def vnc(self) -> Path:
        return self.root / "vnc.sock"

    @property
    def console_log(self) -> Path:
        return self.root / "console.log"

    @property
    def uefi_vars(self) -> Path:
        return self.root / "uefi-vars.fd"

    def transient(self) -> list[Path]:
        """What a previous run leaves behind and the next start must not trust."""
        return [self.runtime, self.exit, self.pidfile, self.qmp, self.console, self.vnc]


def write_record(path: Path, data: dict[str, Any]) -> None:
    """Write a versioned JSON record atomically (a crash leaves the old one or the new one, never half)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"format": RECORD_FORMAT, **data}, indent=2) + "\n")
    os.replace(tmp, path)


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        return None
    return data


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def is_our_qemu(pid: int, vm_id: str) -> bool:
    """True if pid is alive and is the QEMU started for vm_id (its -uuid), not a process that reused the pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie has exited; only its parent has not reaped it
        return False
    return vm_id.encode() in cmdline


def trim_log(path: Path, max_bytes: int, keep_bytes: int) -> bool:
    """Keep only the last keep_bytes of a log once it passes max_bytes; QEMU appends (O_APPEND) so it follows."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
        with path.open("r+b") as log:
            log.seek(-keep_bytes, os.SEEK_END)
            tail = log.read()
            cut = tail.find(b"\n")
            tail = tail[cut + 1 :] if 0 <= cut < len(tail) - 1 else tail
            log.seek(0)
            log.write(tail)
            log.truncate()
    except OSError:
        return False
    return True


def read_tail(path: Path, max_bytes: int) -> bytes:
    try:
        with path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - max_bytes))
            return log.read()
    except FileNotFoundError:
        return b""
