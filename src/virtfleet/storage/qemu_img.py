"""A typed wrapper around the qemu-img binary.

Every call names the image format explicitly: qemu-img never probes it, because probing untrusted content is how a
"raw" guest disk that starts with a qcow2 header gets a backing file of the attacker's choosing. Paths are passed
absolute, so qemu never reads a name like "nbd:host" or "json:{...}" as a protocol rather than a file.

Only `info` and `inspect_untrusted` are meant for images of unknown origin: `info` does not open the backing chain
(qemu-img info opens only the named file unless --backing-chain is given). Everything else (chain, convert, commit,
snapshots) opens backing files and must only see images already accepted by `inspect_untrusted`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from virtfleet.errors import Conflict, DriverError, InsufficientStorage, InvalidSpec, NotFound, VirtfleetError
from virtfleet.hostcmd import Limits, run_tool, running
from virtfleet.model.units import format_size

QEMU_IMG = "qemu-img"
UNTRUSTED_FORMATS = frozenset({"qcow2", "raw", "vmdk", "vhdx", "vpc", "vdi"})
PREALLOCATION_MODES = frozenset({"off", "metadata", "falloc", "full"})

# qemu-img info on a crafted image can burn memory and CPU (huge L1 or snapshot tables): bound it like OpenStack does.
INFO_TIMEOUT = 60.0
UNTRUSTED_LIMITS = Limits(cpu_seconds=30, address_space=1 << 30)
# A conversion is bounded in time by what it has to do: read the allocated data at no less than CONVERT_DATA_RATE
# and walk the virtual size at no less than CONVERT_SCAN_RATE (a sparse vhdx walks at ~25 GiB/s here), after
# CONVERT_BASE_SECONDS of slack. Its CPU time has the same bound; 1 GiB of address space was measured to suffice.
CONVERT_BASE_SECONDS = 300.0
CONVERT_DATA_RATE = 16 << 20
CONVERT_SCAN_RATE = 2 << 30
CONVERT_ADDRESS_SPACE = 2 << 30
_NO_SPACE = ("No space left on device", "Disk quota exceeded")

_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
_VMDK4_MAGIC = b"KDMV"
_VMDK3_MAGIC = b"COWD"


class QemuImgError(DriverError):
    """qemu-img ran and failed; `cause` is what it printed on stderr, on one line."""


@dataclass(frozen=True)
class InternalSnapshot:
    id: str
    name: str
    vm_state_size: int
    date: datetime


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    format: str
    virtual_size: int
    actual_size: int
    backing_file: str | None
    backing_format: str | None
    dirty: bool | None = None
    snapshots: tuple[InternalSnapshot, ...] = ()
    # A qcow2 image can keep its guest data in another file its header names; QEMU opens that file with the image,
    # and no -blockdev option can tell it not to: such images are refused wherever they show up.
    data_file: str | None = None


# --- running qemu-img ---------------------------------------------------------------------------------------------


def _binary() -> str:
    found = shutil.which(QEMU_IMG)
    if found is None:
        raise DriverError(f"{QEMU_IMG} not found", "install it with: apt-get install qemu-utils")
    return found


def _arg(path: Path) -> str:
    """Absolute, so a name with ':' before its first '/' is never read as a protocol (nbd:, json:, http:)."""
    return os.path.abspath(path)


def _backing_arg(backing: Path) -> str:
    # A relative backing name is stored as given and resolved against the image's directory: keep it relative
    # (portable chains) but make sure it cannot be read as a protocol.
    name = str(backing)
    return f"./{name}" if has_protocol(name) else name


def has_protocol(name: str) -> bool:
    """qemu's own rule (pathhas_protocol): a ':' before the first '/' makes the name a protocol or json: spec."""
    colon = name.find(":")
    slash = name.find("/")
    return colon != -1 and (slash == -1 or colon < slash)


def _one_line(stderr: str) -> str:
    lines = [line.strip().removeprefix("qemu-img: ") for line in stderr.splitlines() if line.strip()]
    # qemu-img prints warnings before the error; the error is what explains the failure.
    errors = [line for line in lines if not line.startswith("warning:")]
    return " ".join(errors or lines) or "no error message"


def _out_of_space(what: str, error: QemuImgError) -> VirtfleetError:
    """A write that failed for want of space is the pool's state, not qemu-img's fault: say so (HTTP 507)."""
    if error.cause is not None and any(message in error.cause for message in _NO_SPACE):
        return InsufficientStorage(f"{what}: {error.cause}")
    return error


def _run(args: Sequence[str], *, timeout: float | None = None, limited: bool = False) -> str:
    what = f"qemu-img {args[0]} failed"
    try:
        return run_tool([_binary(), *args], what=what, timeout=timeout, error=QemuImgError, condense=_one_line,
                        limits=UNTRUSTED_LIMITS if limited else None).stdout
    except QemuImgError as error:
        raise _out_of_space(what, error) from error


# --- reading images -----------------------------------------------------------------------------------------------


def _snapshot(data: dict[str, Any]) -> InternalSnapshot:
    date = datetime.fromtimestamp(int(data.get("date-sec", 0)) + int(data.get("date-nsec", 0)) / 1e9, tz=UTC)
    return InternalSnapshot(str(data["id"]), str(data["name"]), int(data.get("vm-state-size", 0)), date)


def _image_info(data: dict[str, Any], path: Path) -> ImageInfo:
    return ImageInfo(
        path=path,
        format=str(data["format"]),
        virtual_size=int(data["virtual-size"]),
        actual_size=int(data.get("actual-size", 0)),
        backing_file=data.get("backing-filename"),
        backing_format=data.get("backing-filename-format"),
        dirty=data.get("dirty-flag"),
        snapshots=tuple(_snapshot(item) for item in data.get("snapshots", ())),
        data_file=_data_file(data),
    )


def _data_file(data: dict[str, Any]) -> str | None:
    specific = data.get("format-specific") or {}
    if specific.get("type") != "qcow2":
        return None
    name = (specific.get("data") or {}).get("data-file")
    return None if name is None else str(name)


def _info_json(path: Path, fmt: str, *, limited: bool = False) -> dict[str, Any]:
    # -U: a running QEMU holds a write lock on its disks; reading metadata must still work.
    out = _run(["info", "-f", fmt, "--output=json", "-U", _arg(path)], timeout=INFO_TIMEOUT, limited=limited)
    data: dict[str, Any] = json.loads(out)
    return data


def info(path: Path, fmt: str) -> ImageInfo:
    """The image's metadata, read as `fmt` (never probed), without opening its backing chain."""
    return _image_info(_info_json(path, fmt), path)


def chain(path: Path, fmt: str) -> list[ImageInfo]:
    """The image and every backing file below it, top first. Opens the whole chain: only for trusted images."""
    out = _run(["info", "-f", fmt, "--output=json", "-U", "--backing-chain", _arg(path)], timeout=INFO_TIMEOUT)
    entries: list[dict[str, Any]] = json.loads(out)
    return [_image_info(entry, path if i == 0 else Path(str(entry["filename"]))) for i, entry in enumerate(entries)]


# --- changing images ----------------------------------------------------------------------------------------------


def _refuse_existing(path: Path) -> None:
    # qemu-img create and convert silently truncate an existing file: never let them clobber a disk.
    if os.path.lexists(path):
        raise Conflict(f"{path} already exists")


def _check_size(size_bytes: int) -> None:
    if size_bytes <= 0:
        raise InvalidSpec("size", f"must be a positive number of bytes, not {size_bytes}")


def create(
    path: Path,
    fmt: str,
    size_bytes: int,
    *,
    backing: Path | None = None,
    backing_fmt: str | None = None,
    preallocation: str | None = None,
) -> None:
    _check_size(size_bytes)
    _refuse_existing(path)
    args = ["create", "-q", "-f", fmt]
    if backing is not None:
        if backing_fmt is None:
            # Without it qemu would probe the backing file's format every time it opens the overlay.
            raise InvalidSpec("backing_format", "is required with a backing file")
        # -u: the size and format are given, so the backing file is not opened (a running VM may hold its lock).
        args += ["-u", "-b", _backing_arg(backing), "-F", backing_fmt]
    if preallocation is not None:
        if preallocation not in PREALLOCATION_MODES:
            raise InvalidSpec("preallocation", f"must be one of {', '.join(sorted(PREALLOCATION_MODES))}")
        args += ["-o", f"preallocation={preallocation}"]
    _run([*args, _arg(path), str(size_bytes)])


def resize(path: Path, fmt: str, size_bytes: int, *, shrink: bool = False) -> None:
    _check_size(size_bytes)
    current = info(path, fmt).virtual_size
    if size_bytes < current and not shrink:
        raise InvalidSpec(
            "size", f"{size_bytes} bytes would shrink {path.name} from {current} bytes and lose the data past the end"
        )
    _run(["resize", "-q", "-f", fmt, *(["--shrink"] if shrink else []), _arg(path), str(size_bytes)])


def _progress_values(fd: int) -> Iterator[float]:
    """Percentages from `qemu-img convert -p`, which rewrites one line with '\\r' as it goes."""
    pending = b""
    while chunk := os.read(fd, 4096):
        *parts, pending = re.split(rb"[\r\n]", pending + chunk)
        for part in parts:
            match = _PROGRESS.search(part)
            if match:
                yield float(match.group(1))
    match = _PROGRESS.search(pending)
    if match:
        yield float(match.group(1))


def convert(
    src: Path, src_fmt: str, dst: Path, dst_fmt: str, *, progress: Callable[[float], None] | None = None,
    direct: bool = False, options: Sequence[str] = (),
) -> None:
    """Copy `src` into a new image `dst`; on any failure (or an exception from `progress`) `dst` is removed.

    direct: write with O_DIRECT (-t none), for copies that are fsynced anyway: the data does not go through the
    page cache, so the final fsync is nearly free; file systems without O_DIRECT (tmpfs) fall back to the cache.
    """
    cache = ["-t", "none"] if direct and _supports_direct(dst) else []
    # options: creation options of the target (e.g. subformat=streamOptimized for a vmdk meant for an OVA).
    _convert(src, src_fmt, dst, dst_fmt, progress, [*cache, *(["-o", ",".join(options)] if options else [])])


def _supports_direct(dst: Path) -> bool:
    """Can the target's directory take O_DIRECT writes (tmpfs cannot)?"""
    probe = dst.with_name(f".{dst.name}.direct-probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    probe.unlink(missing_ok=True)
    return True


def convert_timeout(source: ImageInfo) -> float:
    """How long converting `source` may take before it is stopped (see CONVERT_DATA_RATE)."""
    return CONVERT_BASE_SECONDS + source.actual_size / CONVERT_DATA_RATE + source.virtual_size / CONVERT_SCAN_RATE


def _convert(src: Path, src_fmt: str, dst: Path, dst_fmt: str, progress: Callable[[float], None] | None,
             extra: list[str]) -> None:
    _refuse_existing(dst)
    timeout = convert_timeout(info(src, src_fmt))
    limits = Limits(cpu_seconds=math.ceil(timeout), address_space=CONVERT_ADDRESS_SPACE)
    argv = [_binary(), "convert", "-p", *extra, "-f", src_fmt, "-O", dst_fmt, _arg(src), _arg(dst)]
    what = "qemu-img convert failed"
    # stderr goes to a file, not a pipe, so a chatty qemu-img never blocks while we only read stdout.
    with tempfile.TemporaryFile() as stderr:
        try:
            with running(argv, what=what, timeout=timeout, error=QemuImgError, limits=limits, stderr=stderr) as run:
                assert run.proc.stdout is not None  # noqa: S101 - stdout=PIPE
                with run.proc.stdout:
                    last = -1.0
                    for percent in _progress_values(run.proc.stdout.fileno()):
                        if progress is not None and percent > last:
                            last = percent
                            progress(percent)
                returncode = run.proc.wait()
            run.check_killed()
            if returncode != 0:
                stderr.seek(0)
                raise _out_of_space(what, QemuImgError(what, _one_line(stderr.read().decode(errors="replace"))))
            if progress is not None and last < 100.0:
                progress(100.0)
        except BaseException:
            dst.unlink(missing_ok=True)
            raise


def rebase_unsafe(path: Path, fmt: str, backing: Path, backing_fmt: str) -> None:
    """Rewrite the backing file name in the header only (no data is compared or copied)."""
    _run(["rebase", "-q", "-u", "-f", fmt, "-b", _backing_arg(backing), "-F", backing_fmt, _arg(path)])


def commit(path: Path, fmt: str) -> None:
    """Write the overlay's data into its backing file (the overlay is emptied)."""
    _run(["commit", "-q", "-f", fmt, _arg(path)])


# --- internal snapshots (qcow2, stopped images only) --------------------------------------------------------------


def _image_opts(path: Path, fmt: str) -> str:
    # `qemu-img snapshot` has no -f: --image-opts is the only way to name the format instead of probing it.
    # Commas are doubled because they separate options.
    return f"driver={fmt},file.driver=file,file.filename={_arg(path).replace(',', ',,')}"


def _check_snapshot_name(name: str) -> None:
    # qemu looks a snapshot up by id before name, so a numeric name could select another snapshot.
    if not name or name.isdigit() or not name.isprintable():
        raise InvalidSpec("name", f"snapshot name {name!r} must be printable text and not only digits")


def snapshot_list(path: Path, fmt: str) -> list[InternalSnapshot]:
    return list(info(path, fmt).snapshots)


def snapshot_create(path: Path, fmt: str, name: str) -> None:
    _check_snapshot_name(name)
    # qemu-img happily creates two snapshots with one name; later -a/-d would pick one of them.
    if any(snap.name == name for snap in snapshot_list(path, fmt)):
        raise Conflict(f"{path.name} already has a snapshot named '{name}'")
    _run(["snapshot", "-q", "--image-opts", "-c", name, _image_opts(path, fmt)])


def _existing_snapshot(path: Path, fmt: str, name: str) -> None:
    _check_snapshot_name(name)
    if not any(snap.name == name for snap in snapshot_list(path, fmt)):
        raise NotFound("snapshot", name)


def snapshot_apply(path: Path, fmt: str, name: str) -> None:
    _existing_snapshot(path, fmt, name)
    _run(["snapshot", "-q", "--image-opts", "-a", name, _image_opts(path, fmt)])


def snapshot_delete(path: Path, fmt: str, name: str) -> None:
    _existing_snapshot(path, fmt, name)
    _run(["snapshot", "-q", "--image-opts", "-d", name, _image_opts(path, fmt)])


# --- images of unknown origin -------------------------------------------------------------------------------------


def inside(real: str, roots: Sequence[Path]) -> bool:
    for root in roots:
        base = os.path.realpath(root)
        if real != base and os.path.commonpath([real, base]) == base:
            return True
    return False


def _check_vmdk_header(path: Path) -> None:
    """Only single-file VMDKs: a descriptor's extents (and a sparse header's embedded one) can name any file."""
    with open(path, "rb") as f:
        header = f.read(512)
    if header[:4] == _VMDK3_MAGIC:
        return
    # VMDK4 header: magic, version, flags (u32 each), then capacity (u64); capacity 0 means "see the descriptor".
    if header[:4] == _VMDK4_MAGIC and len(header) >= 20 and struct.unpack_from("<Q", header, 12)[0] != 0:
        return
    raise InvalidSpec("format", f"{path.name} is not a single-file (monolithic or stream-optimized) vmdk image")


def _check_format_specific(path: Path, fmt: str, data: dict[str, Any]) -> None:
    specific = data.get("format-specific", {}).get("data", {})
    if specific.get("corrupt"):
        raise InvalidSpec("format", f"{path.name} is marked corrupt by qemu")
    data_file = _data_file(data)
    if data_file is not None:
        # info does not open the data file, but convert and QEMU would read it: refuse like a backing file.
        raise InvalidSpec("data_file", f"{path.name} keeps its data in another file ({data_file!r})")
    if fmt == "vmdk":
        own = os.path.realpath(path)
        for extent in specific.get("extents", ()):
            if os.path.realpath(str(extent.get("filename", ""))) != own:
                raise InvalidSpec("format", f"{path.name} has an extent in another file ({extent.get('filename')!r})")


def _check_backing(path: Path, image: ImageInfo, roots: Sequence[Path]) -> None:
    backing = image.backing_file
    if backing is None:
        return
    if has_protocol(backing):
        raise InvalidSpec("backing_file", f"{path.name} names its backing file as a protocol: {backing[:200]!r}")
    resolved = os.path.realpath(os.path.join(os.path.dirname(_arg(path)), backing))
    if not inside(resolved, roots):
        raise InvalidSpec(
            "backing_file", f"{path.name} has a backing file that points outside the storage pools: {resolved}"
        )
    if image.backing_format not in UNTRUSTED_FORMATS:
        raise InvalidSpec(
            "backing_format", f"{path.name} must declare its backing file's format (one of {_formats()}), not probe it"
        )


def _formats() -> str:
    return ", ".join(sorted(UNTRUSTED_FORMATS))


def inspect_untrusted(
    path: Path, fmt: str, allowed_roots: Sequence[Path], *, max_virtual_size: int | None = None
) -> ImageInfo:
    """Check an image a user handed us (upload, import) before anything opens it for real.

    It must be a valid `fmt` image that reads no other file: a backing file must resolve inside `allowed_roots`,
    and protocol or json: backing names, qcow2 external data files and multi-file vmdks are refused.
    """
    if fmt not in UNTRUSTED_FORMATS:
        raise InvalidSpec("format", f"{fmt!r} is not accepted for imported images (use one of {_formats()})")
    if not path.is_file():
        raise NotFound("image file", str(path))
    if fmt == "vmdk":
        _check_vmdk_header(path)
    try:
        data = _info_json(path, fmt, limited=True)
    except QemuImgError as exc:
        raise InvalidSpec("format", f"{path.name} is not a valid {fmt} image: {exc.cause}") from exc
    image = _image_info(data, path)
    # Before anything reads the image further: a tiny file can claim a size that takes hours to walk.
    if max_virtual_size is not None and image.virtual_size > max_virtual_size:
        raise InvalidSpec("virtual_size", f"{path.name} claims a virtual size of {format_size(image.virtual_size)} "
                                          f"({image.virtual_size} bytes), more than the largest volume this server "
                                          f"accepts ({format_size(max_virtual_size)})")
    _check_format_specific(path, fmt, data)
    _check_backing(path, image, allowed_roots)
    return image
