"""Exporting a stopped VM for VMware, VirtualBox, Xen or libvirt: its disks converted, a description beside them.

Written only inside the admin-set export directory (Settings.export_dir), under a name of the user's choosing:
ova -> DEST.ova (OVF descriptor first, then its SHA256 manifest, then streamOptimized VMDKs, as DSP0243 asks);
vmx -> DEST/ (NAME.vmx, monolithicSparse VMDKs that Workstation and Player run as they are);
xl, libvirt -> DEST/ (NAME.cfg or NAME.xml, qcow2 disks named by their path there).
Everything is built in a hidden temporary directory and renamed into place at the end; a failure leaves nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import shutil
import tarfile
from pathlib import Path
from typing import Literal

from virtfleet.errors import Conflict, InvalidSpec, InvalidState
from virtfleet.jobs.imports import ThrottledProgress
from virtfleet.jobs.runner import JobContext, JobRunner
from virtfleet.jobs.vms import VmService
from virtfleet.model.job import Job
from virtfleet.model.vm import Vm, VmState
from virtfleet.storage import qemu_img
from virtfleet.v2v import writers
from virtfleet.v2v.writers import ExportDisk, ExportNic, ExportVm

ExportFormat = Literal["ova", "vmx", "xl", "libvirt"]
_DEST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DISK_FORMAT = {"ova": "vmdk", "vmx": "vmdk", "xl": "qcow2", "libvirt": "qcow2"}
_VMDK_OPTIONS = {"ova": ["subformat=streamOptimized"], "vmx": ["subformat=monolithicSparse", "adapter_type=lsilogic"]}
CHUNK = 4 << 20


def describe(vm: Vm, disks: list[ExportDisk]) -> ExportVm:
    nics = [ExportNic(mac=nic.mac, network=nic.network, model=nic.model) for nic in vm.spec.nics]
    return ExportVm(name=vm.name, cpus=vm.spec.cpus, memory_mib=vm.spec.memory, disks=disks, nics=nics,
                    firmware=vm.spec.firmware)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ExportService:
    def __init__(self, runner: JobRunner, vms: VmService, export_dir: Path) -> None:
        self.runner = runner
        self.vms = vms
        self.export_dir = export_dir

    def target(self, fmt: ExportFormat, dest: str) -> Path:
        if not _DEST.match(dest):
            raise InvalidSpec("dest", f"{dest[:100]!r} must be a plain name (letters, digits, '.', '_', '-'): exports "
                                      f"are written into the export directory {self.export_dir}")
        name = dest if fmt != "ova" or dest.endswith(".ova") else f"{dest}.ova"
        return self.export_dir / name

    def submit(self, ref: str, fmt: ExportFormat, dest: str) -> Job:
        vm = self.vms.get(ref)
        if vm.state not in (VmState.STOPPED, VmState.CRASHED):
            raise InvalidState(f"vm '{vm.name}'", "export", vm.state.value, ("stopped", "crashed"))
        if not vm.spec.disks:
            raise InvalidSpec("disks", f"vm '{vm.name}' has no disk to export")
        target = self.target(fmt, dest)
        if os.path.lexists(target):
            raise Conflict(f"{target} already exists")
        self.runner.check_free(vm.id, f"vm '{vm.name}'")

        async def run(context: JobContext) -> str:
            return await asyncio.to_thread(self._run, vm, fmt, target, context)

        return self.runner.submit("vm.export", vm.id, f"vm '{vm.name}'", run)

    def _run(self, vm: Vm, fmt: ExportFormat, target: Path, context: JobContext) -> str:
        self.export_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        work = self.export_dir / f".{target.name}.part-{secrets.token_hex(8)}"
        work.mkdir(mode=0o750)
        try:
            disks = self._convert(vm, fmt, work, target, context)
            description = describe(vm, disks)
            if fmt == "ova":
                self._ova(description, work, target)
            else:
                suffix, text = {"vmx": (".vmx", writers.vmx), "xl": (".cfg", writers.xl),
                                "libvirt": (".xml", writers.libvirt)}[fmt]
                (work / f"{vm.name}{suffix}").write_text(text(description))
                os.rename(work, target)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        shutil.rmtree(work, ignore_errors=True)
        message = f"exported vm '{vm.name}' as {fmt} to {target} ({len(disks)} disk(s))"
        if vm.spec.image is not None:
            message += (f"; it boots virtfleet's image '{vm.spec.image}' (kernel and initramfs), which is not "
                        "exported: elsewhere it needs a boot loader on its first disk")
        return message

    def _convert(self, vm: Vm, fmt: ExportFormat, work: Path, target: Path, context: JobContext) -> list[ExportDisk]:
        disks = []
        count = len(vm.spec.disks)
        report = ThrottledProgress(context)
        for index, disk in enumerate(vm.spec.disks):
            assert disk.path is not None  # noqa: S101 - a stored disk has its volume's path
            extension = _DISK_FORMAT[fmt]
            name = f"{vm.name}-disk{index + 1}.{extension}"

            def progress(pct: float, index: int = index) -> None:
                report(int((index + pct / 100) * 90 / count), f"disk {index + 1}: converting, {pct:.0f}%")

            qemu_img.convert(Path(disk.path), disk.format, work / name, extension, progress=progress,
                             options=_VMDK_OPTIONS.get(fmt, ()))
            capacity = qemu_img.info(work / name, extension).virtual_size
            disks.append(ExportDisk(file=name, capacity=capacity, size=(work / name).stat().st_size,
                                    format="vmdk" if extension == "vmdk" else "qcow2", bus=disk.bus,
                                    path=str(target / name)))
        return disks

    def _ova(self, vm: ExportVm, work: Path, target: Path) -> None:
        descriptor = f"{vm.name}.ovf"
        (work / descriptor).write_text(writers.ovf(vm))
        digests = {descriptor: _sha256(work / descriptor)}
        digests.update({disk.file: _sha256(work / disk.file) for disk in vm.disks})
        (work / f"{vm.name}.mf").write_text(writers.manifest(digests))
        partial = work / target.name
        # USTAR, descriptor first and manifest next (DSP0243); plain files only, owned by nobody in particular.
        with tarfile.open(partial, "x", format=tarfile.USTAR_FORMAT) as tar:
            for name in [descriptor, f"{vm.name}.mf", *(disk.file for disk in vm.disks)]:
                info = tar.gettarinfo(work / name, arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with (work / name).open("rb") as f:
                    tar.addfile(info, f)
        with partial.open("rb") as f:
            os.fsync(f.fileno())
        os.rename(partial, target)
