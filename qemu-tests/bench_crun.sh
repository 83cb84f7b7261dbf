#!/bin/sh
# `crun run` of an OCI bundle whose root is an overlay over a BusyBox image, $1 times. The timed
# span, between the `crun start` marker and the container's `ctr up` marker (both kernel
# timestamps), covers what brig does for a container service: overlay mount, namespaces, cgroup
# limits, exec.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
bundle=/var/lib/bench/bundle
[ -d /sys/fs/cgroup ] || mount -t sysfs sysfs /sys
grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup
grep -q overlay /proc/filesystems || modprobe overlay
mkdir -p /run/ctr "$bundle/rootfs"
mount -t tmpfs tmpfs /run/ctr
i=1
while [ "$i" -le "$1" ]; do
    mkdir -p /run/ctr/upper /run/ctr/work
    echo "<6>bench: crun start $i" >/dev/kmsg
    mount -t overlay overlay \
        -o lowerdir=/var/lib/bench/image,upperdir=/run/ctr/upper,workdir=/run/ctr/work \
        "$bundle/rootfs"
    # pivot_root(2) gives EINVAL when the host root is the initramfs: like brig there, crun
    # then moves the new root onto / and chroots.
    crun run --no-pivot --bundle "$bundle" "bench$i" || echo "BENCH CRUN FAILED $i"
    umount "$bundle/rootfs"
    rm -rf /run/ctr/upper /run/ctr/work
    i=$((i + 1))
done
