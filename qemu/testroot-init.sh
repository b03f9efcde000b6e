#!/bin/sh
# bootgen test root: /sbin/init (and /sbin/altinit) of the disks `bootgen verify` boots.
#
# Runs as PID 1 under busybox sh once stage one has switched to the real root. It checks that
# stage one mounted what the host description says (/etc/bootgen-expected: one
# "<mountpoint> <fstype> [subvol=<name>]" line per stage-one filesystem; every filesystem but /
# carries a /bootgen-marker file holding its mountpoint), prints
#   BOOTGEN-UPTIME <seconds>
#   BOOTGEN-RESULT token=<T> disk=<id> init=<name> root=<ro|rw> mounts=<ok|missing:/a,/b> \
#                  verdict=<PASS|FAIL> net=<none|a.b.c.d/nn,...> detail=<mp>:<fstype>:<source>,...
# on the console and powers the machine off. Diagnostics go to stderr, prefixed "bootgen-testroot:".
#
# With bootgen.hibernate=1 on the command line it first hibernates the machine to the swap
# device stage one named in /sys/power/resume, around a random value kept only in memory:
#   BOOTGEN-HIBERNATE value=<V>     before, then the machine powers off;
#   BOOTGEN-RESUMED value=<V>       after a later boot resumed it (the same V: the same system).
# Only busybox is available: external commands are always spelled "busybox <applet>".
#
# Host-side test hooks: BOOTGEN_PROC replaces /proc, BOOTGEN_ROOT prefixes every file path of
# the root (not the mountpoints read from the mounts table). When BOOTGEN_PROC is set, or the
# script is not PID 1, it neither mounts anything nor powers off; BOOTGEN_NO_POWEROFF=1 also
# prevents the power-off. Outside PID 1 the exit status is 0 for PASS and 1 for FAIL.

PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH

root=${BOOTGEN_ROOT:-}
proc=${BOOTGEN_PROC:-/proc}
pid1=no
if [ "$$" = 1 ] && [ -z "${BOOTGEN_PROC:-}" ]; then
    pid1=yes
fi

say() {
    printf 'bootgen-testroot: %s\n' "$*" >&2
}

# mount_info MOUNTPOINT: set m_dev, m_type and m_opts from the last mount at MOUNTPOINT; false
# if none.
mount_info() {
    mi_want=$1
    mi_found=1
    m_dev=
    m_type=
    m_opts=
    if [ -r "$proc/mounts" ]; then
        while read -r mi_dev mi_dir mi_type mi_opts _mi_rest; do
            if [ "$mi_dir" = "$mi_want" ]; then
                m_dev=$mi_dev
                m_type=$mi_type
                m_opts=$mi_opts
                mi_found=0
            fi
        done < "$proc/mounts"
    fi
    return "$mi_found"
}

if [ "$pid1" = yes ]; then
    # stage one normally moves /proc, /sys and /dev here; mount what it did not
    [ -r /proc/mounts ] || busybox mount -t proc proc /proc
    mount_info /sys || busybox mount -t sysfs sysfs /sys
    mount_info /dev || busybox mount -t devtmpfs devtmpfs /dev
    # keep kernel messages from cutting through the result lines
    busybox dmesg -n 1 2>/dev/null
    # systemd leaves PID 1's output on /dev/null: talk to the console directly
    if [ -c /dev/console ]; then
        exec </dev/console >/dev/console 2>&1
    fi
fi

token=none
hibernate=no
cmdline=
if [ -r "$proc/cmdline" ]; then
    read -r cmdline < "$proc/cmdline" || :
fi
set -f
# shellcheck disable=SC2086 # split the command line into words (globbing is off)
set -- $cmdline
set +f
for arg in "$@"; do
    case $arg in
        bootgen.token=*) token=${arg#bootgen.token=} ;;
        bootgen.hibernate=1) hibernate=yes ;;
    esac
done

disk=unknown
if [ -r "$root/etc/bootgen-disk-id" ]; then
    read -r disk < "$root/etc/bootgen-disk-id" || :
fi

missing=
detail=
if [ -r "$root/etc/bootgen-expected" ]; then
    while read -r mp want extra; do
        [ -n "$mp" ] || continue
        good=yes
        if ! mount_info "$mp"; then
            say "$mp is not mounted"
            good=no
        elif [ "$m_type" != "$want" ]; then
            say "$mp is mounted as $m_type, expected $want"
            good=no
        elif [ -n "$extra" ] && ! case ",$m_opts," in *",${extra%%=*}=/${extra#*=},"*) true ;; *) false ;; esac; then
            say "$mp is mounted with $m_opts, expected $extra"
            good=no
        elif [ "$mp" != / ] && [ "$want" != tmpfs ]; then
            marker=
            if [ -r "$root$mp/bootgen-marker" ]; then
                read -r marker < "$root$mp/bootgen-marker" || :
            fi
            if [ "$marker" != "$mp" ]; then
                say "$mp holds the wrong filesystem (its marker says '$marker')"
                good=no
            fi
        fi
        if [ "$good" = no ]; then
            missing=${missing:+$missing,}$mp
        fi
        sub=
        case ",$m_opts," in *,subvol=*) sub=${m_opts#*subvol=}; sub=:${sub%%,*} ;; esac
        detail=${detail:+$detail,}$mp:${m_type:-none}:${m_dev:-none}$sub
    done < "$root/etc/bootgen-expected"
else
    say "$root/etc/bootgen-expected is missing"
    missing=/etc/bootgen-expected
fi

rootmode=rw
if mount_info /; then
    case $m_opts in
        ro | ro,*) rootmode=ro ;;
    esac
fi

uptime=unknown
if [ -r "$proc/uptime" ]; then
    read -r uptime _rest < "$proc/uptime" || :
fi

if [ -z "$missing" ]; then
    mounts=ok
    verdict=PASS
else
    mounts=missing:$missing
    verdict=FAIL
fi

# IPv4 addresses stage one left configured (network tests; flush_before_switch removes them)
net=${BOOTGEN_NET:-}
if [ "$pid1" = yes ]; then
    net=$(busybox ip -4 -o addr show 2>/dev/null | while read -r _n ifname _inet addr _rest; do
        [ "$ifname" = lo ] || printf '%s,' "$addr"
    done)
    net=${net%,}
fi

# hibernate (bootgen.hibernate=1): to the swap stage one named in /sys/power/resume
if [ "$hibernate" = yes ] && [ "$pid1" = yes ]; then
    swap=
    read -r resume < /sys/power/resume 2>/dev/null || resume=
    for b in /sys/class/block/*; do
        read -r majmin < "$b/dev" 2>/dev/null || continue
        [ "$majmin" = "$resume" ] && swap=/dev/${b##*/}
    done
    [ -b "$swap" ] || busybox mknod /dev/bootgen-swap b "${resume%%:*}" "${resume#*:}"
    [ -n "$swap" ] || swap=/dev/bootgen-swap
    value=
    read -r value < /proc/sys/kernel/random/uuid
    if busybox swapon "$swap"; then
        printf 'BOOTGEN-HIBERNATE value=%s swap=%s\n' "$value" "$swap"
        echo shutdown > /sys/power/disk
        if echo disk > /sys/power/state; then
            printf 'BOOTGEN-RESUMED value=%s\n' "$value"
        else
            say "hibernation failed"
        fi
    else
        say "cannot use $swap ($resume) as swap"
    fi
fi

printf 'BOOTGEN-UPTIME %s\n' "$uptime"
printf 'BOOTGEN-RESULT token=%s disk=%s init=%s root=%s mounts=%s verdict=%s net=%s detail=%s\n' \
    "$token" "$disk" "${0##*/}" "$rootmode" "$mounts" "$verdict" "${net:-none}" "${detail:-none}"

if [ "$pid1" = yes ] && [ "${BOOTGEN_NO_POWEROFF:-}" != 1 ]; then
    busybox sync
    busybox poweroff -f
    # PID 1 must never exit
    while :; do
        busybox sleep 60
    done
fi
[ "$verdict" = PASS ]
