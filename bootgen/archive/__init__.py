"""Archive formats: the newc cpio writer and reader, compressors and initrd segment detection.

Pure byte-level code with no knowledge of hosts or features; every other room may use it.
"""
