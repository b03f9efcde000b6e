"""bootgen: declarative, reproducible, QEMU-verified initrd generator."""

__version__ = "0.1.0"
