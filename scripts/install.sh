#!/usr/bin/env bash
# Install what virtfleet needs on Debian 12: QEMU, qemu-img, the guest kernel and busybox from apt; the Python
# package (and with --test, the test tools) into ./.venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# qemu + guest kernel/busybox: VMs; syslinux, mtools, dosfstools: bootable disk images; lvm2: lvm pools;
# nftables, dnsmasq-base, iproute2: nat/isolated networks.
packages=(qemu-system-x86 qemu-utils busybox-static linux-image-amd64 python3-venv python3-pip
          syslinux syslinux-common mtools dosfstools lvm2 thin-provisioning-tools
          nftables dnsmasq-base iproute2)
# chromium: the web UI's browser tests (Playwright drives this one; it never downloads a browser of its own).
# libvirt-daemon-system: the libvirt driver's tests start libvirtd by hand; libvirt-dev + pkg-config build libvirt-python.
if [ -n "$extras" ]; then packages+=(chromium libvirt-daemon-system libvirt-dev pkg-config); fi
# node + npm install the web UI's front-end libraries; a node from elsewhere (e.g. with its own npm) is fine.
if ! command -v npm >/dev/null 2>&1; then packages+=(nodejs npm); fi
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}"
# The web UI's libraries (xterm.js, noVNC) from npm into src/virtfleet/web/node_modules, served as they are.
npm ci --prefix src/virtfleet/web --no-audit --no-fund --loglevel=error
echo "virtfleet installed: $(.venv/bin/virtfleet version)"
