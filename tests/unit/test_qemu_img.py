"""The qemu-img wrapper against the real binary (qemu-utils): fast, no guest is booted."""

from __future__ import annotations

import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from virtfleet.errors import Conflict, DriverError, InvalidSpec, NotFound
from virtfleet.storage import qemu_img
from virtfleet.storage.qemu_img import QemuImgError, inspect_untrusted

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) is not installed")

MiB = 1 << 20


def qcow2(path: Path, size: int = MiB) -> Path:
    qemu_img.create(path, "qcow2", size)
    return path


def overlay(path: Path, backing: str, backing_fmt: str = "raw") -> Path:
    """A qcow2 whose header names `backing`, written without opening it (as an attacker would)."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", backing_fmt, str(path), str(MiB)],
        check=True,
    )
    return path


def qemu_io(path: Path, fmt: str, command: str) -> str:
    done = subprocess.run(["qemu-io", "-f", fmt, "-c", command, str(path)], capture_output=True, text=True, check=True)
    return done.stdout


def holds_pattern(path: Path, fmt: str, byte: int) -> bool:
    """Whether the first 64 KiB of the guest-visible disk are all `byte` (qemu-io exits 1 on a mismatch)."""
    done = subprocess.run(["qemu-io", "-f", fmt, "-c", f"read -P {byte:#x} 0 64k", str(path)], capture_output=True)
    return done.returncode == 0 and b"verification failed" not in done.stdout


# --- info and chain -----------------------------------------------------------------------------------------------


def test_info_qcow2(tmp_path: Path) -> None:
    image = qcow2(tmp_path / "disk.qcow2", 8 * MiB)
    info = qemu_img.info(image, "qcow2")
    assert info.path == image
    assert info.format == "qcow2"
    assert info.virtual_size == 8 * MiB
    assert info.actual_size > 0
    assert info.backing_file is None and info.backing_format is None
    assert info.dirty is False
    assert info.snapshots == ()


def test_info_raw(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * (2 * MiB))
    info = qemu_img.info(image, "raw")
    assert (info.format, info.virtual_size, info.backing_file) == ("raw", 2 * MiB, None)


def test_info_names_the_format_and_never_probes(tmp_path: Path) -> None:
    # A raw disk whose first bytes are a qcow2 header stays raw when we say raw.
    image = overlay(tmp_path / "looks-like-qcow2.raw", "/etc/shadow")
    info = qemu_img.info(image, "raw")
    assert info.format == "raw"
    assert info.backing_file is None


def test_info_does_not_open_the_backing_file_but_chain_does(tmp_path: Path) -> None:
    image = overlay(tmp_path / "dangling.qcow2", "missing.raw")
    info = qemu_img.info(image, "qcow2")
    assert (info.backing_file, info.backing_format) == ("missing.raw", "raw")
    with pytest.raises(QemuImgError) as caught:
        qemu_img.chain(image, "qcow2")
    assert caught.value.cause is not None and "missing.raw" in caught.value.cause


def test_chain_lists_top_first(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * MiB)
    top = tmp_path / "top.qcow2"
    qemu_img.create(top, "qcow2", MiB, backing=Path("base.raw"), backing_fmt="raw")
    images = qemu_img.chain(top, "qcow2")
    assert [i.format for i in images] == ["qcow2", "raw"]
    assert images[0].path == top
    assert images[1].path.resolve() == base.resolve()


def test_errors_are_one_line_from_stderr(tmp_path: Path) -> None:
    with pytest.raises(QemuImgError) as caught:
        qemu_img.info(tmp_path / "nope.qcow2", "qcow2")
    cause = caught.value.cause
    assert cause is not None and "\n" not in cause and "No such file" in cause
    assert not cause.startswith("qemu-img:")
    assert isinstance(caught.value, DriverError)


def test_missing_binary_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu_img, "QEMU_IMG", "qemu-img-not-installed")
    with pytest.raises(DriverError) as caught:
        qemu_img.info(tmp_path / "x.qcow2", "qcow2")
    assert "qemu-utils" in str(caught.value)
    assert not isinstance(caught.value, QemuImgError)


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 is not installed")
def test_info_works_while_qemu_holds_the_image(tmp_path: Path) -> None:
    image = qcow2(tmp_path / "busy.qcow2")
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-S", "-nodefaults", "-display", "none", "-machine", "none", "-monitor", "none",
         "-drive", f"file={image},format=qcow2,if=none,id=d0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30  # QEMU may start slowly on a loaded 2-core host
        while True:  # wait until QEMU holds the write lock
            probe = subprocess.run(["qemu-img", "info", "-f", "qcow2", str(image)], capture_output=True, text=True)
            if "lock" in probe.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert "lock" in probe.stderr
        assert qemu_img.info(image, "qcow2").virtual_size == MiB
        with pytest.raises(QemuImgError, match="lock"):
            qemu_img.snapshot_create(image, "qcow2", "while-running")
    finally:
        qemu.kill()
        qemu.wait()


# --- create, resize, convert, rebase, commit ----------------------------------------------------------------------


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    image = qcow2(tmp_path / "disk.qcow2")
    with pytest.raises(Conflict):
        qemu_img.create(image, "qcow2", MiB)


@pytest.mark.usefixtures("usual_umask")
def test_images_qemu_img_makes_are_private(tmp_path: Path) -> None:
    created = qcow2(tmp_path / "disk.qcow2")
    qemu_img.convert(created, "qcow2", tmp_path / "copy.raw", "raw")
    assert [stat.S_IMODE(p.stat().st_mode) for p in (created, tmp_path / "copy.raw")] == [0o600, 0o600]


def test_create_with_backing_needs_its_format(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec) as caught:
        qemu_img.create(tmp_path / "top.qcow2", "qcow2", MiB, backing=tmp_path / "base.raw")
    assert caught.value.field == "backing_format"


def test_create_with_preallocation(tmp_path: Path) -> None:
    image = tmp_path / "full.raw"
    qemu_img.create(image, "raw", MiB, preallocation="full")
    assert qemu_img.info(image, "raw").actual_size >= MiB
    with pytest.raises(InvalidSpec) as caught:
        qemu_img.create(tmp_path / "bad.raw", "raw", MiB, preallocation="lots")
    assert caught.value.field == "preallocation"


def test_a_file_name_with_a_colon_is_a_file_not_a_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    qemu_img.create(Path("nbd:localhost"), "qcow2", MiB)
    assert (tmp_path / "nbd:localhost").is_file()
    assert qemu_img.info(Path("nbd:localhost"), "qcow2").virtual_size == MiB


def test_resize_grows(tmp_path: Path) -> None:
    image = qcow2(tmp_path / "disk.qcow2")
    qemu_img.resize(image, "qcow2", 4 * MiB)
    assert qemu_img.info(image, "qcow2").virtual_size == 4 * MiB


def test_resize_refuses_to_shrink_unless_asked(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * (4 * MiB))
    with pytest.raises(InvalidSpec) as caught:
        qemu_img.resize(image, "raw", MiB)
    assert caught.value.field == "size" and "shrink" in caught.value.problem
    assert image.stat().st_size == 4 * MiB
    qemu_img.resize(image, "raw", MiB, shrink=True)
    assert qemu_img.info(image, "raw").virtual_size == MiB


def test_convert_reports_increasing_progress_to_100(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.truncate(64 * MiB)
        for offset in range(0, 64 * MiB, 4 * MiB):  # data spread over the disk so progress has steps
            f.seek(offset)
            f.write(bytes([offset >> 22 | 1]) * MiB)
    dst = tmp_path / "dst.qcow2"
    seen: list[float] = []
    qemu_img.convert(src, "raw", dst, "qcow2", progress=seen.append)
    assert len(seen) > 2
    assert seen == sorted(set(seen))
    assert seen[-1] == 100.0
    assert qemu_img.info(dst, "qcow2").virtual_size == 64 * MiB
    back = tmp_path / "back.raw"
    qemu_img.convert(dst, "qcow2", back, "raw")
    assert back.read_bytes() == src.read_bytes()


def test_convert_failure_leaves_no_destination(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    dst = tmp_path / "dst.raw"
    with pytest.raises(QemuImgError, match="qcow2"):
        qemu_img.convert(text, "qcow2", dst, "raw")
    assert not dst.exists()


def test_convert_stops_when_progress_raises(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    src.write_bytes(b"\x42" * (16 * MiB))
    dst = tmp_path / "dst.qcow2"

    def cancel(percent: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        qemu_img.convert(src, "raw", dst, "qcow2", progress=cancel)
    assert not dst.exists()


def test_rebase_unsafe_and_commit(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * MiB)
    top = qcow2(tmp_path / "top.qcow2")
    qemu_img.rebase_unsafe(top, "qcow2", Path("base.raw"), "raw")
    info = qemu_img.info(top, "qcow2")
    assert (info.backing_file, info.backing_format) == ("base.raw", "raw")
    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io is not installed")
    qemu_io(top, "qcow2", "write -P 0x5a 0 64k")
    qemu_img.commit(top, "qcow2")
    assert base.read_bytes()[: 64 << 10] == b"\x5a" * (64 << 10)


# --- internal snapshots -------------------------------------------------------------------------------------------


def test_snapshot_round_trip(tmp_path: Path) -> None:
    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io is not installed")
    image = qcow2(tmp_path / "disk.qcow2")
    qemu_io(image, "qcow2", "write -P 0x41 0 64k")
    assert holds_pattern(image, "qcow2", 0x41)
    qemu_img.snapshot_create(image, "qcow2", "before")
    [snap] = qemu_img.snapshot_list(image, "qcow2")
    assert snap.name == "before" and snap.vm_state_size == 0 and snap.date.year >= 2024
    with pytest.raises(Conflict):
        qemu_img.snapshot_create(image, "qcow2", "before")

    qemu_io(image, "qcow2", "write -P 0x42 0 64k")
    assert holds_pattern(image, "qcow2", 0x42) and not holds_pattern(image, "qcow2", 0x41)
    qemu_img.snapshot_apply(image, "qcow2", "before")
    assert holds_pattern(image, "qcow2", 0x41)

    qemu_img.snapshot_delete(image, "qcow2", "before")
    assert qemu_img.snapshot_list(image, "qcow2") == []
    with pytest.raises(NotFound):
        qemu_img.snapshot_apply(image, "qcow2", "before")


def test_snapshot_names_are_not_ids(tmp_path: Path) -> None:
    image = qcow2(tmp_path / "disk.qcow2")
    for name in ("", "1", "tab\there"):
        with pytest.raises(InvalidSpec) as caught:
            qemu_img.snapshot_create(image, "qcow2", name)
        assert caught.value.field == "name"


def test_snapshot_works_on_a_path_with_a_comma(tmp_path: Path) -> None:
    image = qcow2(tmp_path / "a,b.qcow2")
    qemu_img.snapshot_create(image, "qcow2", "s")
    assert [s.name for s in qemu_img.snapshot_list(image, "qcow2")] == ["s"]


# --- inspect_untrusted --------------------------------------------------------------------------------------------


def field_of(call: Any) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as caught:
        call()
    return caught.value


def test_untrusted_backing_outside_the_pools_is_refused(tmp_path: Path) -> None:
    evil = overlay(tmp_path / "evil.qcow2", "/etc/shadow")
    error = field_of(lambda: inspect_untrusted(evil, "qcow2", [tmp_path]))
    assert error.field == "backing_file"
    assert "/etc/shadow" in error.message


def test_untrusted_relative_escape_and_symlink_are_refused(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    (tmp_path / "outside.raw").write_bytes(b"\0" * MiB)
    (pool / "link.raw").symlink_to(tmp_path / "outside.raw")
    for name, backing in (("up.qcow2", "../outside.raw"), ("link.qcow2", "link.raw")):
        error = field_of(lambda: inspect_untrusted(overlay(pool / name, backing), "qcow2", [pool]))  # noqa: B023
        assert error.field == "backing_file"
        assert str(tmp_path / "outside.raw") in error.message


@pytest.mark.parametrize("backing", ['json:{"file":{"driver":"file","filename":"/etc/passwd"}}', "nbd://127.0.0.1:1/x"])
def test_untrusted_protocol_backing_is_refused(tmp_path: Path, backing: str) -> None:
    image = overlay(tmp_path / "proto.qcow2", backing)
    error = field_of(lambda: inspect_untrusted(image, "qcow2", [tmp_path]))
    assert error.field == "backing_file"
    assert "protocol" in error.problem


def test_untrusted_backing_inside_the_pool_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "base.raw").write_bytes(b"\0" * MiB)
    for name, backing in (("rel.qcow2", "base.raw"), ("abs.qcow2", str(tmp_path / "base.raw"))):
        info = inspect_untrusted(overlay(tmp_path / name, backing), "qcow2", [tmp_path])
        assert (info.backing_file, info.backing_format) == (backing, "raw")


def test_untrusted_backing_without_format_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # qemu-img 7.2 will not write such a header, but older tools did; fake what info reports.
    image = qcow2(tmp_path / "old.qcow2")
    real = qemu_img._info_json

    def no_format(path: Path, fmt: str, *, limited: bool = False) -> dict[str, Any]:
        return {**real(path, fmt, limited=limited), "backing-filename": "base.raw"}

    monkeypatch.setattr(qemu_img, "_info_json", no_format)
    assert field_of(lambda: inspect_untrusted(image, "qcow2", [tmp_path])).field == "backing_format"


def test_untrusted_content_that_is_not_the_format_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, I am not a disk image\n" * 100)
    for fmt in ("qcow2", "vdi", "vhdx"):
        error = field_of(lambda: inspect_untrusted(text, fmt, [tmp_path]))  # noqa: B023
        assert error.field == "format"
        assert f"not a valid {fmt} image" in error.problem


def test_untrusted_unknown_format_and_size_limit(tmp_path: Path) -> None:
    image = qcow2(tmp_path / "disk.qcow2", 8 * MiB)
    assert field_of(lambda: inspect_untrusted(image, "qcow", [tmp_path])).field == "format"
    assert field_of(lambda: inspect_untrusted(image, "qcow2", [tmp_path], max_virtual_size=MiB)).field == (
        "virtual_size"
    )
    assert inspect_untrusted(image, "qcow2", [tmp_path], max_virtual_size=8 * MiB).virtual_size == 8 * MiB


def test_untrusted_raw_is_fine(tmp_path: Path) -> None:
    image = overlay(tmp_path / "guest-wrote-a-header.raw", "/etc/shadow")
    assert inspect_untrusted(image, "raw", []).backing_file is None


def test_untrusted_qcow2_external_data_file_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "split.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.bin'}", str(image), str(MiB)],
        check=True,
    )
    assert field_of(lambda: inspect_untrusted(image, "qcow2", [tmp_path])).field == "data_file"


def test_info_and_chain_name_an_external_data_file(tmp_path: Path) -> None:
    image = tmp_path / "split.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.bin'},"
                    "data_file_raw=on", str(image), str(MiB)], check=True)
    assert qemu_img.info(image, "qcow2").data_file == str(tmp_path / "data.bin")
    assert [i.data_file for i in qemu_img.chain(image, "qcow2")] == [str(tmp_path / "data.bin")]
    # Read as raw, the header is only guest data: nothing is opened because of it.
    assert qemu_img.info(image, "raw").data_file is None
    assert qemu_img.info(qcow2(tmp_path / "plain.qcow2"), "qcow2").data_file is None


def test_untrusted_vmdk_must_be_a_single_file(tmp_path: Path) -> None:
    descriptor = tmp_path / "evil.vmdk"
    descriptor.write_text(
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
        'RW 2048 FLAT "/etc/shadow" 0\n'
    )
    assert field_of(lambda: inspect_untrusted(descriptor, "vmdk", [tmp_path])).field == "format"
    for subformat in ("monolithicSparse", "streamOptimized"):
        image = tmp_path / f"{subformat}.vmdk"
        subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", str(image), "4M"])
        assert inspect_untrusted(image, "vmdk", [tmp_path]).virtual_size == 4 * MiB


def test_untrusted_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        inspect_untrusted(tmp_path / "nothing.qcow2", "qcow2", [tmp_path])


def test_direct_convert_copies_exactly_and_falls_back_where_o_direct_is_missing(tmp_path: Path) -> None:
    src = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src), "8M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5c 1M 1M", str(src)], check=True,
                   capture_output=True)
    dst = tmp_path / "dst.qcow2"
    qemu_img.convert(src, "qcow2", dst, "qcow2", direct=True)
    assert subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(src), str(dst)],
                          capture_output=True).returncode == 0
    assert not list(tmp_path.glob(".*direct-probe"))


def test_direct_convert_falls_back_to_the_page_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src), "4M"], check=True)
    monkeypatch.setattr(qemu_img, "_supports_direct", lambda _dst: False)  # as on a file system without O_DIRECT
    qemu_img.convert(src, "qcow2", tmp_path / "dst.qcow2", "qcow2", direct=True)
    assert qemu_img.info(tmp_path / "dst.qcow2", "qcow2").virtual_size == 4 << 20
