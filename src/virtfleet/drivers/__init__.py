"""Hypervisor drivers behind one small interface (see base.py)."""
