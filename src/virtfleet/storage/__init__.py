"""Disk images and storage pools: the qemu-img wrapper and safe byte transfers into a pool."""
