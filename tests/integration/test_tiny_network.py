"""The tiny guest configures its NICs by DHCP, also hot-plugged ones, and can serve HTTP (raw QEMU, TCG, user net).

QEMU's user-mode network (slirp) hands out 10.0.2.15/24 with gateway 10.0.2.2 by default; nothing leaves the host
but loopback: the one port forward listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_port, wait_console
from virtfleet.images.tiny import default_cmdline, host_tsc_khz, load_image

pytestmark = pytest.mark.integration

MAC = "52:54:00:12:34:56"


@contextlib.contextmanager
def boot(image_dir: Path, log: Path, machine: str, devices: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A tiny guest whose serial console is QEMU's stdio: stdin takes commands, stdout goes to `log`."""
    image = load_image(image_dir)
    machine_arg = "microvm,rtc=on,acpi=on" if machine == "microvm" else machine
    argv = [
        "qemu-system-x86_64", "-M", machine_arg, "-accel", "tcg", "-cpu", "max", "-m", "256",
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", default_cmdline(machine, host_tsc_khz()), *devices,
    ]
    with log.open("wb") as out:
        qemu = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield qemu
    finally:
        qemu.kill()
        qemu.wait(10)


def type_line(qemu: subprocess.Popen[bytes], line: str) -> None:
    assert qemu.stdin is not None
    qemu.stdin.write(line.encode() + b"\n")
    qemu.stdin.flush()


def net_lines(text: str) -> list[str]:
    return [line[line.index("virtfleet-net:"):] for line in text.splitlines() if "virtfleet-net:" in line]


def hmp(path: Path, command: str) -> str:
    """One human monitor command over QEMU's monitor socket; its output."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        received = b""
        while not received.endswith(b"(qemu) "):
            received += sock.recv(4096)
        sock.sendall(command.encode() + b"\n")
        received = b""
        while not received.endswith(b"(qemu) "):
            received += sock.recv(4096)
    return received.decode(errors="replace")


def test_virtio_net_gets_a_lease_and_serves_http(tiny_image_dir: Path, short_tmp: Path) -> None:
    port = free_port()
    log = short_tmp / "console.log"
    nic = ["-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:80",
           "-device", f"virtio-net-device,netdev=n0,mac={MAC}"]
    started = time.monotonic()
    with boot(tiny_image_dir, log, "microvm", nic) as qemu:
        text = wait_console(log, "virtfleet-net:", qemu)
        print(f"microvm virtio-net guest has its lease {time.monotonic() - started:.1f} s after QEMU started")
        assert "VIRTFLEET-READY hostname=" in text
        type_line(qemu, "httpd -p 80 -h /www")
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except httpx.TransportError:  # slirp accepts, then drops the connection until httpd listens
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
                time.sleep(0.2)
        assert response.status_code == 200 and response.text.strip() == "virtfleet-httpd-ok"
        assert net_lines(log.read_text(errors="replace")) == ["virtfleet-net: eth0 10.0.2.15/24 gw 10.0.2.2"]


def test_e1000_on_q35_gets_a_lease_and_a_hot_plugged_nic_gets_one_too(tiny_image_dir: Path, short_tmp: Path) -> None:
    log, monitor = short_tmp / "console.log", short_tmp / "monitor.sock"
    devices = [
        "-monitor", f"unix:{monitor},server=on,wait=off",
        "-device", "pcie-root-port,id=hp0,chassis=1",
        "-netdev", "user,id=n0", "-device", f"e1000,netdev=n0,mac={MAC}",
    ]
    started = time.monotonic()
    with boot(tiny_image_dir, log, "q35", devices) as qemu:
        wait_console(log, "virtfleet-net: eth0", qemu)
        print(f"q35 e1000 guest has its lease {time.monotonic() - started:.1f} s after QEMU started")
        # A second NIC on another user network, plugged in while the guest runs: the watch loop must pick it up.
        hmp(monitor, "netdev_add user,id=n1,net=10.0.3.0/24")
        assert "Error" not in hmp(monitor, "device_add virtio-net-pci,netdev=n1,bus=hp0,mac=52:54:00:12:34:57")
        plugged = time.monotonic()
        wait_console(log, "virtfleet-net: eth1", qemu, timeout=30)
        print(f"hot-plugged virtio-net NIC has its lease {time.monotonic() - plugged:.1f} s after device_add")
        assert net_lines(log.read_text(errors="replace")) == [
            "virtfleet-net: eth0 10.0.2.15/24 gw 10.0.2.2",
            "virtfleet-net: eth1 10.0.3.15/24 gw 10.0.3.2",
        ]
        # Both default routes exist; the first NIC's (metric 0) is the one in use. The markers are computed by the
        # guest's shell so that the echoed command line does not match them.
        type_line(qemu, "echo ROUTES-$((6 * 7)); ip route; echo ROUTES-END-$((6 * 7))")
        text = wait_console(log, "ROUTES-END-42", qemu, timeout=30)
        section = text[text.rindex("ROUTES-42"):text.rindex("ROUTES-END-42")].splitlines()[1:]
        routes = sorted(" ".join(line.split()) for line in section if line.startswith("default"))
        assert routes == ["default via 10.0.2.2 dev eth0", "default via 10.0.3.2 dev eth1 metric 1"], text
