"""OVA extraction against hostile archives: every refusal happens before anything is written, or cleans it up."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from virtfleet.errors import Conflict, InvalidSpec, NotFound
from virtfleet.storage.archive import MAX_MEMBERS, OvaDisk, extract_ova_disks, safe_members

MiB = 1 << 20
OVF = b'<?xml version="1.0"?><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>'
DISK = bytes(range(256)) * 40  # stands in for an image: extraction never looks inside
OTHER = b"\x01" * 3000  # not a multiple of the 512-byte tar block

Member = tuple[tarfile.TarInfo, bytes | None]


def regular(name: str, data: bytes = b"") -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, None


def sha256_manifest(files: dict[str, bytes]) -> bytes:
    return "".join(f"SHA256({name})= {hashlib.sha256(data).hexdigest()}\n" for name, data in files.items()).encode()


def write_tar(path: Path, members: Iterable[Member], mode: str = "w") -> Path:
    # GNU format keeps names as given (leading '/', '..'); tarfile never sanitizes what it writes.
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def ova(path: Path, disks: dict[str, bytes], *, manifest: bool = True, extra: Iterable[Member] = ()) -> Path:
    members = [regular("vm.ovf", OVF)]
    if manifest:
        members.append(regular("vm.mf", sha256_manifest({"vm.ovf": OVF, **disks})))
    members += [regular(name, data) for name, data in disks.items()]
    return write_tar(path, [*members, *extra])


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    directory = tmp_path / "dest"
    directory.mkdir()
    return directory


def refused(archive: Path, dest: Path, *, max_bytes: int | None = None) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as caught:
        extract_ova_disks(archive, dest, max_bytes=max_bytes)
    assert caught.value.field == "archive"
    assert list(dest.iterdir()) == []
    return caught.value


# --- good archives ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) is not installed")
def test_real_stream_optimized_vmdk(tmp_path: Path, dest: Path) -> None:
    from virtfleet.storage.qemu_img import inspect_untrusted

    vmdk = tmp_path / "disk1.vmdk"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", str(vmdk), "1M"], check=True
    )
    data = vmdk.read_bytes()
    archive = ova(tmp_path / "vm.ova", {"disk1.vmdk": data})

    disks = extract_ova_disks(archive, dest)

    assert disks == [OvaDisk(name="disk1.vmdk", path=dest / "disk1.vmdk", format="vmdk")]
    assert disks[0].path.read_bytes() == data
    assert sorted(p.name for p in dest.iterdir()) == ["disk1.vmdk"]  # no .ovf, no .mf
    image = inspect_untrusted(disks[0].path, disks[0].format, [dest])
    assert image.format == "vmdk" and image.virtual_size == MiB


def test_formats_by_extension_and_other_files_skipped(tmp_path: Path, dest: Path) -> None:
    names = {"a.vmdk": "vmdk", "b.qcow2": "qcow2", "c.img": "raw", "d.RAW": "raw", "e.vhd": "vpc", "f.vhdx": "vhdx"}
    files = {name: DISK + name.encode() for name in names}
    extra = [regular("cdrom.iso", OTHER), regular("vm.nvram", OTHER)]
    disks = extract_ova_disks(ova(tmp_path / "vm.ova", files, extra=extra), dest)

    assert [(d.name, d.format) for d in disks] == list(names.items())
    assert sorted(p.name for p in dest.iterdir()) == sorted(names)
    for disk in disks:
        assert disk.path.read_bytes() == files[disk.name]


def test_no_manifest_dot_slash_and_subdirectory(tmp_path: Path, dest: Path) -> None:
    members = [
        regular("./vm.ovf", OVF),
        special("disks", tarfile.DIRTYPE),
        regular("disks/disk1.vmdk", DISK),
        regular("./disk2.vmdk", OTHER),
    ]
    disks = extract_ova_disks(write_tar(tmp_path / "vm.ova", members), dest)

    assert disks == [
        OvaDisk("disks/disk1.vmdk", dest / "disk1.vmdk", "vmdk"),
        OvaDisk("disk2.vmdk", dest / "disk2.vmdk", "vmdk"),
    ]
    assert (dest / "disk1.vmdk").read_bytes() == DISK


def test_sha1_and_sha512_manifest(tmp_path: Path, dest: Path) -> None:
    manifest = (
        f"SHA1(vm.ovf)= {hashlib.sha1(OVF, usedforsecurity=False).hexdigest()}\n"  # OVF 1.x manifests use SHA1
        f"SHA1(disk.vmdk)= {hashlib.sha1(DISK, usedforsecurity=False).hexdigest().upper()}\n"
        f"SHA512 (disk.vmdk) = {hashlib.sha512(DISK).hexdigest()}\n"
    ).encode()
    members = [regular("vm.ovf", OVF), regular("vm.mf", manifest), regular("disk.vmdk", DISK)]
    disks = extract_ova_disks(write_tar(tmp_path / "vm.ova", members), dest)
    assert [d.name for d in disks] == ["disk.vmdk"]


# --- hostile members ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../evil.vmdk",
        "/etc/evil.vmdk",
        "a/../../b.vmdk",
        "a/../b.vmdk",
        "./../evil.vmdk",
        "..",
        "a\\..\\evil.vmdk",
        "a//b.vmdk",
        "a/./b.vmdk",
        "evil\n.vmdk",
    ],
)
def test_unsafe_names_refused(tmp_path: Path, dest: Path, name: str) -> None:
    # A good disk comes first: refusing must happen before anything is extracted.
    archive = ova(tmp_path / "vm.ova", {"good.vmdk": DISK}, extra=[regular(name, DISK)])
    with tarfile.open(archive) as tar:
        assert name in tar.getnames()  # the hostile name really is in the archive as written

    error = refused(archive, dest)
    assert repr(name) in error.problem
    assert not (tmp_path / "evil.vmdk").exists() and not (tmp_path / "b.vmdk").exists()


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (special("disk.vmdk", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (special("disk.vmdk", tarfile.LNKTYPE, "vm.ovf"), "hard link"),
        (special("disk.vmdk", tarfile.CHRTYPE), "device"),
        (special("disk.vmdk", tarfile.BLKTYPE), "device"),
        (special("disk.vmdk", tarfile.FIFOTYPE), "FIFO"),
        (special("disk.vmdk", b"V"), "not a regular file"),
    ],
    ids=["symlink", "hardlink", "chardev", "blockdev", "fifo", "volume-label"],
)
def test_non_regular_members_refused(tmp_path: Path, dest: Path, member: Member, why: str) -> None:
    archive = ova(tmp_path / "vm.ova", {"good.vmdk": DISK}, extra=[member])
    error = refused(archive, dest)
    assert "'disk.vmdk'" in error.problem and why in error.problem


def test_duplicate_member_refused(tmp_path: Path, dest: Path) -> None:
    # The second copy would be the one on disk, after the first passed the manifest check.
    archive = ova(tmp_path / "vm.ova", {"disk.vmdk": DISK}, extra=[regular("./disk.vmdk", OTHER)])
    assert "more than once" in refused(archive, dest).problem


def test_same_basename_in_two_directories_refused(tmp_path: Path, dest: Path) -> None:
    archive = write_tar(
        tmp_path / "vm.ova", [regular("vm.ovf", OVF), regular("a/disk.vmdk", DISK), regular("b/disk.vmdk", OTHER)]
    )
    assert "two disks named 'disk.vmdk'" in refused(archive, dest).problem


def test_too_many_members_refused(tmp_path: Path, dest: Path) -> None:
    fillers = [regular(f"notes/{i}.txt", b"x") for i in range(MAX_MEMBERS)]
    archive = ova(tmp_path / "vm.ova", {"disk.vmdk": DISK}, manifest=False, extra=fillers)
    assert f"more than {MAX_MEMBERS} members" in refused(archive, dest).problem


def test_safe_members_directly(tmp_path: Path) -> None:
    members = [special(".", tarfile.DIRTYPE), regular("./vm.ovf", OVF), special("d", tarfile.DIRTYPE)]
    archive = write_tar(tmp_path / "x.tar", [*members, *(regular(f"d/{i}", b"") for i in range(MAX_MEMBERS - 3))])
    with tarfile.open(archive) as tar:
        files = safe_members(tar)
    assert [m.name for m in files] == ["./vm.ovf", *(f"d/{i}" for i in range(MAX_MEMBERS - 3))]

    write_tar(tmp_path / "y.tar", [*members, *(regular(f"d/{i}", b"") for i in range(MAX_MEMBERS - 2))])
    with tarfile.open(tmp_path / "y.tar") as tar, pytest.raises(InvalidSpec) as caught:
        safe_members(tar)
    assert caught.value.field == "archive"


# --- manifest -----------------------------------------------------------------------------------------------------


def test_manifest_mismatch_removes_everything(tmp_path: Path, dest: Path) -> None:
    manifest = sha256_manifest({"vm.ovf": OVF, "disk1.vmdk": DISK, "disk2.vmdk": DISK})  # disk2 really is OTHER
    members = [
        regular("vm.ovf", OVF),
        regular("vm.mf", manifest),
        regular("disk1.vmdk", DISK),
        regular("disk2.vmdk", OTHER),
    ]
    error = refused(write_tar(tmp_path / "vm.ova", members), dest)  # disk1 was extracted, then removed
    assert "'disk2.vmdk'" in error.problem and "checksum mismatch" in error.problem


def test_manifest_after_the_disks_still_checked(tmp_path: Path, dest: Path) -> None:
    members = [
        regular("vm.ovf", OVF),
        regular("disk.vmdk", OTHER),
        regular("vm.mf", sha256_manifest({"disk.vmdk": DISK})),
    ]
    assert "checksum mismatch" in refused(write_tar(tmp_path / "vm.ova", members), dest).problem


def test_disk_missing_from_manifest_refused(tmp_path: Path, dest: Path) -> None:
    members = [
        regular("vm.ovf", OVF),
        regular("vm.mf", sha256_manifest({"disk1.vmdk": DISK})),
        regular("disk1.vmdk", DISK),
        regular("disk2.vmdk", OTHER),
    ]
    assert "not listed in the manifest" in refused(write_tar(tmp_path / "vm.ova", members), dest).problem


@pytest.mark.parametrize(
    "line",
    ["MD5(disk.vmdk)= " + "0" * 32, "SHA256(disk.vmdk)= abc", "SHA256(disk.vmdk) " + "0" * 64, "garbage"],
)
def test_unreadable_manifest_refused(tmp_path: Path, dest: Path, line: str) -> None:
    manifest = sha256_manifest({"disk.vmdk": DISK}) + line.encode() + b"\n"
    members = [regular("vm.ovf", OVF), regular("vm.mf", manifest), regular("disk.vmdk", DISK)]
    assert "manifest line" in refused(write_tar(tmp_path / "vm.ova", members), dest).problem


# --- the archive as a whole ---------------------------------------------------------------------------------------


def test_no_ovf_refused(tmp_path: Path, dest: Path) -> None:
    archive = write_tar(tmp_path / "vm.ova", [regular("disk.vmdk", DISK)])
    assert "exactly one .ovf" in refused(archive, dest).problem


def test_ovf_only_in_subdirectory_refused(tmp_path: Path, dest: Path) -> None:
    archive = write_tar(tmp_path / "vm.ova", [regular("sub/vm.ovf", OVF), regular("disk.vmdk", DISK)])
    assert "exactly one .ovf" in refused(archive, dest).problem


def test_two_ovf_refused(tmp_path: Path, dest: Path) -> None:
    archive = ova(tmp_path / "vm.ova", {"disk.vmdk": DISK}, manifest=False, extra=[regular("other.OVF", OVF)])
    assert "exactly one .ovf" in refused(archive, dest).problem


def test_no_disk_refused(tmp_path: Path, dest: Path) -> None:
    assert "no disk image" in refused(ova(tmp_path / "vm.ova", {}), dest).problem


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz"])
def test_compressed_tar_refused(tmp_path: Path, dest: Path, mode: str) -> None:
    members = [regular("vm.ovf", OVF), regular("disk.vmdk", DISK)]
    archive = write_tar(tmp_path / "vm.ova", members, mode)
    assert "compressed" in refused(archive, dest).problem


def test_not_a_tar_refused(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "vm.ova"
    archive.write_bytes(b"KDMV" + b"\x00" * 4096)
    assert "not a tar archive" in refused(archive, dest).problem


def test_truncated_archive_refused(tmp_path: Path, dest: Path) -> None:
    archive = ova(tmp_path / "vm.ova", {"disk.vmdk": DISK})
    data = archive.read_bytes()
    archive.write_bytes(data[: data.index(DISK) + len(DISK) // 2])
    refused(archive, dest)


def test_max_bytes(tmp_path: Path, dest: Path) -> None:
    archive = ova(tmp_path / "vm.ova", {"disk1.vmdk": DISK, "disk2.vmdk": OTHER})
    total = len(DISK) + len(OTHER)

    assert "more than the limit" in refused(archive, dest, max_bytes=total - 1).problem

    disks = extract_ova_disks(archive, dest, max_bytes=total)
    assert [d.name for d in disks] == ["disk1.vmdk", "disk2.vmdk"]


def test_existing_destination_is_a_conflict_and_kept(tmp_path: Path, dest: Path) -> None:
    (dest / "disk2.vmdk").write_bytes(b"mine")
    archive = ova(tmp_path / "vm.ova", {"disk1.vmdk": DISK, "disk2.vmdk": OTHER})
    with pytest.raises(Conflict):
        extract_ova_disks(archive, dest)
    assert [p.name for p in dest.iterdir()] == ["disk2.vmdk"]
    assert (dest / "disk2.vmdk").read_bytes() == b"mine"


def test_symlink_at_destination_not_followed(tmp_path: Path, dest: Path) -> None:
    target = tmp_path / "target"
    (dest / "disk.vmdk").symlink_to(target)
    with pytest.raises(Conflict):
        extract_ova_disks(ova(tmp_path / "vm.ova", {"disk.vmdk": DISK}), dest)
    assert not target.exists()


def test_missing_archive(tmp_path: Path, dest: Path) -> None:
    with pytest.raises(NotFound):
        extract_ova_disks(tmp_path / "nope.ova", dest)
