#!/bin/sh
# The benchmark's probe: runs inside the guest under whichever init is PID 1, measures, and prints
# `BENCH ...` lines on the console for bench.py to parse. It only observes: which processes count
# as supervision, and every sum and median, are decided on the host.
#
# It uses shell builtins wherever it waits or scans /proc, so that it forks as little as possible
# while the init under test is starting services or sitting idle (a fork would be a wakeup and CPU
# time taken from the init being measured). It never exits: several inits restart what exits.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
exec </dev/null >/dev/console 2>&1
. /opt/bench.conf  # SERVICES (with the victim), READY_WAIT, RESTART, IDLE, ORPHANS, CONTAINERS
: "${READY_WAIT:=120}"
[ -e /proc/self/stat ] || mount -t proc proc /proc
echo "BENCH PROBE $$"

# A sub-second sleep without forking sleep(1): read with a timeout on a FIFO nobody writes.
mkfifo /run/bench.tick 2>/dev/null
exec 3<>/run/bench.tick
nap() {
    read -r -t "$1" -u 3 _
}

# Every service touches /run/up/NAME after writing its kmsg marker.
count_up() {
    set -- /run/up/*
    [ -e "$1" ] && echo $# || echo 0
}

# One line per process: pid ppid state comm rss pss uss voluntary nonvoluntary anonymous
# (KiB, counts, KiB).
# Kernel threads have an empty smaps_rollup and are skipped; so is anything that exits mid-scan.
snapshot() {
    tag=$1
    for d in /proc/[0-9]*; do
        { read -r stat <"$d/stat"; } 2>/dev/null || continue
        rss=""
        pss=0
        uss=0
        anon=0
        while read -r key value _; do
            case $key in
                Rss:) rss=$value ;;
                Pss:) pss=$value ;;
                Private_Clean: | Private_Dirty:) uss=$((uss + value)) ;;
                Anonymous:) anon=$value ;;
            esac
        done 2>/dev/null <"$d/smaps_rollup"
        [ -n "$rss" ] || continue
        vol=0
        nvol=0
        while read -r key value; do
            case $key in
                voluntary_ctxt_switches:) vol=$value ;;
                nonvoluntary_ctxt_switches:) nvol=$value ;;
            esac
        done 2>/dev/null <"$d/status"
        # stat: "pid (comm) state ppid ..."; our comms have no spaces or parentheses.
        comm=${stat#*(}
        comm=${comm%%)*}
        rest=${stat##*) }
        set -- $rest
        echo "BENCH P$tag ${d#/proc/} $2 $1 $comm $rss $pss $uss $vol $nvol $anon"
    done
}

uptime_s() {
    read -r up _ </proc/uptime
    echo "$up"
}

# 1. Ready: every service is up (the timing itself comes from the kmsg markers), or READY_WAIT s
# of guest time went by: an init that cannot start them all still gets its other figures.
read -r start _ </proc/uptime
until [ "$(count_up)" -ge "$SERVICES" ]; do
    read -r now _ </proc/uptime
    [ "${now%.*}" -ge $((${start%.*} + READY_WAIT)) ] && break
    nap 0.2
done
echo "BENCH READY $(count_up) of $SERVICES"
nap 2

# 2. Memory, and idle wakeups over IDLE seconds of guest time.
echo "BENCH T0 $(uptime_s)"
snapshot 0
if [ "$IDLE" -gt 0 ]; then
    nap "$IDLE"
    echo "BENCH T1 $(uptime_s)"
    snapshot 1
fi

# 3. Restart latency: SIGKILL the victim; its replacement writes the next `bench: up victim`.
if [ "$RESTART" = 1 ]; then
    read -r victim </run/pid.victim
    echo "<6>bench: kill victim $victim" >/dev/kmsg
    kill -KILL "$victim"
    tries=0
    while read -r now </run/pid.victim && [ "$now" = "$victim" ] && [ $tries -lt 100 ]; do
        nap 0.1
        tries=$((tries + 1))
    done
fi

# 4. Orphans: ORPHANS grandchildren that exit at once, reparented to PID 1; count zombies 1 s later.
if [ "$ORPHANS" -gt 0 ]; then
    i=0
    while [ $i -lt "$ORPHANS" ]; do
        (true &)
        i=$((i + 1))
    done
    nap 1
    zombies=0
    for d in /proc/[0-9]*; do
        { read -r stat <"$d/stat"; } 2>/dev/null || continue
        rest=${stat##*) }
        [ "${rest%% *}" = Z ] && zombies=$((zombies + 1))
    done
    echo "BENCH ZOMBIES $zombies"
fi

# 5. Containers: crun run of an OCI bundle over an overlay root, CONTAINERS times.
if [ "$CONTAINERS" -gt 0 ]; then
    /opt/bench-crun.sh "$CONTAINERS"
fi

# 6. The kernel's timestamps of exec and of every marker.
dmesg | grep -E 'Run \S+ as init process|bench: ' | sed 's/^/BENCH KMSG /'
echo "BENCH DONE"
exec sleep 999999
