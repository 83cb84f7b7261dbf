//! Privileged tests of containers and cgroups: brig as PID 1 of throwaway namespaces, in a
//! cgroup of the test's own, running services whose output the test reads from brig's log.
//!
//! The image is BusyBox (Debian's busybox-static, /bin/busybox) copied into a temporary
//! directory. Memory and pids limits are proven in the QEMU scenarios instead, where brig
//! mounts a pure cgroup v2 itself: a hybrid host like this one keeps those controllers in v1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{probe, start_in, Run};

fn tmp(test: &str) -> PathBuf {
    common::scratch(&format!("ct-{test}"))
}

/// A BusyBox image under `dir/images/NAME`.
fn busybox_image(dir: &Path, name: &str) -> PathBuf {
    let image = dir.join("images").join(name);
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(image.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", image.join("bin/busybox")).expect("busybox-static installed");
    std::os::unix::fs::symlink("busybox", image.join("bin/sh")).unwrap();
    image
}

/// Boots brig with `system` (image_store and container_state point into `dir`) and services,
/// and waits for the namespace to end.
fn boot(test: &str, dir: &Path, system: &str, services: &[(&str, &str)], cgroupns: bool) -> Run {
    let system = format!(
        "image_store = \"{}\"\ncontainer_state = \"{}\"\n{system}",
        dir.join("images").display(),
        dir.join("state").display()
    );
    start_in(test, &dir.join("config"), &system, services, cgroupns).wait(Duration::from_secs(30))
}

/// A container service running `script` under BusyBox sh in image `image`.
fn boxed(image: &str, script: &str, extra: &str) -> String {
    format!(
        "exec = [\"/bin/busybox\", \"sh\", \"-c\", \"{}\"]\nstop_timeout = \"500ms\"\n{extra}\n\
         [container]\nimage = \"{image}\"\n",
        script.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

#[test]
fn container_sees_itself_as_pid_1_with_its_own_hostname_and_only_its_own_mounts() {
    let dir = tmp("identity");
    busybox_image(&dir, "bb");
    let script = "echo pid=$$; echo host=$(/bin/busybox hostname); \
        echo procs=$(/bin/busybox ls /proc | /bin/busybox grep '^[0-9]' | /bin/busybox tr '\\n' ' '); \
        echo mounts=$(/bin/busybox awk '{print $5}' /proc/self/mountinfo | /bin/busybox tr '\\n' ' '); \
        echo keys=$(/bin/busybox wc -c < /proc/keys); \
        echo net=$(/bin/busybox ls /sys/class/net); \
        echo cgroup=$(/bin/busybox cat /proc/self/cgroup); \
        echo sysrw=$(/bin/busybox touch /sys/x 2>&1 | /bin/busybox grep -c Read-only); \
        echo rootrw=$(/bin/busybox touch /x 2>&1 | /bin/busybox grep -c Read-only); \
        echo scratch=$(echo hi > /scratch/f && /bin/busybox df -k /scratch | /bin/busybox awk 'NR==2{print $2}'); \
        echo shared=$(/bin/busybox cat /shared/hello; (echo bye > /shared/w) 2>&1 | /bin/busybox grep -c Read-only); \
        exec /bin/busybox sleep 1000";
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("hello"), "from-host\n").unwrap();
    let extra = format!(
        "hostname = \"boxy\"\nnetwork = \"none\"\nread_only = true\nvolumes = [\
         {{ target = \"/scratch\", tmpfs = \"1M\" }}, \
         {{ target = \"/shared\", bind = \"{}\", read_only = true }}]\n",
        shared.display()
    );
    let svc = format!("{}{extra}", boxed("bb", script, ""));
    let run = boot(
        "identity",
        &dir,
        "log_level = \"debug\"\n",
        &[("box", &svc), ("probe", &probe("1", "kill -USR2 1"))],
        false,
    );
    run.assert_has("service box: container root entered with pivot_root");
    run.assert_has("]: pid=1");
    run.assert_has("]: host=boxy");
    // The shell and the commands of the pipeline: small pids of its own, nothing of the host.
    let procs = run.log.lines().find_map(|l| l.split("]: procs=").nth(1)).unwrap();
    let pids: Vec<u32> = procs.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert!(pids.contains(&1) && pids.iter().all(|&p| p < 10), "{procs}\n{}", run.log);
    let mounts = run.log.lines().find(|l| l.contains("]: mounts=")).unwrap();
    let points: Vec<&str> = mounts.split("mounts=").nth(1).unwrap().split_whitespace().collect();
    assert_eq!(points[0], "/", "{mounts}");
    for p in &points {
        assert!(
            ["/", "/proc", "/sys", "/dev", "/scratch", "/shared"]
                .iter()
                .any(|root| p == root || p.starts_with(&format!("{root}/"))),
            "unexpected mount {p} in {mounts}"
        );
    }
    run.assert_has("]: keys=0");
    run.assert_has("]: net=lo");
    // Its own cgroup namespace: the service group is its root.
    let cgroup = run.log.lines().find_map(|l| l.split("]: cgroup=").nth(1)).unwrap();
    assert!(cgroup.split_whitespace().any(|c| c == "0::/"), "{cgroup}");
    run.assert_has("]: sysrw=1");
    // read_only root, a sized tmpfs volume and a read-only bind volume.
    run.assert_has("]: rootrw=1");
    run.assert_has("]: scratch=1024");
    run.assert_has("]: shared=from-host 1");
}

#[test]
fn ephemeral_upper_starts_fresh_after_restart_and_persistent_upper_keeps_writes() {
    let dir = tmp("uppers");
    let image = busybox_image(&dir, "bb");
    let script =
        "if [ -e /marker ]; then echo found; else echo fresh; fi; echo x > /marker; exit 1";
    let extra = "restart = \"on-failure\"\nrestart_limit = 2\nrestart_delay = \"50ms\"\n";
    let eph = boxed("bb", script, extra);
    let pers = format!("{}upper = \"persistent\"\n", boxed("bb", script, extra));
    let run = boot(
        "uppers",
        &dir,
        "",
        &[("eph", &eph), ("pers", &pers), ("probe", &probe("1.5", "kill -USR2 1"))],
        false,
    );
    assert_eq!(run.count("eph["), 2, "{}", run.log);
    let eph_lines: Vec<&str> = run.log.lines().filter(|l| l.contains("eph[")).collect();
    assert!(eph_lines.iter().all(|l| l.ends_with(": fresh")), "{}", run.log);
    let pers_lines: Vec<&str> = run.log.lines().filter(|l| l.contains("pers[")).collect();
    assert_eq!(pers_lines.len(), 2, "{}", run.log);
    assert!(
        pers_lines[0].ends_with(": fresh") && pers_lines[1].ends_with(": found"),
        "{}",
        run.log
    );
    // Writes went to the upper layers, never into the image.
    assert!(!image.join("marker").exists());
    assert!(dir.join("state/pers/upper/marker").exists());
    // Nothing the containers mounted is visible on the host.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(dir.to_str().unwrap()), "{mounts}");
}

#[test]
fn stop_kills_forked_and_setsid_children_within_the_stop_timeout() {
    let dir = tmp("stop");
    let brig = common::brig_inside().display().to_string();
    let socket = dir.join("config/brig.sock").display().to_string();
    let stubborn =
        "exec = [\"/bin/sh\", \"-c\", \"setsid sh -c 'trap \\\"\\\" TERM; echo $$ > /tmp/esc.pid; \
                    while :; do sleep 0.1; done' & trap '' TERM; while :; do sleep 0.1; done\"]\n\
                    stop_timeout = \"1s\"\n";
    let script = format!(
        "t0=$(date +%s%N); {brig} stop stubborn --socket {socket}; t1=$(date +%s%N); \
         echo stop_ms=$(( (t1 - t0) / 1000000 )); sleep 0.2; \
         if kill -0 $(cat /tmp/esc.pid) 2>/dev/null; then echo escapee=alive; else echo escapee=gone; fi; \
         kill -USR2 1"
    );
    let run =
        boot("stop", &dir, "", &[("stubborn", stubborn), ("probe", &probe("0.5", &script))], false);
    run.assert_has("service stubborn: did not stop within 1s, sending SIGKILL");
    run.assert_has("service stubborn: stopped");
    run.assert_has("]: escapee=gone");
    let ms: u64 =
        run.log.lines().find_map(|l| l.split("stop_ms=").nth(1)).unwrap().trim().parse().unwrap();
    assert!(ms < 2500, "stop took {ms} ms\n{}", run.log);
}

#[test]
fn capabilities_inside_match_the_toml() {
    let dir = tmp("caps");
    busybox_image(&dir, "bb");
    let show = "/bin/busybox grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status";
    let boxed_caps = boxed("bb", show, "capabilities = [\"CAP_NET_BIND_SERVICE\", \"kill\"]\n");
    let boxed_none = boxed("bb", show, "");
    let plain = "exec = [\"/bin/grep\", \"-E\", \"^(CapEff|CapBnd|CapAmb|NoNewPrivs)\", \"/proc/self/status\"]\n\
                 user = 65534\ngroup = 65534\ncapabilities = [\"CAP_NET_RAW\"]\nno_new_privs = true\n\
                 type = \"oneshot\"\n[rlimits]\nnofile = [100, 200]\n";
    let limits = "exec = [\"/bin/sh\", \"-c\", \"echo nofile=$(ulimit -Sn)/$(ulimit -Hn)\"]\n\
                  type = \"oneshot\"\n[rlimits]\nnofile = [100, 200]\n";
    let run = boot(
        "caps",
        &dir,
        "",
        &[
            ("capbox", &format!("type = \"oneshot\"\n{boxed_caps}")),
            ("nocap", &format!("type = \"oneshot\"\n{boxed_none}")),
            ("plain", plain),
            ("limits", limits),
            ("probe", &probe("1", "kill -USR2 1")),
        ],
        false,
    );
    let lines = |svc: &str| -> Vec<String> {
        run.log
            .lines()
            .filter(|l| l.contains(&format!("{svc}[")))
            .map(|l| {
                l.split("]: ").nth(1).unwrap().split_whitespace().collect::<Vec<_>>().join(" ")
            })
            .collect()
    };
    // NET_BIND_SERVICE (10) and KILL (5).
    let capbox = lines("capbox");
    assert!(capbox.contains(&"CapEff: 0000000000000420".to_string()), "{capbox:?}\n{}", run.log);
    assert!(capbox.contains(&"CapBnd: 0000000000000420".to_string()), "{capbox:?}");
    let nocap = lines("nocap");
    assert!(nocap.contains(&"CapEff: 0000000000000000".to_string()), "{nocap:?}");
    assert!(nocap.contains(&"CapBnd: 0000000000000000".to_string()), "{nocap:?}");
    // NET_RAW (13) kept through the switch to nobody, as an ambient capability.
    let plain = lines("plain");
    assert!(plain.contains(&"CapEff: 0000000000002000".to_string()), "{plain:?}\n{}", run.log);
    assert!(plain.contains(&"CapAmb: 0000000000002000".to_string()), "{plain:?}");
    assert!(plain.contains(&"NoNewPrivs: 1".to_string()), "{plain:?}");
    run.assert_has("]: nofile=100/200");
}

#[test]
fn bad_container_input_is_reported_and_other_services_keep_running() {
    let dir = tmp("bad");
    busybox_image(&dir, "bb");
    let run = boot(
        "bad",
        &dir,
        "",
        &[
            ("noimage", &boxed("missing", "echo never", "restart = \"never\"\n")),
            ("badlimit", "exec = [\"/bin/true\"]\n[limits]\nmemory_max = \"lots\"\n"),
            ("badcap", "exec = [\"/bin/true\"]\ncapabilities = [\"CAP_FLY\"]\n"),
            ("badmap", &format!("{}uid_map = \"0:0:10\"\n", boxed("bb", "echo never", ""))),
            (
                "unmapped",
                &format!(
                    "{}uid_map = \"0:100000:10\"\n",
                    boxed("bb", "echo never", "user = \"www\"\n")
                ),
            ),
            ("good", &boxed("bb", "echo up; exec /bin/busybox sleep 1000", "")),
            ("probe", &probe("1", "kill -USR2 1")),
        ],
        false,
    );
    run.assert_has(&format!(
        "service noimage: cannot start: open image {}{{,.squashfs}}: No such file or directory \
         (ENOENT)",
        dir.join("images/missing").display()
    ));
    run.assert_has("services/badlimit.toml:3:14: limits.memory_max: \"lots\" is not a size");
    run.assert_has("services/badcap.toml:2:16: capabilities: unknown capability \"CAP_FLY\"");
    run.assert_has("services/badmap.toml:4:1: container.uid_map: \"0:0:10\" maps onto host id 0");
    // A name is looked up in the image at start: busybox_image has no /etc/passwd.
    run.assert_has(&format!(
        "service unmapped: cannot start: user \"www\" does not exist in the image's {}",
        dir.join("images/bb/etc/passwd").display()
    ));
    run.assert_has("good[");
    run.assert_has("]: up");
    run.assert_has("service good: stopped");
}

#[test]
fn nested_in_a_cgroup_namespace_brig_enables_controllers_without_ebusy() {
    let dir = tmp("cgns");
    let show = "echo cgroup=$(cat /proc/self/cgroup | grep ^0::); \
                echo controllers=$(cat /sys/fs/cgroup/services/where/cgroup.controllers); \
                echo base_procs=$(cat /sys/fs/cgroup/cgroup.procs | wc -l)";
    let run = boot(
        "cgns",
        &dir,
        "",
        &[("where", &probe("0.2", show)), ("probe", &probe("0.6", "kill -USR2 1"))],
        true,
    );
    assert!(!run.has("cgroup:"), "no cgroup warning expected:\n{}", run.log);
    run.assert_has("]: cgroup=0::/services/where");
    // The namespace root (the test's group) holds no process: brig sits in its leaf.
    run.assert_has("]: base_procs=0");
    // Every controller the test's group was given reached the service's group.
    let offered =
        std::fs::read_to_string(run.cgroup.as_ref().unwrap().dir.join("cgroup.controllers"))
            .unwrap();
    run.assert_has(&format!("]: controllers={}", offered.trim()));
}

#[test]
fn bridge_network_gives_eth0_an_address_behind_a_host_bridge() {
    let dir = tmp("bridge");
    busybox_image(&dir, "bb");
    let mkbr = "exec = [\"/bin/sh\", \"-c\", \"ip link add br0 type bridge && \
                ip addr add 10.99.0.1/24 dev br0 && ip link set br0 up\"]\ntype = \"oneshot\"\n";
    let script =
        "echo addr=$(/bin/busybox ip -4 -o addr show eth0 | /bin/busybox awk '{print $4}'); \
                  echo route=$(/bin/busybox ip route | /bin/busybox grep default); \
                  /bin/busybox ping -c 1 -W 5 10.99.0.1 > /dev/null && echo gateway=reached; \
                  exec /bin/busybox sleep 1000";
    let web = format!(
        "{}network = \"bridge\"\nbridge = \"br0\"\naddress = \"10.99.0.2/24\"\n\
         gateway = \"10.99.0.1\"\n",
        boxed("bb", script, "requires = [\"mkbr\"]\ncapabilities = [\"CAP_NET_RAW\"]\n")
    );
    let run = boot(
        "bridge",
        &dir,
        "",
        &[
            ("mkbr", mkbr),
            ("web", &web),
            (
                "probe",
                &probe(
                    "2",
                    "echo ports=$(ip -o link show master br0 | cut -d' ' -f2); kill -USR2 1",
                ),
            ),
        ],
        false,
    );
    run.assert_has("]: addr=10.99.0.2/24");
    run.assert_has("]: route=default via 10.99.0.1 dev eth0");
    run.assert_has("]: gateway=reached");
    run.assert_has("]: ports=vb-web@");
}

#[test]
fn squashfs_image_is_mounted_read_only_under_a_writable_upper() {
    let dir = tmp("squashfs");
    let tree = busybox_image(&dir, "tree");
    std::fs::write(tree.join("etc/release"), "squashed\n").unwrap();
    let status = Command::new("mksquashfs")
        .arg(&tree)
        .arg(dir.join("images/sq.squashfs"))
        .args(["-noappend", "-quiet", "-no-progress"])
        .status()
        .expect("mksquashfs (Debian's squashfs-tools) is needed for this test");
    assert!(status.success());
    std::fs::remove_dir_all(&tree).unwrap();
    let script =
        "echo release=$(/bin/busybox cat /etc/release); echo x > /written && echo wrote=yes; \
                  exec /bin/busybox sleep 1000";
    let run = boot(
        "squashfs",
        &dir,
        "",
        &[("sq", &boxed("sq", script, "")), ("probe", &probe("1", "kill -USR2 1"))],
        false,
    );
    run.assert_has("]: release=squashed");
    run.assert_has("]: wrote=yes");
    run.assert_has("service sq: stopped");
}

#[test]
fn user_namespace_maps_container_root_to_an_unprivileged_host_uid() {
    let dir = tmp("userns");
    let image = busybox_image(&dir, "bb");
    std::fs::write(
        image.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:web:/var/www:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(image.join("etc/group"), "root:x:0:\nwww:x:33:\nlogs:x:40:www\n").unwrap();
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let bb = "/bin/busybox";
    let script = format!(
        "echo map=$({bb} cat /proc/self/uid_map | {bb} tr -s ' ' | {bb} sed 's/^ //'); \
         echo id=$({bb} id -u):$({bb} id -g):$({bb} id -G | {bb} tr ' ' ,):$USER:$HOME; \
         echo rootdir=$({bb} stat -c %u /); \
         echo upper=$(echo hi > /written && {bb} cat /written); \
         echo hostfile=$(echo x 2>&1 > /shared/f | {bb} grep -c 'Permission denied'); \
         echo remount=$({bb} mount -o remount,rw /proc/sys 2>&1 | {bb} grep -c 'denied'); \
         exec {bb} sleep 1000"
    );
    let volume = format!(
        "uid_map = \"0:100000:65536\"\nvolumes = [{{ target = \"/shared\", bind = \"{}\" }}]\n",
        shared.display()
    );
    let root_svc = format!("{}{volume}", boxed("bb", &script, ""));
    let www_svc = format!(
        "{}uid_map = \"0:200000:1000\"\nnetwork = \"none\"\n",
        boxed("bb", &script, "user = \"www\"\n")
    );
    // The probe runs in brig's PID namespace, as host root: it sees each container's sleep
    // with its host uid.
    let show = "grep -h '^Uid:' /proc/[0-9]*/status | tr -s '\\t' ' ' | \
                grep -E ' (100000|200033) ' | sort -u | sed 's/^/hostuid /'; kill -USR2 1";
    let run = boot(
        "userns",
        &dir,
        "",
        &[("rootbox", &root_svc), ("wwwbox", &www_svc), ("probe", &probe("1.5", show))],
        false,
    );
    run.assert_has("]: map=0 100000 65536");
    run.assert_has("]: id=0:0:0:root:/root");
    run.assert_has("]: map=0 200000 1000");
    // www and its supplementary group from the image's own /etc/passwd and /etc/group.
    run.assert_has("]: id=33:33:33,40:www:/var/www");
    run.assert_has("]: rootdir=0");
    run.assert_has("]: upper=hi");
    // www is not root inside either: / belongs to the container's root.
    run.assert_has("]: sh: can't create /written: Permission denied");
    // Root in the container is not root on the host: a host directory stays the host's.
    run.assert_has("]: hostfile=1");
    run.assert_has("]: remount=1");
    run.assert_has("hostuid Uid: 100000 100000 100000 100000");
    run.assert_has("hostuid Uid: 200033 200033 200033 200033");
    assert!(!shared.join("f").exists());
}

#[test]
fn leftovers_of_a_crashed_daemon_get_the_stop_signal_and_stop_timeout_before_sigkill() {
    let dir = tmp("leftovers");
    let polite = "exec = [\"/bin/sh\", \"-c\", \"(trap 'echo helper cleaned up; exit 0' TERM; \
                  while :; do sleep 0.05; done) & sleep 0.3; exit 3\"]\nrestart = \"never\"\n";
    let stubborn = "exec = [\"/bin/sh\", \"-c\", \"(trap '' TERM; while :; do sleep 0.05; done) & \
                    sleep 0.3; exit 3\"]\nrestart = \"never\"\nstop_timeout = \"400ms\"\n";
    let run = boot(
        "leftovers",
        &dir,
        "",
        &[("polite", polite), ("stubborn", stubborn), ("probe", &probe("2", "kill -USR2 1"))],
        false,
    );
    run.assert_has("service polite: main process gone, sending SIGTERM to the rest of its cgroup");
    run.assert_has("]: helper cleaned up");
    let gone = run.log.find("service polite: main process gone").unwrap();
    let cleaned = run.log.find("helper cleaned up").unwrap();
    let exited = run.log.find("service polite: exited").unwrap();
    assert!(gone < cleaned && cleaned < exited, "{}", run.log);
    assert!(!run.has("service polite: the rest of its cgroup did not exit"), "{}", run.log);
    run.assert_has(
        "service stubborn: the rest of its cgroup did not exit within 400ms, sending SIGKILL",
    );
    run.assert_has("service stubborn: exited");
}

#[test]
fn symlinks_planted_in_a_persistent_upper_never_lead_container_mounts_onto_the_host() {
    let dir = tmp("symlink");
    busybox_image(&dir, "bb");
    // What a container could have left in its persistent upper on an earlier run: its volume's
    // mount point, and its /dev, as symlinks to host directories.
    let host = dir.join("host-target");
    std::fs::create_dir_all(&host).unwrap();
    for (svc, link) in [("vol", "www"), ("dev", "dev")] {
        let upper = dir.join("state").join(svc).join("upper");
        std::fs::create_dir_all(&upper).unwrap();
        std::os::unix::fs::symlink(&host, upper.join(link)).unwrap();
    }
    let never = "restart = \"never\"\n";
    let vol = format!(
        "{}upper = \"persistent\"\nvolumes = [{{ target = \"/www/sub\", tmpfs = \"1M\" }}]\n",
        boxed("bb", "echo vol-ran", never)
    );
    let dev = format!("{}upper = \"persistent\"\n", boxed("bb", "echo dev-ran", never));
    let run = boot(
        "symlink",
        &dir,
        "",
        &[
            ("vol", &vol),
            ("dev", &dev),
            ("good", &boxed("bb", "echo up; exec /bin/busybox sleep 1000", "")),
            ("probe", &probe("1", "kill -USR2 1")),
        ],
        false,
    );
    let refused =
        "in the container root (no symlinks) failed: Too many symbolic links encountered \
                   (ELOOP)";
    run.assert_has(&format!("service vol: container setup: mkdir /www {refused}"));
    run.assert_has(&format!("service dev: container setup: mkdir /dev {refused}"));
    assert!(!run.log.contains("vol-ran") && !run.log.contains("dev-ran"), "{}", run.log);
    let left: Vec<_> = std::fs::read_dir(&host).unwrap().collect();
    assert!(left.is_empty(), "brig wrote into the host directory: {left:?}");
    run.assert_has("]: up");
}

#[test]
fn container_without_an_image_runs_over_the_host_root_read_only() {
    let dir = tmp("hostroot");
    let marker = dir.join("host-file");
    std::fs::write(&marker, "host\n").unwrap();
    let script = format!(
        "echo pid=$$; echo sees=$(/bin/busybox cat {m}); echo changed > {m}; \
         echo wrote=$(/bin/busybox cat {m}); exec /bin/busybox sleep 1000",
        m = marker.display()
    );
    let svc = format!(
        "exec = [\"/bin/busybox\", \"sh\", \"-c\", \"{script}\"]\nstop_timeout = \"500ms\"\n\
         [container]\nnetwork = \"none\"\nupper = \"persistent\"\n"
    );
    let run = boot(
        "hostroot",
        &dir,
        "",
        &[("overhost", &svc), ("probe", &probe("1", "kill -USR2 1"))],
        false,
    );
    run.assert_has("]: pid=1");
    run.assert_has("]: sees=host");
    // The write went to the container's upper layer, not to the host's file.
    run.assert_has("]: wrote=changed");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "host\n");
}

#[test]
fn container_init_reaps_orphans_and_passes_on_how_the_service_ended() {
    let dir = tmp("init");
    busybox_image(&dir, "bb");
    // An orphan that exits at once, under a main program that never waits for anything.
    let orphaning = "(/bin/busybox sleep 0.1 &); echo pid=$$; exec /bin/busybox sleep 1000";
    let stop = "";
    let reaper = format!("{}init = true\n", boxed("bb", orphaning, stop));
    let plain = boxed("bb", orphaning, stop);
    let never = "restart = \"never\"\n";
    let coded = format!("{}init = true\n", boxed("bb", "exit 3", never));
    let killed = format!("{}init = true\n", boxed("bb", "kill -KILL $$", never));
    let b = start_in(
        "init",
        &dir.join("config"),
        &format!(
            "image_store = \"{}\"\ncontainer_state = \"{}\"\n",
            dir.join("images").display(),
            dir.join("state").display()
        ),
        &[("reaper", &reaper), ("plain", &plain), ("coded", &coded), ("killed", &killed)],
        false,
    );
    let limit = Duration::from_secs(30);
    b.wait_for("service reaper: running under its container's init", limit);
    b.wait_for("service coded: exited with status 3", limit);
    b.wait_for("service killed: killed by signal SIGKILL", limit);
    std::thread::sleep(Duration::from_millis(1500));
    // Under brig's init the service is PID 2 and its orphan is gone; as PID 1 itself, a
    // program that never waits keeps the zombie (which is what init is for).
    let log = b.log();
    assert!(log.contains("reaper[") && log.contains("]: pid=2"), "{log}");
    let (pids, zombies) = b.service_procs("reaper");
    assert_eq!((pids.len(), zombies), (2, 0), "init and sleep, no zombie: {pids:?}");
    let (pids, zombies) = b.service_procs("plain");
    assert_eq!((pids.len(), zombies), (1, 1), "sleep as PID 1 keeps its zombie: {pids:?}");
    // SIGTERM reaches the service itself, which is not a namespace init any more: no wait
    // for stop_timeout.
    let (code, out, err) = b.client(&["stop", "reaper"]);
    assert_eq!(code, 0, "{out}{err}");
    let log = b.log();
    assert!(!log.contains("service reaper: did not stop within"), "{log}");
    assert!(log.contains("service reaper: stopped (killed by signal SIGTERM)"), "{log}");
    b.client(&["poweroff"]);
    b.wait(limit);
}

#[test]
fn read_only_bind_volume_is_read_only_in_every_mount_below_it_and_dev_volumes_stay_visible() {
    let dir = tmp("robind");
    busybox_image(&dir, "bb");
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    // A mount under the volume's source, made in brig's own mount namespace.
    let prep = format!(
        "exec = [\"/bin/sh\", \"-c\", \"mount -t tmpfs t {}\"]\ntype = \"oneshot\"\n",
        src.join("sub").display()
    );
    let script = "(echo x > /h/top) 2>/dev/null && echo top=rw || echo top=ro; \
        (echo x > /h/sub/f) 2>/dev/null && echo sub=rw || echo sub=ro; \
        (echo x > /dev/data/f) 2>/dev/null && echo devdata=rw || echo devdata=missing; \
        exec /bin/busybox sleep 1000";
    let svc = format!(
        "{}volumes = [{{ target = \"/h\", bind = \"{}\", read_only = true }}, \
         {{ target = \"/dev/data\", tmpfs = \"64K\" }}]\n",
        boxed("bb", script, "requires = [\"prep\"]\n"),
        src.display()
    );
    let run = boot(
        "robind",
        &dir,
        "",
        &[("prep", &prep), ("ro", &svc), ("probe", &probe("1", "kill -USR2 1"))],
        false,
    );
    run.assert_has("]: top=ro");
    // Regression: the remount made only the top mount read-only.
    run.assert_has("]: sub=ro");
    // Regression: /dev was mounted after the volumes and covered this one.
    run.assert_has("]: devdata=rw");
}
