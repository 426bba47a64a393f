"""virtfleet: open virtualization management for QEMU/KVM hosts."""

__version__ = "0.1.0"
