"""The QEMU driver: QEMU processes daemonized per VM, driven over QMP (qemu.qmp), KVM where usable, else TCG."""
