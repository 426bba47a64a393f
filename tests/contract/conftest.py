"""One environment per driver for the shared driver contract: the same tests run against every driver.

The "fake" driver runs everywhere; the "qemu" driver boots the real tiny guest under TCG and is marked
`integration`, so `-m "not integration"` runs the fake half alone and needs no built image. "libvirt" runs on
libvirt's in-process mock hypervisor (test:///default: no daemon, no guest): a test that needs what a driver
lacks skips by reading its capabilities(), never by its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from virtfleet.drivers.base import BootImage, DomainStatus, Driver, DriverConfig, create_driver
from virtfleet.drivers.fake import fake_host_for
from virtfleet.model.vm import VmSpec, VmState

READY_MARKER = "VIRTFLEET-READY"
# Large enough that the whole history of a test (two quiet boots and a few commands) fits: counting markers
# in a tail that has dropped the first boot would make a correct driver look wrong.
CONSOLE_TAIL = 1 << 20


def ready_line(name: str) -> str:
    """What the guest prints once it is up (the fake prints the same)."""
    return f"{READY_MARKER} hostname={name}"


@dataclass
class DriverEnv:
    name: str
    config: DriverConfig
    driver: Driver
    boot_timeout: float  # seconds from start() to the READY marker
    image_dir: Path | None = None  # the built tiny image (qemu only)
    drivers: list[Driver] = field(default_factory=list)  # every instance created, closed at teardown
    unique_names: bool = False  # a hypervisor shared with others: suffix every VM name
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])  # this environment's, on every VM name
    foreign: list[str] = field(default_factory=list)  # foreign domains a test made, removed at teardown
    # Our own libvirt connection, open until teardown: libvirt's mock forgets its domains with its last connection.
    foreign_conn: Any = None

    def new_driver(self) -> Driver:
        """A fresh driver instance on the same run_dir, the way a restarted agent starts over."""
        driver = create_driver(self.name, self.config)
        self.drivers.append(driver)
        return driver

    def require(self, *capabilities: str) -> None:
        """Skip the test unless the driver declares every one of these capabilities."""
        declared = self.driver.capabilities()
        missing = [name for name in capabilities if not getattr(declared, name)]
        if missing:
            pytest.skip(f"{self.name} driver lacks {', '.join(missing)}")

    def spec(self, name: str, **overrides: Any) -> VmSpec:
        machines = self.driver.capabilities().machines
        fields: dict[str, Any] = {"name": name, "cpus": 1, "memory": 256,
                                  "machine": "microvm" if "microvm" in machines else machines[0]}
        if self.name != "fake":
            fields["accel"] = "tcg"  # KVM is not usable on the test machines
        fields.update(overrides)
        if self.unique_names:
            fields["name"] = f"{name}-{self.suffix}"
        return VmSpec(**fields)

    def owns(self, vm_name: str) -> bool:
        """Whether a VM of that name was made by this environment (spec() names them)."""
        return vm_name.endswith(f"-{self.suffix}")

    def mine(self, statuses: list[DomainStatus]) -> list[DomainStatus]:
        """The domains this environment made: on a shared hypervisor others' come and go meanwhile."""
        if not self.unique_names:
            return statuses
        return [status for status in statuses if status.spec is not None and self.owns(status.spec.name)]

    def boot(self, spec: VmSpec) -> BootImage:
        """The boot image for `spec`, with the command line the image catalog would give it."""
        if self.image_dir is None:
            return BootImage(
                "tiny",
                Path("/nonexistent/tiny/vmlinux"),
                Path("/nonexistent/tiny/initramfs.cpio"),
                f"console=ttyS0 virtfleet.hostname={spec.name}",
            )
        from virtfleet.images.tiny import default_cmdline, host_tsc_khz, load_image

        built = load_image(self.image_dir)
        parts = [
            default_cmdline(spec.machine, host_tsc_khz()),
            f"virtfleet.hostname={spec.name}",
            spec.kernel_args,
        ]
        return BootImage(built.name, built.kernel, built.initrd, " ".join(p for p in parts if p))

    async def start(self, vm_id: str, spec: VmSpec) -> DomainStatus:
        """define + start + wait for the READY marker: the common preamble of the lifecycle tests (which need
        the console to see it)."""
        self.require("console")
        await self.driver.define(vm_id, spec)
        status = await self.driver.start(vm_id, spec, self.boot(spec))
        await self.wait_console(vm_id, ready_line(spec.name), self.boot_timeout)
        return status

    async def wait_console(
        self, vm_id: str, text: str, timeout: float, *, count: int = 1, driver: Driver | None = None
    ) -> bytes:
        """Poll the console history until `text` occurs `count` times; returns the history seen."""
        driver = driver or self.driver
        needle = text.encode()
        deadline = time.monotonic() + timeout
        while True:
            log = await driver.console_log(vm_id, CONSOLE_TAIL)
            if log.count(needle) >= count:
                return log
            if time.monotonic() >= deadline:
                tail = log[-2000:].decode(errors="replace")
                raise AssertionError(
                    f"{text!r} seen {log.count(needle)} times (wanted {count}) in the console of {vm_id} "
                    f"after {timeout:g}s; console tail:\n{tail}"
                )
            await asyncio.sleep(0.05)

    async def kill_hypervisor(self, vm_id: str, pid: int | None = None) -> None:
        """Kill the hypervisor under a running domain (its `pid`, else asked of the driver), behind its back."""
        if self.name == "fake":  # no process: the fake host crashes it
            fake_host_for(self.config).crash(vm_id)
            return
        if pid is None:
            pid = (await self.driver.status(vm_id)).pid
        assert pid is not None, f"running domain {vm_id} without a pid"
        os.kill(pid, signal.SIGKILL)

    def add_foreign(self, *, running: bool = False, persistent: bool = True) -> str:
        """A domain another tool (virsh, virt-manager) made on the host, without virtfleet's marks; its name.
        A running one boots nothing: no disk, no kernel (a real QEMU sits in its firmware)."""
        name = f"foreign-{uuid.uuid4().hex[:8]}"
        domain_uuid = str(uuid.uuid4())
        if self.name == "fake":
            xml = f"<domain type='kvm'><name>{name}</name><uuid>{domain_uuid}</uuid></domain>"
            state = VmState.RUNNING if running or not persistent else VmState.STOPPED
            fake_host_for(self.config).add_foreign(name, domain_uuid, xml, state, persistent=persistent)
            return name
        import libvirt

        mock = self.config.extra["uri"].startswith("test:")
        kind, machine = ("test", "") if mock else ("qemu", " machine='q35'")
        xml = (f"<domain type='{kind}'><name>{name}</name><uuid>{domain_uuid}</uuid>"
               "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
               f"<os><type arch='x86_64'{machine}>hvm</type></os></domain>")
        if self.foreign_conn is None:
            self.foreign_conn = libvirt.open(self.config.extra["uri"])
        self.foreign.append(name)
        if not persistent:
            self.foreign_conn.createXML(xml, 0)
            return name
        domain = self.foreign_conn.defineXML(xml)
        if running:
            domain.create()
        return name

    def remove_foreign(self) -> None:
        """Destroy and undefine what add_foreign made that is still there (a taken-over one the driver removes)."""
        conn = self.foreign_conn
        if conn is None:
            return
        import libvirt

        try:
            for name in self.foreign:
                with contextlib.suppress(libvirt.libvirtError):
                    domain = conn.lookupByName(name)
                    if domain.isActive():
                        domain.destroy()
                    with contextlib.suppress(libvirt.libvirtError):  # a transient one is gone with its destroy
                        domain.undefine()
        finally:
            conn.close()


# Per environment: the driver and its options. "libvirt-system" is the real libvirtd (qemu:///system), shared
# with other users of this host: its domains get unique names (DriverEnv.unique_names).
ENVIRONMENTS = {
    "fake": ("fake", {}),
    "qemu": ("qemu", {}),
    "libvirt": ("libvirt", {"uri": "test:///default"}),
    "libvirt-system": ("libvirt", {"uri": "qemu:///system"}),
}


@pytest.fixture(params=["fake", pytest.param("qemu", marks=pytest.mark.integration), "libvirt",
                        pytest.param("libvirt-system", marks=pytest.mark.integration)])
async def env(request: pytest.FixtureRequest, short_tmp: Path) -> AsyncIterator[DriverEnv]:
    name, options = ENVIRONMENTS[request.param]
    if request.param == "libvirt-system":
        request.getfixturevalue("libvirtd")
    # run_dir does not exist yet: the server does not create it either, so the driver must.
    config = DriverConfig(run_dir=short_tmp / "run", extra=options)
    image_dir: Path | None = None
    boot_timeout = 5.0
    if request.param in ("qemu", "libvirt-system"):
        image_dir = request.getfixturevalue("tiny_image_dir")
        boot_timeout = 90.0
    driver = create_driver(name, config)
    environment = DriverEnv(name, config, driver, boot_timeout, image_dir, [driver],
                            unique_names=request.param == "libvirt-system")
    try:
        yield environment
    finally:
        # Tear down through the newest instance: an older one may have been closed by the test.
        live = environment.drivers[-1]
        with contextlib.suppress(Exception):
            for status in await live.list_domains():
                if not environment.mine([status]):
                    continue  # another user's domain on the shared hypervisor: not ours to stop

                with contextlib.suppress(Exception):
                    await live.stop(status.vm_id)
                with contextlib.suppress(Exception):  # a shared libvirtd keeps what is not undefined
                    await live.undefine(status.vm_id)
        for each in environment.drivers:
            with contextlib.suppress(Exception):
                await each.close()
        await asyncio.to_thread(environment.remove_foreign)
