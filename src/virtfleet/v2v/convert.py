"""Turning one planned disk into a new image in a pool: host-side, slow, run by the import job in a worker thread.

Every source file is opened by us (files.ImportDir: inside the import directory, no links, regular files only) and
re-checked on the open descriptor; qemu-img reads it through /proc/<pid>/fd/<n>, so a path swapped after the plan
was made is never followed. VMDK descriptors are never handed to qemu: we write our own, naming only the extents we
opened, with parent links to our own descriptors. Self-contained images go through qemu_img.inspect_untrusted
(refusing qcow2 backing and external data files) and are converted with their format named, never probed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import posixpath
import re
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from virtfleet.errors import InvalidSpec
from virtfleet.storage import qemu_img
from virtfleet.v2v import package, vhd
from virtfleet.v2v.errors import SourceError
from virtfleet.v2v.files import ImportDir, proc_path
from virtfleet.v2v.model import Layer, SourceDisk
from virtfleet.v2v.vmdk import SECTOR, VMDK3_MAGIC, VMDK4_MAGIC, VmdkReader, sparse_header

Progress = Callable[[float], None]
CHUNK = 4 << 20
WRITEBACK_INTERVAL = 0.25  # seconds between flushes of the image being written


@contextmanager
def background_writeback(dest: Path) -> Iterator[None]:
    """Flush `dest` to disk while qemu-img is still writing it, so the fsync that must come before the volume is
    published finds little left to do: the disk writes while qemu-img converts, instead of after it."""
    done = threading.Event()

    def flush() -> None:
        fd = -1
        try:
            while not done.wait(WRITEBACK_INTERVAL):
                if fd < 0:
                    try:
                        fd = os.open(dest, os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:
                        continue  # qemu-img has not created it yet
                os.fdatasync(fd)
        except OSError:
            pass  # only an optimization: the final fsync still makes the image durable
        finally:
            if fd >= 0:
                os.close(fd)

    thread = threading.Thread(target=flush, name=f"writeback-{dest.name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _digest(fd: int, checksum: str, name: str, file: str) -> None:
    algorithm, _, expected = checksum.partition(":")
    digest = hashlib.new(algorithm.lower())
    offset = 0
    while chunk := os.pread(fd, CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    if not hmac.compare_digest(digest.hexdigest(), expected.lower()):
        raise SourceError(file, "manifest", f"{name}: {algorithm} mismatch (manifest {expected}, file "
                                            f"{digest.hexdigest()}); the file was changed or damaged")


def _create_type(layer: Layer) -> str:
    kinds = {extent.type for extent in layer.extents}
    for kind, create_type in (("SESPARSE", "seSparse"), ("VMFSSPARSE", "vmfsSparse"),
                              ("SPARSE", "twoGbMaxExtentSparse"), ("VMFS", "vmfs")):
        if kind in kinds:
            return create_type
    return "monolithicFlat"


def _recheck_sparse(fd: int, extent_file: str, file: str) -> None:
    """The header of an opened sparse extent, again: it may have changed since the plan was made."""
    head = os.pread(fd, SECTOR, 0)
    if head[:4] == VMDK4_MAGIC:
        sparse_header(head, extent_file)  # refuses capacity 0 (a descriptor in disguise)
    elif head[:4] != VMDK3_MAGIC and (len(head) < 8 or struct.unpack_from("<Q", head)[0] != 0xCAFEBABE):
        raise SourceError(file, extent_file, "is no longer a sparse extent")


def write_descriptors(layers: list[Layer], fds: dict[str, int], staging: Path, file: str) -> Path:
    """Our own descriptor for each layer (top first), naming the opened extents; returns the top one."""
    for index, layer in enumerate(layers):
        lines = ["# Disk DescriptorFile (written by virtfleet from the checked original)", "version=1",
                 f"CID={index + 1:08x}",
                 f"parentCID={index + 2:08x}" if index + 1 < len(layers) else "parentCID=ffffffff",
                 f'createType="{_create_type(layer)}"']
        if index + 1 < len(layers):
            lines.append(f'parentFileNameHint="layer{index + 1}.vmdk"')
        for extent in layer.extents:
            if extent.type == "ZERO":
                lines.append(f"{extent.access} {extent.sectors} ZERO")
                continue
            assert extent.file is not None  # noqa: S101 - the reader names a file for every data extent
            fd = fds[extent.file]
            if extent.type in ("SPARSE", "VMFSSPARSE", "SESPARSE"):
                _recheck_sparse(fd, extent.file, file)
            line = f'{extent.access} {extent.sectors} {extent.type} "{proc_path(fd)}"'
            lines.append(f"{line} {extent.offset}" if extent.type in ("FLAT", "VMFS") else line)
        (staging / f"layer{index}.vmdk").write_text("\n".join(lines) + "\n")
    return staging / "layer0.vmdk"


@contextmanager
def _opened(root: ImportDir, names: list[str], file: str) -> Iterator[dict[str, int]]:
    with ExitStack() as stack:
        fds: dict[str, int] = {}
        for name in names:
            if name not in fds:
                fd = root.open(name, file=file, field=name)
                stack.callback(os.close, fd)
                fds[name] = fd
        yield fds


def _extract(root: ImportDir, disk: SourceDisk, staging: Path) -> Path:
    """Copy the disk's member out of the OVA into `staging`, checking the manifest digest on the way."""
    assert disk.archive is not None  # noqa: S101 - the planner sets it for OVA members
    member_name = disk.layers[0].file
    target = staging / "ova" / posixpath.basename(member_name)
    target.parent.mkdir(exist_ok=True)
    algorithm, _, expected = (disk.checksum or "").partition(":")
    digest = hashlib.new(algorithm.lower()) if algorithm else None
    with package.open_tar(root, disk.archive) as (tar, members, _):
        member = members.get(member_name)
        if member is None:
            raise SourceError(disk.archive, member_name, "is no longer in the OVA")
        stream = tar.extractfile(member)
        if stream is None:
            raise SourceError(disk.archive, member_name, "cannot be read")
        with stream, open(target, "xb") as out:
            while chunk := stream.read(CHUNK):
                if digest is not None:
                    digest.update(chunk)
                out.write(chunk)
    if digest is not None and not hmac.compare_digest(digest.hexdigest(), expected.lower()):
        raise SourceError(disk.archive, "manifest", f"{member_name}: {algorithm} mismatch (manifest {expected}, "
                                                    f"file {digest.hexdigest()})")
    return target


def convert_disk(root: ImportDir, disk: SourceDisk, dest: Path, fmt: str, staging: Path, *,
                 progress: Progress | None = None, file: str = "") -> None:
    """Write the current state of `disk` into the new image `dest` (format `fmt`); `staging` is a private empty
    directory on the pool's file system for what the conversion needs on the way (removed by the caller)."""
    with background_writeback(dest):
        _convert_disk(root, disk, dest, fmt, staging, progress=progress, file=file)


def _convert_disk(root: ImportDir, disk: SourceDisk, dest: Path, fmt: str, staging: Path, *,
                  progress: Progress | None, file: str) -> None:
    file = file or root.display("")
    if disk.device is not None:
        fd = root.open_device(disk.device, file=file, field=disk.label)
        try:
            qemu_img.convert(proc_path(fd), "raw", dest, fmt, progress=progress)
        finally:
            os.close(fd)
        return
    if disk.archive is not None:
        extracted = _extract(root, disk, staging)
        local = ImportDir(extracted.parent)
        layer = disk.layers[0]
        if layer.format == "vmdk":
            layers, _ = VmdkReader(local).chain(extracted.name)
        else:
            layers = [Layer(file=extracted.name, format=layer.format)]
        inner = disk.model_copy(update={"archive": None, "checksum": None, "layers": layers})
        _convert_disk(local, inner, dest, fmt, staging, progress=progress, file=disk.archive)
        return
    top = disk.layers[0]
    if top.format == "vmdk":
        names = [extent.file for layer in disk.layers for extent in layer.extents if extent.file is not None]
        with _opened(root, [top.file, *names], file) as fds:
            if disk.checksum:
                _digest(fds[top.file], disk.checksum, top.file, file)
            descriptor = write_descriptors(disk.layers, fds, staging, file)
            qemu_img.convert(descriptor, "vmdk", dest, fmt, progress=progress)
        return
    if len(disk.layers) > 1:  # a VHD/VHDX differencing chain: merged here, qemu reads none of them
        chain = vhd.chain(root, top.file, top.format, file=file, field=disk.label)
        merged = staging / "merged.raw"
        fd = os.open(merged, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            vhd.merge(root, chain, fd, file=file, progress=(lambda pct: progress(pct / 2)) if progress else None)
        finally:
            os.close(fd)
        qemu_img.convert(merged, "raw", dest, fmt,
                         progress=(lambda pct: progress(50 + pct / 2)) if progress else None)
        merged.unlink()
        return
    with _opened(root, [top.file], file) as fds:
        fd = fds[top.file]
        if disk.checksum:
            _digest(fd, disk.checksum, top.file, file)
        source = proc_path(fd)
        if top.format != "raw":
            # Refuses backing files and external data files; bounded in memory and CPU like OpenStack does.
            try:
                qemu_img.inspect_untrusted(source, top.format, [])
            except InvalidSpec as exc:  # it names the file by our descriptor's number: name it as the user knows it
                problem = re.sub(rf"^{re.escape(source.name)}\b", top.file, exc.problem)
                raise SourceError(file, exc.field, problem) from None
        qemu_img.convert(source, top.format, dest, fmt, progress=progress)
