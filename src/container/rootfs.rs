//! The mount sequence of a container root: overlay over the image, volumes, /proc with its
//! sensitive files masked, /sys read-only, a minimal /dev, then the root switch.
//!
//! Pure: builds [`Op`]s from paths, so the sequence is unit tested as data.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::MsFlags;

use super::{clone_flags, Op, Plan};
use crate::config::{Container, Network, Service, Volume};

/// /proc files that leak host information or control the host: /dev/null is bound on them.
const PROC_MASKED: &[&str] = &["kcore", "keys", "timer_list", "sched_debug", "sysrq-trigger"];
/// /proc directories made read-only (kernel tunables, IRQ routing, buses).
const PROC_READ_ONLY: &[&str] = &["sys", "irq", "bus", "fs"];
/// Device nodes bound from the host's /dev.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

fn cpath(path: &Path) -> CString {
    // Paths come from the config (checked for NUL) and from fixed names.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

fn cs(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

struct Builder {
    plan: Plan,
}

impl Builder {
    fn push(&mut self, label: String, op: Op) {
        self.plan.labels.push(label);
        self.plan.ops.push(op);
    }

    fn mkdir(&mut self, path: &Path) {
        self.push(format!("mkdir {}", path.display()), Op::Mkdir(cpath(path)));
    }

    /// mkdir -p of `rel` under the container root `root`, one component at a time, each
    /// refused if the image or the upper has a symlink there ([`Op::Mkdir`]).
    fn mkdir_p(&mut self, root: &Path, rel: &str) {
        let mut path = root.to_path_buf();
        let mut inside = String::new();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            path.push(part);
            inside.push('/');
            inside.push_str(part);
            self.push(
                format!("mkdir {inside} in the container root (no symlinks)"),
                Op::Mkdir(cpath(&path)),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn mount(
        &mut self,
        what: &str,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<String>,
        optional: bool,
    ) {
        let label = match (fstype, source) {
            (Some(t), _) => format!("mount {t} on {}", target.display()),
            (None, Some(s)) => format!("{what} {} on {}", s.display(), target.display()),
            (None, None) => format!("{what} {}", target.display()),
        };
        self.push(
            label,
            Op::Mount {
                source: source.map(cpath).or_else(|| fstype.map(cs)),
                target: cpath(target),
                fstype: fstype.map(cs),
                flags,
                data: data.map(|d| cs(&d)),
                optional,
            },
        );
    }

    fn bind(&mut self, source: &Path, target: &Path, read_only: bool, optional: bool) {
        if read_only {
            // Recursive and read-only all the way down: a read-only remount changes the top
            // mount only, and left the mounts under the source writable.
            self.push(
                format!("bind {} read-only on {}", source.display(), target.display()),
                Op::BindReadOnly { source: cpath(source), target: cpath(target), optional },
            );
            return;
        }
        self.mount(
            "bind",
            Some(source),
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            optional,
        );
    }

    /// A read-only bind remount: changes this mount only, keeping nosuid/nodev/noexec.
    fn remount_read_only(&mut self, target: &Path, optional: bool) {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        self.mount("remount read-only", None, target, None, flags, None, optional);
    }
}

/// The read-only base of the root.
pub enum Lower<'a> {
    Dir(&'a Path),
    /// A squashfs image, open in PID 1 under this descriptor.
    Squashfs(i32),
}

/// Builds the plan for container `c` of `svc`: image `lower`, staging under `run`,
/// persistent `(upper, work)` when the upper layer is kept.
pub fn plan(
    svc: &Service,
    c: &Container,
    lower: Lower,
    run: &Path,
    layer: Option<(&Path, &Path)>,
) -> Plan {
    let mut b = Builder { plan: Plan { clone_flags: clone_flags(c.network), ..Plan::default() } };
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let root = run.join("root");
    let userns = c.user_namespace.as_ref();
    if userns.is_some() && c.network != Network::Host {
        // The network namespace belongs to the host's user namespace, so root in the
        // container has no CAP_NET_BIND_SERVICE there: let any uid bind low ports instead
        // (a per-namespace sysctl, seen through the host's /proc before the root switch).
        let path = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
        b.push(
            format!("write 0 to {path}"),
            Op::WriteFile { path: cs(path), content: b"0\n".to_vec(), optional: true },
        );
    }

    // The writable layer: a tmpfs that vanishes with the mount namespace, or the kept dirs.
    let (upper, work) = match layer {
        Some((u, w)) => (u.to_path_buf(), w.to_path_buf()),
        None => {
            b.mount("", None, run, Some("tmpfs"), nosuid_nodev, Some("mode=0700".into()), false);
            b.mkdir(&run.join("upper"));
            b.mkdir(&run.join("work"));
            if let Some(u) = userns {
                // The upper's root is the container's /: root inside owns it.
                let upper = run.join("upper");
                let (uid, gid) = u.root_on_host();
                b.push(
                    format!("chown {} to {uid}:{gid}", upper.display()),
                    Op::Chown { path: cpath(&upper), uid, gid },
                );
            }
            (run.join("upper"), run.join("work"))
        }
    };
    let image = match lower {
        Lower::Dir(dir) => dir.to_path_buf(),
        Lower::Squashfs(image_fd) => {
            let target = run.join("image");
            b.mkdir(&target);
            let label = format!(
                "attach the squashfs image to a loop device, mount on {}",
                target.display()
            );
            b.push(label, Op::LoopMount { image_fd, target: cpath(&target) });
            target
        }
    };
    b.mkdir(&root);
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        image.display(),
        upper.display(),
        work.display()
    );
    b.mount("", None, &root, Some("overlay"), MsFlags::empty(), Some(options), false);

    // /proc of the new PID namespace, with the host-revealing files masked.
    let proc = root.join("proc");
    b.mkdir_p(&root, "/proc");
    b.mount("", None, &proc, Some("proc"), nosuid_nodev | MsFlags::MS_NOEXEC, None, false);
    for f in PROC_MASKED {
        b.bind(Path::new("/dev/null"), &proc.join(f), false, true);
    }
    for d in PROC_READ_ONLY {
        b.bind(&proc.join(d), &proc.join(d), true, true);
    }

    // /sys read-only: a fresh sysfs shows the container's own network namespace.
    let sys = root.join("sys");
    b.mkdir_p(&root, "/sys");
    let ro = nosuid_nodev | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    b.mount("", None, &sys, Some("sysfs"), ro, None, false);

    // A minimal /dev: a few nodes bound from the host, private ptys, shared memory.
    let dev = root.join("dev");
    b.mkdir_p(&root, "/dev");
    b.mount(
        "",
        None,
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k".into()),
        false,
    );
    for d in DEVICES {
        let node = dev.join(d);
        b.push(format!("create {}", node.display()), Op::Touch(cpath(&node)));
        b.bind(&Path::new("/dev").join(d), &node, false, false);
    }
    let pts = dev.join("pts");
    b.mkdir(&pts);
    b.mount(
        "",
        None,
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620".into()),
        false,
    );
    let shm = dev.join("shm");
    b.mkdir(&shm);
    b.mount("", None, &shm, Some("tmpfs"), nosuid_nodev, Some("mode=1777,size=1m".into()), false);
    for (target, link) in [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ] {
        let link = dev.join(link);
        b.push(
            format!("symlink {}", link.display()),
            Op::Symlink { target: cs(target), link: cpath(&link) },
        );
    }

    // Volumes after /proc, /sys and /dev, which would cover one mounted below them (a
    // device directory bound into /dev), and before the root may become read-only (their
    // mount points live in the upper).
    for v in &c.volumes {
        let target = root.join(v.target().trim_start_matches('/'));
        b.mkdir_p(&root, v.target());
        match v {
            Volume::Bind { source, read_only, .. } => {
                b.bind(Path::new(source), &target, *read_only, false)
            }
            Volume::Tmpfs { size, .. } => b.mount(
                "",
                None,
                &target,
                Some("tmpfs"),
                nosuid_nodev,
                Some(format!("size={size},mode=1777")),
                false,
            ),
        }
    }

    if c.read_only {
        b.remount_read_only(&root, false);
    }
    let hostname = c.hostname.clone().unwrap_or_else(|| svc.name.clone());
    b.push(format!("sethostname {hostname}"), Op::Hostname(cs(&hostname)));
    if c.network != Network::Host {
        b.push("set loopback up".into(), Op::LoopbackUp);
    }
    b.push(format!("switch root to {}", root.display()), Op::SwitchRoot(cpath(&root)));
    if let Some(u) = userns {
        // Last, once every mount is made by host root: the mount and network namespaces stay
        // owned by the host's user namespace, so root inside cannot undo them.
        b.plan.user_ops_from = Some(b.plan.ops.len());
        b.push("fork a helper to create the user namespace".into(), Op::UserNsHelper);
        b.push(
            format!("write uid_map {}", u.uid),
            Op::IdMap { file: c"uid_map", line: cs(&u.uid.proc_line()) },
        );
        b.push(
            format!("write gid_map {}", u.gid),
            Op::IdMap { file: c"gid_map", line: cs(&u.gid.proc_line()) },
        );
        b.push("join the user namespace".into(), Op::JoinUserNs);
    }
    b.plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::service::parse;

    fn plan_for(extra: &str, layer: Option<(&Path, &Path)>) -> Plan {
        let text = format!("exec = [\"/bin/sh\"]\n[container]\nimage = \"web\"\n{extra}");
        let svc = parse("web", "web.toml".into(), &text).unwrap().0;
        let c = svc.container.clone().unwrap();
        plan(
            &svc,
            &c,
            Lower::Dir(Path::new("/images/web")),
            Path::new("/run/brig/containers/web"),
            layer,
        )
    }

    fn position(p: &Plan, label: &str) -> usize {
        p.labels
            .iter()
            .position(|l| l == label)
            .unwrap_or_else(|| panic!("no {label:?} in {:#?}", p.labels))
    }

    #[test]
    fn ephemeral_root_is_an_overlay_with_its_upper_on_a_private_tmpfs() {
        let p = plan_for("", None);
        assert_eq!(p.labels[0], "mount tmpfs on /run/brig/containers/web");
        let i = position(&p, "mount overlay on /run/brig/containers/web/root");
        let Op::Mount { data: Some(data), .. } = &p.ops[i] else { panic!() };
        assert_eq!(
            data.to_str().unwrap(),
            "lowerdir=/images/web,upperdir=/run/brig/containers/web/upper,\
             workdir=/run/brig/containers/web/work"
        );
        assert_eq!(p.labels.last().unwrap(), "switch root to /run/brig/containers/web/root");
        // Default network is the host's: no network namespace, no loopback step.
        assert_eq!(p.clone_flags & libc::CLONE_NEWNET as u64, 0);
        assert!(!p.labels.iter().any(|l| l == "set loopback up"));
        assert!(p.labels.contains(&"sethostname web".to_string()));
    }

    #[test]
    fn persistent_upper_uses_the_state_dirs_and_no_tmpfs() {
        let p = plan_for(
            "upper = \"persistent\"\n",
            Some((Path::new("/data/web/upper"), Path::new("/data/web/work"))),
        );
        assert!(!p.labels.contains(&"mount tmpfs on /run/brig/containers/web".to_string()));
        let i = position(&p, "mount overlay on /run/brig/containers/web/root");
        let Op::Mount { data: Some(data), .. } = &p.ops[i] else { panic!() };
        assert!(data
            .to_str()
            .unwrap()
            .ends_with("upperdir=/data/web/upper,workdir=/data/web/work"));
    }

    #[test]
    fn volumes_are_mounted_before_the_root_turns_read_only_and_sensitive_proc_files_are_masked() {
        let p = plan_for(
            "read_only = true\nnetwork = \"none\"\nhostname = \"w1\"\nvolumes = [{ target = \"/srv/data\", bind = \"/var/web\", read_only = true }, { target = \"/tmp\", tmpfs = \"1M\" }]\n",
            None,
        );
        let bind =
            position(&p, "bind /var/web read-only on /run/brig/containers/web/root/srv/data");
        let tmpfs = position(&p, "mount tmpfs on /run/brig/containers/web/root/tmp");
        let ro_root = position(&p, "remount read-only /run/brig/containers/web/root");
        let dev = position(&p, "mount tmpfs on /run/brig/containers/web/root/dev");
        assert!(position(&p, "mkdir /srv in the container root (no symlinks)") < bind);
        // After /dev (and /proc, /sys), which would otherwise cover a volume below them.
        assert!(dev < bind && bind < tmpfs && tmpfs < ro_root);
        position(&p, "bind /dev/null on /run/brig/containers/web/root/proc/kcore");
        position(&p, "bind /run/brig/containers/web/root/proc/sys read-only on /run/brig/containers/web/root/proc/sys");
        position(&p, "mount sysfs on /run/brig/containers/web/root/sys");
        position(&p, "bind /dev/urandom on /run/brig/containers/web/root/dev/urandom");
        position(&p, "sethostname w1");
        assert!(
            position(&p, "set loopback up")
                < position(&p, "switch root to /run/brig/containers/web/root")
        );
        assert_ne!(p.clone_flags & libc::CLONE_NEWNET as u64, 0);
        assert_eq!(p.ops.len(), p.labels.len());
        assert_eq!(p.user_ops_from, None);
        assert!(!p.labels.iter().any(|l| l.contains("ip_unprivileged_port_start")));
    }

    #[test]
    fn user_namespace_comes_after_the_root_switch_and_owns_the_upper() {
        let p = plan_for(
            "network = \"none\"\nuid_map = \"0:100000:65536\"\ngid_map = \"0:200000:10\"\n",
            None,
        );
        let from = p.user_ops_from.unwrap();
        assert_eq!(p.labels[from - 1], "switch root to /run/brig/containers/web/root");
        assert_eq!(
            &p.labels[from..],
            [
                "fork a helper to create the user namespace",
                "write uid_map 0:100000:65536",
                "write gid_map 0:200000:10",
                "join the user namespace"
            ]
        );
        let Op::IdMap { line, .. } = &p.ops[from + 1] else { panic!() };
        assert_eq!(line.to_str().unwrap(), "0 100000 65536\n");
        let chown = position(&p, "chown /run/brig/containers/web/upper to 100000:200000");
        assert!(chown < position(&p, "mount overlay on /run/brig/containers/web/root"));
        assert!(position(&p, "write 0 to /proc/sys/net/ipv4/ip_unprivileged_port_start") < chown);
        assert_eq!(p.ops.len(), p.labels.len());
        // With the host's network there is no namespace of its own to change.
        let p = plan_for("uid_map = \"0:100000:65536\"\n", None);
        assert!(!p.labels.iter().any(|l| l.contains("ip_unprivileged_port_start")));
    }
}
