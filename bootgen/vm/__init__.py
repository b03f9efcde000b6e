"""Test machines: QEMU, the synthetic disks that mirror a description, and `bootgen verify`."""
