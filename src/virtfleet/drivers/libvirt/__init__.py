"""The libvirt driver: virtfleet domains as libvirt domains (q35 only), state changes from libvirt events."""
