"""The built-in "tiny" guest: the host's Debian kernel, uncompressed, and a busybox initramfs.

The kernel comes from /boot/vmlinuz-* (linux-image-amd64): we boot the ELF inside the bzImage because QEMU's
microvm loads it directly and under TCG it reaches userspace in ~1.8 s instead of ~4.8 s for the bzImage. All virtio
drivers are modules in Debian's kernel, so the initramfs carries them (with their dependencies from modules.dep) and
loads them in order. The guest prints a readiness line on the serial console and powers off on the ACPI power button
(busybox acpid), which is what the driver's graceful shutdown relies on.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from virtfleet.images.cpio import CpioWriter

READY_MARKER = "VIRTFLEET-READY"
MANIFEST = "image.json"
MANIFEST_FORMAT = 1
# Bumped whenever what the guest does changes (modules, /etc/rc): an image built by an older virtfleet is stale.
GUEST_VERSION = 4
KERNEL_FILE = "vmlinux"
# The same kernel as shipped (bzImage with its EFI stub): UEFI firmware loads PE images only, not an ELF vmlinux.
EFI_KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initramfs.cpio"

# Loaded in this order (each after its own dependencies from modules.dep).
GUEST_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "e1000",  # the e1000 NIC model (q35 only: a PCI card)
    "virtio_console",
    "button",
    "evdev",
    "isofs",  # reads a cloud-init NoCloud seed ISO on a virtio disk (pulls in cdrom via modules.dep)
    "virtio_scsi",  # disks on the virtio-scsi bus show up as /dev/sd*
    "sd_mod",
)

_XZ_MAGIC = b"\xfd7zXZ\x00"
_ELF_MAGIC = b"\x7fELF"

Progress = Callable[[str], None]


class ImageBuildError(Exception):
    """The image cannot be built or loaded; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class BuiltImage:
    name: str
    kernel: Path
    initrd: Path
    kernel_release: str
    guest_version: int = GUEST_VERSION
    efi_kernel: Path | None = None  # absent from images built before UEFI boot existed

    @property
    def stale(self) -> bool:
        """Built by an older virtfleet: the guest lacks what this version expects (DHCP, seeds, modules)."""
        return self.guest_version < GUEST_VERSION


def write_manifest(dest: Path, *, name: str, kernel_release: str, guest_version: int = GUEST_VERSION) -> BuiltImage:
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "kernel": KERNEL_FILE,
        "initrd": INITRD_FILE,
        **({"efi_kernel": EFI_KERNEL_FILE} if (dest / EFI_KERNEL_FILE).is_file() else {}),
        "kernel_release": kernel_release,
        "guest_version": guest_version,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return load_image(dest)


def load_image(path: Path) -> BuiltImage:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise ImageBuildError(f"{path} holds no built image ({MANIFEST} is missing)") from None
    except (OSError, ValueError) as exc:
        raise ImageBuildError(f"{path / MANIFEST} is unreadable: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ImageBuildError(f"{path / MANIFEST} has an unknown format")
    kernel, initrd = path / str(manifest["kernel"]), path / str(manifest["initrd"])
    for part in (kernel, initrd):
        if not part.is_file():
            raise ImageBuildError(f"image {path.name} is incomplete: {part.name} is missing")
    efi_kernel = path / str(manifest["efi_kernel"]) if "efi_kernel" in manifest else None
    if efi_kernel is not None and not efi_kernel.is_file():
        raise ImageBuildError(f"image {path.name} is incomplete: {efi_kernel.name} is missing")
    return BuiltImage(str(manifest["name"]), kernel, initrd, str(manifest["kernel_release"]),
                      int(manifest.get("guest_version", 0)), efi_kernel)


def host_tsc_khz(cpuinfo: Path = Path("/proc/cpuinfo")) -> int | None:
    """The host CPU frequency in kHz, for the guest's tsc_early_khz (else 1 microvm boot in 8 hangs calibrating)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    match = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", text, re.MULTILINE)
    return round(float(match.group(1)) * 1000) if match else None


def default_cmdline(machine: str, tsc_khz: int | None) -> str:
    args = ["console=ttyS0", "panic=-1", "quiet", "loglevel=3"]
    if machine == "microvm":
        # microvm has no keyboard controller or ACPI reset register: reboot by triple fault.
        args += ["reboot=t"]
        if tsc_khz:
            args.append(f"tsc_early_khz={tsc_khz}")
    return " ".join(args)


# --- building ---------------------------------------------------------------------------------------------------


def _release_key(release: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"[.-]", release)]


def find_host_kernel(boot: Path = Path("/boot")) -> tuple[Path, str]:
    """The newest /boot/vmlinuz-<release> and its release."""
    kernels = sorted(boot.glob("vmlinuz-*"), key=lambda p: _release_key(p.name.removeprefix("vmlinuz-")))
    if not kernels:
        raise ImageBuildError(f"no kernel in {boot}; install one with: apt-get install linux-image-amd64")
    newest = kernels[-1]
    return newest, newest.name.removeprefix("vmlinuz-")


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage whose payload is xz-compressed (Debian's default)."""
    start = bzimage.find(_XZ_MAGIC)
    while start != -1:
        try:
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])
        except lzma.LZMAError:
            elf = b""
        if elf.startswith(_ELF_MAGIC):
            return elf
        start = bzimage.find(_XZ_MAGIC, start + 1)
    raise ImageBuildError("the kernel image holds no xz-compressed ELF payload (only xz kernels are supported)")


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base.replace("-", "_")


def resolve_modules(modules_dir: Path, wanted: Iterable[str]) -> list[tuple[str, Path]]:
    """(name, file) for every wanted module and its dependencies, in a valid load order."""
    try:
        lines = (modules_dir / "modules.dep").read_text().splitlines()
    except OSError as exc:
        raise ImageBuildError(f"cannot read {modules_dir / 'modules.dep'}: {exc}") from exc
    files: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    for line in lines:
        target, _, rest = line.partition(":")
        name = _module_name(target)
        files[name] = target
        deps[name] = [_module_name(dep) for dep in rest.split()]
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name not in files:
            raise ImageBuildError(f"kernel module {name} not found in {modules_dir}")
        for dep in deps[name]:
            visit(dep)
        order.append(name)

    for name in wanted:
        visit(name)
    return [(name, modules_dir / files[name]) for name in order]


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    return data


INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /tmp /run /sbin /usr/bin /usr/sbin /var/run /var/log
/bin/busybox --install -s
exec /bin/busybox init
"""

INITTAB = """::sysinit:/etc/rc
::respawn:/bin/cttyhack /bin/sh
::ctrlaltdel:/bin/reboot -f
"""

# A cloud-init NoCloud seed (images/cloudinit.py) on any virtio disk overrides the virtfleet.hostname= argument, as
# cloud-init would. The first seed found wins. meta-data is YAML, read here line by line: a value may be quoted, and
# public-keys is a block list ("- key" lines). No waiting: the disks exist once virtio_blk's insmod has returned.
CLOUDINIT_RC = r"""meta() { sed -n "s/^$1: *//p" /tmp/seed/meta-data | head -n 1 | tr -d "\"'\r "; }
mkdir -p /tmp/seed
for dev in /dev/vd* /dev/sr*; do
  [ -b "$dev" ] || continue
  mount -t iso9660 -o ro "$dev" /tmp/seed 2>/dev/null || continue
  if [ -f /tmp/seed/meta-data ]; then
    seed_host=$(meta local-hostname)
    [ -n "$seed_host" ] && hostname "$seed_host"
    line="virtfleet-cloudinit: hostname=$(hostname) instance-id=$(meta instance-id)"
    if grep -q '^public-keys:' /tmp/seed/meta-data; then
      keys=$(awk '/^public-keys:/ {k = 1; next} k && /^ *- / {n++; next} k && /^[^ ]/ {k = 0} END {print n + 0}' \
        /tmp/seed/meta-data)
      line="$line ssh-keys=$keys"
    fi
    echo "$line"
    umount /tmp/seed
    break
  fi
  umount /tmp/seed
done
"""

# Networking: loopback, then a DHCP client per ethernet interface. Each runs in the background (started in a subshell
# that exits at once, so init adopts and reaps it) and the boot never waits for a lease. A watch loop, started after
# the readiness line, starts one for every interface that shows up later (hot-plugged NICs) or whose client died; the
# pid files under /run tell which interfaces have a live client. The clients stay quiet: the script below prints the
# one line per lease.
NETWORK_RC = r"""ip link set lo up
dhcp_client() {
  [ -d "/sys/class/net/$1" ] || return
  read -r pid 2>/dev/null <"/run/udhcpc.$1.pid" && kill -0 "$pid" 2>/dev/null && return
  ip link set "$1" up 2>/dev/null || return
  host=$(hostname)
  [ "$host" = "(none)" ] && host=
  (udhcpc -f -i "$1" -t 10 -T 2 -A 1 -S -s /etc/udhcpc.script ${host:+-x "hostname:$host"} </dev/null >/dev/null 2>&1 &
   echo $! >"/run/udhcpc.$1.pid")
}
for dev in /sys/class/net/eth*; do dhcp_client "${dev##*/}"; done
"""
# After the readiness line (nothing before it may wait): the watch loop, using dhcp_client from NETWORK_RC.
NETWORK_WATCH_RC = r"""(while :; do
  sleep 1
  for dev in /sys/class/net/eth*; do dhcp_client "${dev##*/}"; done
done) </dev/null >/dev/null 2>&1 &
"""

# udhcpc runs this on DHCP events with the lease in its environment ($mask is the prefix length, $router and $dns are
# lists). Each interface's default route gets the interface number as its metric, so eth0's wins over later NICs'.
UDHCPC_SCRIPT = r"""#!/bin/sh
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ;;
  bound|renew)
    mask=${mask:-32}
    if ! ip -4 addr show dev "$interface" | grep -q "inet $ip/$mask "; then
      ip -4 addr flush dev "$interface"
      ip addr add "$ip/$mask" broadcast + dev "$interface"
      changed=1
    fi
    gw=${router%% *}
    metric=${interface#eth}
    case "$metric" in ''|*[!0-9]*) metric=0 ;; esac
    [ -n "$gw" ] && ip route replace default via "$gw" dev "$interface" metric "$metric"
    if [ -n "$dns" ]; then
      {
        [ -n "$domain" ] && echo "search $domain"
        for server in $dns; do echo "nameserver $server"; done
      } >/etc/resolv.conf
    fi
    [ -n "$changed" ] && echo "virtfleet-net: $interface $ip/$mask gw ${gw:-none}" >/dev/console
    ;;
esac
exit 0
"""

HTTPD_INDEX = "virtfleet-httpd-ok\n"  # /www/index.html, for tests that run `httpd -p 80 -h /www` in the guest

# Runs once at boot (busybox init's sysinit), output on the serial console.
RC = f"""#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
for module in $(cat /etc/modules); do
  insmod /lib/modules/$module.ko || echo "virtfleet: could not load $module"
done
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    virtfleet.hostname=*) hostname "${{arg#*=}}" ;;
    virtfleet.ticks=1) ticks=1 ;;
  esac
done
{CLOUDINIT_RC}{NETWORK_RC}acpid
echo "{READY_MARKER} hostname=$(hostname) kernel=$(uname -r)"
{NETWORK_WATCH_RC}if [ -n "$ticks" ]; then
  (n=0; while :; do n=$((n + 1)); echo "virtfleet-tick $n"; sleep 1; done) &
fi
"""

# busybox acpid runs /etc/acpi/<ACTION>/<PARAMETER> for an event; the power button is PWRF/00000080.
POWER_BUTTON = """#!/bin/sh
echo "virtfleet: power button pressed, powering off" > /dev/console
poweroff -f
"""


def build_initramfs(busybox: bytes, modules: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    cpio = CpioWriter(out)
    for directory in ("bin", "dev", "etc", "etc/acpi", "etc/acpi/PWRF", "lib", "lib/modules", "proc", "sys", "www"):
        cpio.directory(directory)
    cpio.char_device("dev/console", 5, 1)
    cpio.char_device("dev/null", 1, 3, perm=0o666)
    cpio.file("bin/busybox", busybox, perm=0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("init", INIT.encode(), perm=0o755)
    cpio.file("etc/inittab", INITTAB.encode())
    cpio.file("etc/rc", RC.encode(), perm=0o755)
    cpio.file("etc/acpi/PWRF/00000080", POWER_BUTTON.encode(), perm=0o755)
    cpio.file("etc/udhcpc.script", UDHCPC_SCRIPT.encode(), perm=0o755)
    cpio.file("www/index.html", HTTPD_INDEX.encode())
    cpio.file("etc/modules", "".join(f"{name}\n" for name, _ in modules).encode())
    for name, data in modules:
        cpio.file(f"lib/modules/{name}.ko", data)
    cpio.close()
    return out.getvalue()


def build_tiny_image(
    dest: Path,
    *,
    progress: Progress | None = None,
    boot_dir: Path = Path("/boot"),
    modules_root: Path = Path("/lib/modules"),
    busybox: Path = Path("/bin/busybox"),
) -> BuiltImage:
    """Build into a temporary directory beside `dest`, then swap it in: a failed build keeps the old image."""
    say = progress or (lambda _message: None)
    bzimage, release = find_host_kernel(boot_dir)
    say(f"extracting the uncompressed kernel from {bzimage}")
    vmlinux = extract_vmlinux(bzimage.read_bytes())
    if not busybox.is_file():
        raise ImageBuildError(f"{busybox} not found; install it with: apt-get install busybox-static")
    modules = resolve_modules(modules_root / release, GUEST_MODULES)
    say(f"packing busybox and {len(modules)} kernel modules into the initramfs")
    initramfs = build_initramfs(busybox.read_bytes(), [(name, _read_module(path)) for name, path in modules])

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        (staging / KERNEL_FILE).write_bytes(vmlinux)
        shutil.copyfile(bzimage, staging / EFI_KERNEL_FILE)
        (staging / INITRD_FILE).write_bytes(initramfs)
        write_manifest(staging, name=dest.name, kernel_release=release)
        os.chmod(staging, 0o700)  # private like the rest of the data directory (the host's kernel is inside)
        if dest.exists():
            retired = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            dest.rename(retired)
            staging.rename(dest)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"built image {dest.name}: kernel {release}, {len(vmlinux) >> 20} MiB + {len(initramfs) >> 20} MiB")
    return load_image(dest)
