"""VM tests: boot real kernels in QEMU and check what the guest reports."""
