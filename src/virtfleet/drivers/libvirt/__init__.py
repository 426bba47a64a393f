"""The libvirt driver: domains defined and driven through libvirt-python (qemu:///system)."""
