"""Nothing an imported file names is read outside the import directory: every trick is refused with its reason, and a
recognizable host file never lands in a converted image."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
import tarfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest

from tests.v2v_stage import MiB, make_disk, qemu_img
from virtfleet.errors import InvalidSpec
from virtfleet.v2v.convert import convert_disk
from virtfleet.v2v.files import ImportDir
from virtfleet.v2v.model import SourceVm
from virtfleet.v2v.sources import read_source

MARKER = b"VIRTFLEET-HOST-SECRET-0123456789"


@pytest.fixture
def host_file(tmp_path: Path) -> Path:
    """A file outside the import directory that no import may ever read: 1 MiB of a recognizable pattern."""
    secret = tmp_path / "host" / "shadow"
    secret.parent.mkdir()
    secret.write_bytes(MARKER * (MiB // len(MARKER)))
    return secret


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "import"
    path.mkdir()
    return path


def read(root: Path, rel: str, **kwargs: object) -> SourceVm:
    return read_source(ImportDir(root, **kwargs), rel)  # type: ignore[arg-type]


def refused(root: Path, rel: str, *words: str) -> str:
    with pytest.raises(InvalidSpec) as error:
        read(root, rel)
    message = error.value.message
    for word in words:
        assert word in message, message
    return message


def descriptor(*extents: str, parent: str | None = None, cid: str = "fffffffe", parent_cid: str = "ffffffff") -> str:
    lines = ["# Disk DescriptorFile", "version=1", f"CID={cid}", f"parentCID={parent_cid}",
             'createType="twoGbMaxExtentFlat"', *([f'parentFileNameHint="{parent}"'] if parent else []), *extents]
    return "\n".join(lines) + "\n"


def vmx_for(root: Path, disk: str) -> str:
    (root / "vm.vmx").write_text(f'displayName = "vm"\nmemsize = "256"\nscsi0.present = "TRUE"\n'
                                 f'scsi0:0.present = "TRUE"\nscsi0:0.deviceType = "scsi-hardDisk"\n'
                                 f'scsi0:0.fileName = "{disk}"\n')
    return "vm.vmx"


# --- VMDK extents and parents ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("extent", "reason"), [
    ('"/etc/shadow"', "absolute path"),
    ('"/dev/sda"', "absolute path"),
    ('"../host/shadow"', "'..'"),
    ('"sub/../../host/shadow"', "'..'"),
    ('"nbd:127.0.0.1:10809"', "protocol"),
    ('"json:{}"', "protocol"),
])
def test_a_vmdk_extent_outside_the_import_directory_is_refused(root: Path, host_file: Path, extent: str,
                                                               reason: str) -> None:
    (root / "disk.vmdk").write_text(descriptor(f"RW 2048 FLAT {extent} 0"))
    message = refused(root, vmx_for(root, "disk.vmdk"), "disk.vmdk", "extent 1", reason)
    assert "shadow" not in message or "absolute" in message or "'..'" in message


def test_a_vmdk_extent_that_is_a_link_is_refused_even_inside(root: Path, host_file: Path) -> None:
    (root / "disk-flat.vmdk").symlink_to(host_file)
    (root / "disk.vmdk").write_text(descriptor('RW 2048 FLAT "disk-flat.vmdk" 0'))
    refused(root, vmx_for(root, "disk.vmdk"), "symbolic link")
    (root / "d").symlink_to(host_file.parent, target_is_directory=True)
    (root / "disk.vmdk").write_text(descriptor('RW 2048 FLAT "d/shadow" 0'))
    refused(root, "vm.vmx", "symbolic link")


def test_device_nodes_and_fifos_are_refused(root: Path) -> None:
    os.mkfifo(root / "disk-flat.vmdk")
    (root / "disk.vmdk").write_text(descriptor('RW 2048 FLAT "disk-flat.vmdk" 0'))
    refused(root, vmx_for(root, "disk.vmdk"), "a FIFO")  # and the open did not block on it
    (root / "disk-flat.vmdk").unlink()
    try:
        os.mknod(root / "disk-flat.vmdk", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    except PermissionError:
        pytest.skip("cannot make device nodes here")
    refused(root, "vm.vmx", "a device node")


def test_a_sparse_file_that_hides_a_descriptor_is_refused(root: Path, host_file: Path) -> None:
    # capacity 0 makes qemu read the embedded text as a descriptor that could name any file.
    header = struct.pack("<4sIIQQQQ", b"KDMV", 1, 3, 0, 128, 1, 1).ljust(512, b"\0")
    text = descriptor(f'RW 2048 FLAT "{host_file}" 0').encode().ljust(512, b"\0")
    (root / "disk.vmdk").write_bytes(header + text)
    refused(root, vmx_for(root, "disk.vmdk"), "capacity", "is 0")


def test_a_monolithic_sparse_file_whose_descriptor_names_another_file_is_refused(root: Path) -> None:
    disk = make_disk(root / "disk.vmdk", "vmdk")
    data = bytearray(disk.read_bytes())
    at = data.index(b'SPARSE "disk.vmdk"')
    data[at:at + 18] = b'SPARSE "other.vmd"'
    disk.write_bytes(bytes(data))
    refused(root, vmx_for(root, "disk.vmdk"), "names extents other than the file itself")


def test_snapshot_parents_are_confined_and_checked(root: Path, host_file: Path) -> None:
    make_disk(root / "base-flat.vmdk", "raw", MiB)
    (root / "base.vmdk").write_text(descriptor('RW 2048 FLAT "base-flat.vmdk" 0', cid="0000000a"))
    (root / "top.vmdk").write_text(descriptor('RW 2048 FLAT "base-flat.vmdk" 0', parent=str(host_file),
                                              cid="0000000b", parent_cid="0000000a"))
    refused(root, vmx_for(root, "top.vmdk"), "parentFileNameHint", "absolute")
    (root / "top.vmdk").write_text(descriptor('RW 2048 FLAT "base-flat.vmdk" 0', parent="base.vmdk",
                                              cid="0000000b", parent_cid="0000000c"))
    refused(root, "vm.vmx", "parentCID", "does not match")
    (root / "top.vmdk").write_text(descriptor('RW 2048 FLAT "base-flat.vmdk" 0', parent="top.vmdk",
                                              cid="0000000b", parent_cid="0000000b"))
    refused(root, "vm.vmx", "loops")


# --- the other formats -----------------------------------------------------------------------------------------------
def test_a_qcow2_with_a_backing_file_or_an_external_data_file_is_refused(root: Path, host_file: Path) -> None:
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(host_file), "-F", "raw", str(root / "disk.qcow2"))
    (root / "vm.xml").write_text("<domain><name>vm</name><memory unit='MiB'>256</memory><devices><disk type='file' "
                                 "device='disk'><driver type='qcow2'/><source file='disk.qcow2'/>"
                                 "<target dev='vda'/></disk></devices></domain>")
    refused(root, "vm.xml", "backing file")
    (root / "disk.qcow2").unlink()
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={root / 'data.raw'}", str(root / "disk.qcow2"), "1M")
    refused(root, "vm.xml", "external data file")


@pytest.mark.parametrize("href", ["/etc/shadow", "../host/shadow", "http://example.org/disk.vmdk", "C:\\disk.vmdk"])
def test_ovf_references_outside_the_package_are_refused(root: Path, href: str) -> None:
    ovf = (Path(__file__).parent.parent / "data/v2v/ovf/govmomi-vbox1.ovf").read_text()
    (root / "vm.ovf").write_text(ovf.replace('ovf:href="vbox1.vmdk"', f'ovf:href="{href}"'))
    refused(root, "vm.ovf", "href")


def _ova(root: Path, members: list[tarfile.TarInfo], data: dict[str, bytes]) -> str:
    with tarfile.open(root / "vm.ova", "w", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            payload = data.get(member.name, b"")
            member.size = len(payload) if member.isreg() else 0
            tar.addfile(member, BytesIO(payload) if member.isreg() else None)
    return "vm.ova"


@pytest.mark.parametrize(("make", "reason"), [
    (lambda: tarfile.TarInfo("../vm.ovf"), "'..'"),
    (lambda: tarfile.TarInfo("/vm.ovf"), "absolute"),
    (lambda: _link("disk.vmdk", tarfile.SYMTYPE, "/etc/shadow"), "symbolic link"),
    (lambda: _link("disk.vmdk", tarfile.LNKTYPE, "vm.ovf"), "hard link"),
    (lambda: _link("disk.vmdk", tarfile.CHRTYPE, ""), "device node"),
])
def test_hostile_ova_members_are_refused(root: Path, make: Callable[[], tarfile.TarInfo], reason: str) -> None:
    ovf = (Path(__file__).parent.parent / "data/v2v/ovf/govmomi-vbox1.ovf").read_bytes()
    member = make()
    rel = _ova(root, [tarfile.TarInfo("vm.ovf"), member], {"vm.ovf": ovf, member.name: b"x" * 512})
    refused(root, rel, "vm.ova", reason)


def _link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def test_a_vmx_that_names_a_host_file_never_reads_it(root: Path, host_file: Path) -> None:
    # Absolute paths in configuration files are the old host's: only a file of that name beside the .vmx is used.
    message = refused(root, vmx_for(root, str(host_file)), "does not exist in the import directory")
    assert "shadow" in message


def test_xen_phy_devices_are_refused_unless_an_admin_allowed_them(root: Path) -> None:
    (root / "vm.cfg").write_text('name = "vm"\nmemory = 256\ndisk = [ "phy:/dev/sda,xvda,w" ]\n')
    refused(root, "vm.cfg", "host block device", "VIRTFLEET_IMPORT_DEVICES")
    assert read(root, "vm.cfg", devices=("/dev/sd*",)).disks[0].device == "/dev/sda"
    (root / "vm.cfg").write_text('name = "vm"\nmemory = 256\ndisk = [ "/dev/sda,raw,xvda,rw" ]\n')
    refused(root, "vm.cfg", "host block device")


def test_xl_files_are_parsed_never_run(root: Path, tmp_path: Path) -> None:
    proof = tmp_path / "ran"
    (root / "vm.cfg").write_text(f'import os\nos.system("touch {proof}")\nname = "vm"\n')
    refused(root, "vm.cfg", "line 1", "Python code")
    (root / "vm.cfg").write_text(f'name = __import__("os").system("touch {proof}")\n')
    refused(root, "vm.cfg", "name", "not expressions")
    assert not proof.exists()


def test_xml_entities_and_doctypes_are_refused(root: Path, host_file: Path) -> None:
    (root / "vm.xml").write_text(f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file://{host_file}">]>'
                                 "<domain><name>&x;</name></domain>")
    refused(root, "vm.xml", "vm.xml", "document type declaration")
    laughs = "<!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;'>]><domain>&b;</domain>"
    (root / "vm.xml").write_text(laughs)
    refused(root, "vm.xml", "document type declaration")


# --- conversion: what qemu-img reads is what was checked ------------------------------------------------------------
def test_an_extent_swapped_for_a_link_after_the_plan_is_refused_by_the_job(root: Path, host_file: Path,
                                                                           tmp_path: Path) -> None:
    make_disk(root / "disk-flat.vmdk", "raw", MiB)
    (root / "disk.vmdk").write_text(descriptor('RW 2048 FLAT "disk-flat.vmdk" 0'))
    source = read(root, vmx_for(root, "disk.vmdk"))
    (root / "disk-flat.vmdk").unlink()
    (root / "disk-flat.vmdk").symlink_to(host_file)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(InvalidSpec, match="symbolic link"):
        convert_disk(ImportDir(root), source.disks[0], tmp_path / "out.qcow2", "qcow2", staging)
    assert not (tmp_path / "out.qcow2").exists()


def test_a_sparse_header_changed_after_the_plan_is_refused_by_the_job(root: Path, tmp_path: Path) -> None:
    make_disk(root / "disk-s001.vmdk", "vmdk")
    capacity = 16 * MiB // 512
    (root / "disk.vmdk").write_text(descriptor(f'RW {capacity} SPARSE "disk-s001.vmdk"'))
    source = read(root, vmx_for(root, "disk.vmdk"))
    data = bytearray((root / "disk-s001.vmdk").read_bytes())
    data[12:20] = bytes(8)  # capacity 0: now it would be read as a descriptor
    (root / "disk-s001.vmdk").write_bytes(bytes(data))
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(InvalidSpec, match="capacity"):
        convert_disk(ImportDir(root), source.disks[0], tmp_path / "out.qcow2", "qcow2", staging)


def test_converted_images_never_hold_host_bytes(root: Path, host_file: Path, tmp_path: Path) -> None:
    """Every hostile variant above that still converts (none should) and the legitimate ones: no marker anywhere."""
    outputs = []
    make_disk(root / "good.vmdk", "vmdk")
    subprocess.run(["qemu-io", "-f", "vmdk", "-c", "write -P 0x42 0 1M", str(root / "good.vmdk")], check=True,
                   capture_output=True)
    attempts = {"good.vmdk": None, str(host_file): "does not exist", "../host/shadow": "'..'"}
    for index, (name, error) in enumerate(attempts.items()):
        staging = tmp_path / f"staging{index}"
        staging.mkdir()
        out = tmp_path / f"out{index}.raw"
        try:
            source = read(root, vmx_for(root, name))
            convert_disk(ImportDir(root), source.disks[0], out, "raw", staging)
            outputs.append(out)
            assert error is None
        except InvalidSpec as exc:
            assert error is not None and error in exc.message
    assert outputs
    for out in outputs:
        assert MARKER not in out.read_bytes()
        assert out.read_bytes()[:MiB] == b"\x42" * MiB


# --- checksums from manifests ---------------------------------------------------------------------------------------
def _package(root: Path, digest: str) -> str:
    """A VirtualBox OVF beside its disk and a manifest giving `digest` for the disk (and the right one for the OVF)."""
    import hashlib

    ovf = (Path(__file__).parent.parent / "data/v2v/ovf/govmomi-vbox1.ovf").read_bytes()
    (root / "vm.ovf").write_bytes(ovf)
    make_disk(root / "vbox1.vmdk", "vmdk", MiB, subformat="streamOptimized")
    (root / "vm.mf").write_text(f"SHA256(vm.ovf)= {hashlib.sha256(ovf).hexdigest()}\n"
                                f"SHA256(vbox1.vmdk)= {digest}\n")
    return "vm.ovf"


def test_a_disk_that_does_not_match_its_manifest_is_refused_at_conversion(root: Path, tmp_path: Path) -> None:
    import hashlib

    source = read(root, _package(root, "0" * 64))
    assert source.disks[0].checksum == "SHA256:" + "0" * 64
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(InvalidSpec, match="SHA256 mismatch"):
        convert_disk(ImportDir(root), source.disks[0], tmp_path / "out.qcow2", "qcow2", staging)
    assert not (tmp_path / "out.qcow2").exists()
    good = hashlib.sha256((root / "vbox1.vmdk").read_bytes()).hexdigest()
    (root / "vm.mf").write_text((root / "vm.mf").read_text().replace("0" * 64, good))
    convert_disk(ImportDir(root), read(root, "vm.ovf").disks[0], tmp_path / "out.qcow2", "qcow2", staging)
    assert (tmp_path / "out.qcow2").is_file()


def test_a_tampered_descriptor_or_an_unlisted_disk_is_refused(root: Path) -> None:
    _package(root, "0" * 64)
    (root / "vm.ovf").write_bytes((root / "vm.ovf").read_bytes().replace(b"192", b"193"))
    refused(root, "vm.ovf", "vm.mf", "SHA256 mismatch")
    _package(root, "0" * 64)
    (root / "vm.mf").write_text((root / "vm.mf").read_text().splitlines()[0] + "\n")
    refused(root, "vm.ovf", "vbox1.vmdk is not listed")


def test_an_ova_member_that_does_not_match_its_manifest_is_refused(root: Path, tmp_path: Path) -> None:
    import hashlib

    _package(root, "0" * 64)
    members = {"vm.ovf": (root / "vm.ovf").read_bytes(), "vm.mf": (root / "vm.mf").read_bytes(),
               "vbox1.vmdk": (root / "vbox1.vmdk").read_bytes()}
    rel = _ova(root, [tarfile.TarInfo(name) for name in members], members)
    source = read(root, rel)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(InvalidSpec, match="SHA256 mismatch"):
        convert_disk(ImportDir(root), source.disks[0], tmp_path / "out.qcow2", "qcow2", staging)
    members["vm.mf"] = members["vm.mf"].replace(b"0" * 64, hashlib.sha256(members["vbox1.vmdk"]).hexdigest().encode())
    (root / rel).unlink()
    _ova(root, [tarfile.TarInfo(name) for name in members], members)
    shutil.rmtree(staging)
    staging.mkdir()
    convert_disk(ImportDir(root), read(root, rel).disks[0], tmp_path / "out2.qcow2", "qcow2", staging)
    assert (tmp_path / "out2.qcow2").is_file()


def test_a_name_the_file_system_cannot_hold_is_a_clear_error(root: Path) -> None:
    with pytest.raises(InvalidSpec, match="path"):  # was an OSError (ENAMETOOLONG): a 500 from the API
        read_source(ImportDir(root), ImportDir(root).entry("0" * 1000))


def test_an_xml_declaration_naming_an_unknown_encoding_is_one_clear_error() -> None:
    """Found by the fuzzer: a mutated encoding name reached Python's codec lookup and escaped as a LookupError."""
    from virtfleet.v2v.errors import SourceError
    from virtfleet.v2v.xmlsafe import parse

    with pytest.raises(SourceError) as raised:
        parse(b'<?xml version="1.0" encoding="UT-16"?>\n<a>\xff</a>', "vm.xml")
    assert raised.value.field == "encoding" and "vm.xml" in raised.value.message
