"""bootgen detect and check --host: a host description from a running system, and a
description checked against one (sysfs, the udev database, /proc and /etc below a root)."""
