#!/bin/sh
# capture-host.sh [--mounted DIR] DEST
#
# Copies what `bootgen detect` reads from a running machine into DEST, a tree that
# `bootgen detect --root DEST` reads as it reads the machine (for tests and bug reports):
#   proc/self/mountinfo, proc/cmdline, proc/swaps, proc/net/route, proc/sys/kernel/osrelease
#   etc/fstab, etc/crypttab, etc/hostname, etc/mdadm/mdadm.conf, etc/network/interfaces
#   run/udev/data/b* and n* (udev's properties of block and network devices)
#   sys/class/block/*, sys/block/*, sys/class/net/* (symlinks kept as symlinks) and, for every
#   device, its attributes (dev, size, partition, dm/, md/, holders/, slaves/, uevent) and those
#   of each parent device up the chain (uevent, modalias, the driver and subsystem links, the
#   driver's module link); sys/fs/btrfs/*/devices and the data profile
#   dev/disk/by-*, dev/mapper, dev/md and the /dev/<vg> folders: symlinks only
# Nothing secret is copied: no keyfile, no key, no /etc/shadow; crypttab names keyfiles by path.
#
# --mounted DIR: the system to capture is mounted at DIR (an installer's view, e.g. /mnt): its
# /etc is read from DIR, and the mount table keeps only the mounts at and below DIR, with DIR
# cut off, as the system itself will see them.
set -eu

mounted=
if [ "${1:-}" = --mounted ]; then
    mounted=${2%/}
    shift 2
fi
dest=${1:?usage: capture-host.sh [--mounted DIR] DEST}
mkdir -p "$dest"

copy() {  # copy a file's content (sysfs files report a wrong size: read them)
    [ -r "$1" ] && [ -f "$1" ] || return 0
    mkdir -p "$dest$(dirname "$1")"
    cat "$1" > "$dest$1" 2>/dev/null || rm -f "$dest$1"
}

link() {  # record a symlink as a symlink
    [ -L "$1" ] || return 0
    mkdir -p "$dest$(dirname "$1")"
    ln -sfn "$(readlink "$1")" "$dest$1"
}

# --- /proc and /etc ---------------------------------------------------------------------------
mkdir -p "$dest/proc/self" "$dest/proc/sys/kernel" "$dest/proc/net" "$dest/etc"
if [ -n "$mounted" ]; then
    awk -v dir="$mounted" '{
        if ($5 == dir) { $5 = "/" } else if (index($5, dir "/") == 1) { $5 = substr($5, length(dir) + 1) } else { next }
        print
    }' /proc/self/mountinfo > "$dest/proc/self/mountinfo"
else
    cat /proc/self/mountinfo > "$dest/proc/self/mountinfo"
fi
for f in /proc/cmdline /proc/swaps /proc/net/route /proc/sys/kernel/osrelease; do
    copy "$f"
done
for f in fstab crypttab hostname mdadm/mdadm.conf network/interfaces; do
    src="$mounted/etc/$f"
    if [ -f "$src" ]; then
        mkdir -p "$(dirname "$dest/etc/$f")"
        cat "$src" > "$dest/etc/$f"
    fi
done

# --- sysfs ------------------------------------------------------------------------------------
device_chain() {  # the attributes of a device folder and of every parent up to /sys/devices
    d=$1
    while [ -n "$d" ] && [ "$d" != /sys/devices ] && [ "$d" != / ]; do
        for a in uevent modalias serial vendor model; do copy "$d/$a"; done
        link "$d/subsystem"
        if [ -L "$d/driver" ]; then
            link "$d/driver"
            drv=$(cd "$d/driver" && pwd -P)
            link "$drv/module"
        fi
        d=$(dirname "$d")
    done
}

for cls in /sys/class/block/* /sys/block/* /sys/class/net/*; do
    [ -L "$cls" ] || continue
    link "$cls"
    real=$(cd "$cls" && pwd -P)
    for a in dev size ro removable partition start uevent address operstate type ifindex \
             dm/name dm/uuid md/level md/uuid md/metadata_version md/array_state md/raid_disks; do
        copy "$real/$a"
    done
    for l in "$real"/holders/* "$real"/slaves/*; do link "$l"; done
    mkdir -p "$dest$real/holders" "$dest$real/slaves" 2>/dev/null || :
    if [ -L "$real/device" ]; then
        link "$real/device"
        device_chain "$(cd "$real/device" && pwd -P)"
    fi
    case $cls in  # a partition's disk is its parent folder
        /sys/class/block/*) [ -f "$real/partition" ] && copy "$(dirname "$real")/dev" ;;
    esac
done
[ -d /sys/class/net ] && mkdir -p "$dest/sys/class/net"
for l in /sys/fs/btrfs/*/devices/* ; do link "$l"; done
for f in /sys/fs/btrfs/*/label /sys/fs/btrfs/*/allocation/data/*/total_bytes; do copy "$f"; done

# --- udev and /dev ----------------------------------------------------------------------------
mkdir -p "$dest/run/udev/data"
for f in /run/udev/data/b* /run/udev/data/n*; do copy "$f"; done
for l in /dev/disk/*/* /dev/mapper/* /dev/md/* /dev/*/*; do
    case $l in /dev/pts/*|/dev/shm/*|/dev/fd/*|/dev/char/*|/dev/block/*|/dev/input/*) continue ;; esac
    link "$l"
done
echo "capture-host: captured into $dest"
