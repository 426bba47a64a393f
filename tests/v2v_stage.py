"""Building import directories for the v2v tests: a real VM description beside disks made with qemu-img."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

DATA = Path(__file__).parent / "data" / "v2v"
MiB = 1 << 20


def qemu_img(*args: str) -> None:
    done = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def make_disk(path: Path, fmt: str, size: int = 16 * MiB, *, subformat: str | None = None) -> Path:
    """An empty image; vmdk as monolithicSparse unless told (streamOptimized, twoGbMaxExtentSparse...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = ["-o", f"subformat={subformat}"] if subformat else []
    if fmt == "vmdk" and not subformat:
        options = ["-o", "subformat=monolithicSparse"]
    if fmt == "vpc" and not subformat:
        options = ["-o", "subformat=dynamic"]
    qemu_img("create", "-q", "-f", fmt, *options, str(path), str(size))
    return path


def stage(root: Path, config: str, disks: dict[str, str] | None = None, *, as_name: str | None = None,
          replace: dict[str, str] | None = None) -> str:
    """Copy tests/data/v2v/`config` into the import directory `root` (as `as_name`) and make its disks
    (relative name -> qemu format); returns the config's path relative to `root`."""
    name = as_name or Path(config).name
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if replace:
        text = (DATA / config).read_text()
        for old, new in replace.items():
            text = text.replace(old, new)
        target.write_text(text)
    else:
        shutil.copyfile(DATA / config, target)
    for disk, fmt in (disks or {}).items():
        make_disk(target.parent / disk, fmt)
    return name


def make_ova(path: Path, *, disk_size: int = 16 * MiB) -> Path:
    """A small OVA (VirtualBox's OVF: 1 CPU, 192 MiB, one sparse VMDK, a NIC on network "NAT") at `path`."""
    ovf = (DATA / "ovf" / "govmomi-vbox1.ovf").read_text()
    ovf = ovf.replace('ovf:capacity="10737418240"', f'ovf:capacity="{disk_size}"')
    work = path.parent / f".{path.name}.members"
    work.mkdir(parents=True)
    (work / "vm.ovf").write_text(ovf)
    make_disk(work / "vbox1.vmdk", "vmdk", disk_size, subformat="streamOptimized")
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member in ("vm.ovf", "vbox1.vmdk"):
            tar.add(work / member, arcname=member)
    shutil.rmtree(work)
    return path
