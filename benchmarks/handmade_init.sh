#!/bin/sh
# /init of the hand-made minimal initrd: the "only insmods and mounts" baseline of
# benchmarks/boot.py, the floor a stage one for an ext4 root on virtio can reach.
#
# benchmarks/common.py packs it with a static busybox (and its applet links) and the kernel
# modules for virtio_pci, virtio_blk and ext4 with their dependencies, stored as
# /lib/modules/NN-<name>.ko so that the glob below lists them in load order. No udev, no
# configuration, no fsck: load the modules, wait for LABEL=root, mount it, switch to it.
# The kernel command line is not read (root=LABEL=root rw is what it does anyway).
# On failure it exits: the kernel then panics ("Attempted to kill init!"), which the
# benchmark sees at once instead of waiting for its timeout.

PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

for ko in /lib/modules/*.ko; do
    insmod "$ko" || echo "handmade: insmod $ko failed"
done

# the disk shows up asynchronously after virtio_blk has loaded: poll every 10 ms, up to 10 s
tries=0
until dev=$(findfs LABEL=root 2>/dev/null); do
    tries=$((tries + 1))
    if [ "$tries" -ge 1000 ]; then
        echo "handmade: no device with LABEL=root after 10 s"
        exit 1
    fi
    usleep 10000
done

mount -t ext4 -o rw "$dev" /newroot || exit 1
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
