"""Live disk snapshots and merges through a real libvirtd (qemu:///system), on one transient q35 guest under TCG.

The guest is defined here with libvirt-python (not through the libvirt driver): the tiny image's kernel and
initramfs, one qcow2 data disk (vda) in a directory the libvirt-qemu user can traverse, and a serial console on a
unix socket whose shell writes into /dev/vda.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtfleet.images.tiny import default_cmdline, load_image

libvirt = pytest.importorskip("libvirt")

from virtfleet.drivers.libvirt import blocks  # noqa: E402  (needs libvirt-python)

pytestmark = pytest.mark.integration

URI = "qemu:///system"
DISK_SIZE = 16 << 20


class Console:
    """The guest's serial console (QEMU listens on a unix socket): run shell commands, wait for their output."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.sock.settimeout(0.2)
        self.seen = b""

    def wait(self, marker: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while marker.encode() not in self.seen:
            assert time.monotonic() < deadline, f"no {marker!r} on the console:\n{self.seen[-2000:]!r}"
            with contextlib.suppress(TimeoutError):
                self.seen += self.sock.recv(65536)
        text = self.seen.decode(errors="replace")
        self.seen = b""
        return text

    def run(self, command: str, done: str) -> str:
        """Run `command`; `done` is echoed after it as 'done-$((1+1))' style, so the echo of the typed line never
        matches (the shell expands the marker only when it prints it)."""
        self.sock.sendall(f"{command}; echo {done}-$((1+1))\n".encode())
        return self.wait(f"{done}-2")

    def write_sector(self, sector: int, text: str) -> None:
        self.run(f"printf {text} | dd of=/dev/vda bs=512 seek={sector} count=1 conv=sync,fsync 2>/dev/null",
                 f"wrote{sector}")

    def reconnect(self) -> None:
        self.sock.close()
        self.__init__(self.path)  # type: ignore[misc]

    def close(self) -> None:
        self.sock.close()


def connect() -> object:
    """qemu:///system, starting the daemons first when none runs (never restarting one that does)."""
    try:
        return libvirt.open(URI)
    except libvirt.libvirtError:
        subprocess.run(["virtlogd", "-d"], check=False)
        subprocess.run(["libvirtd", "-d"], check=False)
    deadline = time.monotonic() + 15
    while True:
        try:
            return libvirt.open(URI)
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def domain_xml(name: str, folder: Path, disk: Path) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{folder}/vmlinux</kernel>
    <initrd>{folder}/initramfs.cpio</initrd>
    <cmdline>{default_cmdline("q35", None)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <serial type='unix'>
      <source mode='bind' path='{folder}/console.sock'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>"""


def make_image(path: Path, backing: Path | None = None) -> Path:
    """As the snapshot job does: qemu-img, an empty qcow2 (on `backing` when given)."""
    args = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        args += ["-u", "-b", str(backing), "-F", "qcow2"]
    subprocess.run([*args, str(path), str(DISK_SIZE)], check=True)
    return path


def chains(domain: object) -> list[list[str]]:
    return [[image.path for image in chain] for chain in asyncio.run(blocks.disk_chains(domain))]


@pytest.fixture
def guest(tiny_image_dir: Path) -> Iterator[tuple[object, Path, Console]]:
    """A running transient domain: its handle, its folder (base.qcow2 is vda) and its console at the shell."""
    image = load_image(tiny_image_dir)
    # libvirt runs QEMU as libvirt-qemu: the folder must be traversable (the image folder is private).
    folder = Path(tempfile.mkdtemp(prefix="vflvb", dir="/tmp"))  # short: the console socket path
    os.chmod(folder, 0o755)  # noqa: S103 - libvirt-qemu must traverse it
    conn = connect()
    domain = None
    console = None
    try:
        shutil.copy(image.kernel, folder / "vmlinux")
        shutil.copy(image.initrd, folder / "initramfs.cpio")
        base = make_image(folder / "base.qcow2")
        name = f"vf-lvblocks-{uuid.uuid4().hex[:12]}"
        domain = conn.createXML(domain_xml(name, folder, base), 0)  # type: ignore[attr-defined]
        console = Console(folder / "console.sock")
        console.wait("VIRTFLEET-READY", timeout=90)
        yield domain, folder, console
    finally:
        if console is not None:
            console.close()
        if domain is not None:
            with contextlib.suppress(libvirt.libvirtError):
                domain.destroy()  # transient: destroyed is undefined
        conn.close()  # type: ignore[attr-defined]
        shutil.rmtree(folder, ignore_errors=True)


def guest_reads(console: Console, sector: int) -> str:
    out = console.run(f"echo R=$(dd if=/dev/vda bs=512 skip={sector} count=1 2>/dev/null | tr -d '\\000')=R",
                      f"read{sector}")
    found = re.findall(r"R=(\w*)=R", out)  # not the echo of the typed line: that has the command in between
    return found[-1] if found else out


def ready_mirror(domain: object) -> bool:
    return any(d.mirror_ready for d in blocks.parse_live_disks(domain.XMLDesc(0)))  # type: ignore[attr-defined]


def test_snapshot_merge_settle_and_memory_snapshot(guest: tuple[object, Path, Console]) -> None:
    domain, folder, console = guest
    base = folder / "base.qcow2"
    console.write_sector(0, "BASEDATA")
    assert chains(domain) == [[str(base)]]

    # snapshot_disks switches vda to the empty overlay made beforehand; the guest's writes land in the overlay.
    first = make_image(folder / "base.qcow2@1", base)
    asyncio.run(blocks.snapshot_disks(domain, [(str(base), str(first))]))
    assert chains(domain) == [[str(first), str(base)]]
    console.write_sector(1, "OVERLAY1")
    assert b"OVERLAY1" in first.read_bytes()
    assert b"OVERLAY1" not in base.read_bytes()

    # An active commit: before_pivot runs once the base holds everything and the disk still writes the overlay.
    pivots: list[list[list[str]]] = []

    async def before_pivot() -> None:
        assert b"OVERLAY1" in base.read_bytes()
        pivots.append([[image.path for image in chain] for chain in await blocks.disk_chains(domain)])

    asyncio.run(blocks.commit_disk(domain, str(first), str(base), before_pivot=before_pivot))
    assert pivots == [[[str(first), str(base)]]]
    assert chains(domain) == [[str(base)]]
    # Again: `first` is no longer in the chain, so it is merged already; nothing happens.
    asyncio.run(blocks.commit_disk(domain, str(first), str(base), before_pivot=before_pivot))
    assert len(pivots) == 1 and chains(domain) == [[str(base)]]

    # A commit an earlier agent started and never pivoted (it died): settle_block_jobs completes it.
    second = make_image(folder / "base.qcow2@2", base)
    asyncio.run(blocks.snapshot_disks(domain, [(str(base), str(second))]))
    console.write_sector(2, "OVERLAY2")
    domain.blockCommit("vda", str(base), str(second), 0,  # type: ignore[attr-defined]
                       libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
    assert asyncio.run(blocks.settle_block_jobs(domain)) == []
    assert chains(domain) == [[str(base)]]
    assert domain.blockJobInfo("vda", 0) == {}  # type: ignore[attr-defined]

    # The same left over, found by a retried commit_disk: it completes that job (before_pivot and all).
    third = make_image(folder / "base.qcow2@3", base)
    asyncio.run(blocks.snapshot_disks(domain, [(str(base), str(third))]))
    console.write_sector(3, "OVERLAY3")
    domain.blockCommit("vda", str(base), str(third), 0,  # type: ignore[attr-defined]
                       libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
    deadline = time.monotonic() + 30
    while not ready_mirror(domain):  # as far as the dead agent got: ready, not pivoted
        assert time.monotonic() < deadline
        time.sleep(0.05)
    asyncio.run(blocks.commit_disk(domain, str(third), str(base), before_pivot=before_pivot))
    assert len(pivots) == 2 and chains(domain) == [[str(base)]]

    # An inner layer (not the active one) is merged by a plain commit; the disk keeps writing its top.
    inner = make_image(folder / "base.qcow2@4", base)
    asyncio.run(blocks.snapshot_disks(domain, [(str(base), str(inner))]))
    console.write_sector(4, "INNER4")
    top = make_image(folder / "base.qcow2@5", inner)
    asyncio.run(blocks.snapshot_disks(domain, [(str(inner), str(top))]))
    assert chains(domain) == [[str(top), str(inner), str(base)]]
    asyncio.run(blocks.commit_disk(domain, str(inner), str(base), before_pivot=before_pivot))
    assert len(pivots) == 2  # no pivot for an inner layer
    assert chains(domain) == [[str(top), str(base)]]
    asyncio.run(blocks.commit_disk(domain, str(top), str(base)))
    assert chains(domain) == [[str(base)]]

    # The guest still reads all of it.
    assert guest_reads(console, 3) == "OVERLAY3"

    # A memory snapshot: RAM, devices and the disk saved in base under the tag; writes after it are undone by a
    # load, and the guest's shell carries on from the moment of the save.
    tag = str(uuid.uuid4())
    console.run("MARK=saved", "marked")
    asyncio.run(blocks.memory_snapshot(domain, "save", tag, [str(base)]))
    assert asyncio.run(blocks.disk_chains(domain))[0][0].snapshots == (tag,)
    console.write_sector(5, "AFTERMEM")
    console.run("MARK=later", "remarked")
    assert guest_reads(console, 5) == "AFTERMEM"
    # libvirt's record of it goes with a transient domain (or one defined again): the images still hold it.
    asyncio.run(asyncio.to_thread(domain.snapshotLookupByName(tag, 0).delete,  # type: ignore[attr-defined]
                                  libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY))
    pid = (Path("/run/libvirt/qemu") / f"{domain.name()}.pid").read_text()  # type: ignore[attr-defined]
    asyncio.run(blocks.memory_snapshot(domain, "load", tag, [str(base)]))
    # libvirt 9.0 loads by starting a new QEMU with -loadvm: the console socket is a new one.
    assert (Path("/run/libvirt/qemu") / f"{domain.name()}.pid").read_text() != pid  # type: ignore[attr-defined]
    console.reconnect()
    assert domain.isActive() and domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING  # type: ignore[attr-defined]
    assert guest_reads(console, 5) == ""
    assert "MARK=saved=" in console.run("echo MARK=$MARK=", "echoed")  # the shell's memory is back too
    asyncio.run(blocks.memory_snapshot(domain, "delete", tag, [str(base)]))
    assert asyncio.run(blocks.disk_chains(domain))[0][0].snapshots == ()
    asyncio.run(blocks.memory_snapshot(domain, "delete", tag, [str(base)]))  # deleted already: nothing to do

    # qemu-img reads everything from base alone once the domain is gone.
    domain.destroy()  # type: ignore[attr-defined]
    raw = folder / "base.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(base), str(raw)], check=True)
    data = raw.read_bytes()
    sectors = [data[i * 512:(i + 1) * 512].rstrip(b"\0") for i in range(6)]
    assert sectors == [b"BASEDATA", b"OVERLAY1", b"OVERLAY2", b"OVERLAY3", b"INNER4", b""]
    info = subprocess.run(["qemu-img", "info", "--output=json", str(base)], check=True, capture_output=True,
                          text=True).stdout
    assert "backing-filename" not in info
