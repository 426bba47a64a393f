"""The tiny guest boots with a NoCloud seed ISO on a virtio disk and takes its hostname from it (raw QEMU, TCG)."""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import wait_console
from virtfleet.images.cloudinit import CloudInit, build_seed_iso
from virtfleet.images.tiny import default_cmdline, host_tsc_khz, load_image

pytestmark = pytest.mark.integration



def test_tiny_guest_takes_its_hostname_from_the_seed(tiny_image_dir: Path, short_tmp: Path) -> None:
    image = load_image(tiny_image_dir)
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + os.urandom(32)
    key = f"ssh-ed25519 {base64.b64encode(blob).decode()} test@virtfleet"
    seed = build_seed_iso(CloudInit("seeded-host", ssh_keys=(key,), instance_id="i-cafe01"), short_tmp / "seed.iso")
    log = short_tmp / "console.log"
    # The kernel argument names another host: the seed must win over it.
    cmdline = default_cmdline("microvm", host_tsc_khz()) + " virtfleet.hostname=from-cmdline"
    seed_file = {"driver": "file", "filename": str(seed), "node-name": "seed-file", "read-only": True}
    seed_raw = {"driver": "raw", "file": "seed-file", "node-name": "seed", "read-only": True}
    argv = [
        "qemu-system-x86_64", "-M", "microvm,rtc=on,acpi=on", "-accel", "tcg", "-cpu", "max", "-m", "256",
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", f"file:{log}",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", cmdline,
        "-blockdev", json.dumps(seed_file), "-blockdev", json.dumps(seed_raw),
        "-device", "virtio-blk-device,drive=seed",
    ]
    started = time.monotonic()
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        text = wait_console(log, "VIRTFLEET-READY", qemu)
        print(f"seeded tiny guest ready in {time.monotonic() - started:.1f} s")
        lines = [line for line in text.splitlines() if line.startswith("virtfleet-cloudinit:")]
        assert lines == ["virtfleet-cloudinit: hostname=seeded-host instance-id=i-cafe01 ssh-keys=1"], text
        assert "VIRTFLEET-READY hostname=seeded-host " in text
        assert text.index("virtfleet-cloudinit:") < text.index("VIRTFLEET-READY")
    finally:
        qemu.kill()
        qemu.wait(10)
