//! The command-line side of the binary: `brig check`, `brig init`, help.
//!
//! Exit codes: 0 success, 1 the command ran and found problems, 2 usage error.

use std::path::{Path, PathBuf};

use crate::config;
use crate::control::client;

const USAGE: &str = "\
usage: brig <command> [options]

  init [--config DIR] [--socket PATH]
                                 boot and supervise (what the kernel runs as /init)
  check [--root DIR] [--config DIR]
                                 validate a configuration tree offline; prints every error
  help                           this text
  version                        print the version
";

pub fn main(args: &[String]) -> i32 {
    let (cmd, rest) = match args.split_first() {
        Some((cmd, rest)) => (cmd.as_str(), rest),
        None => {
            eprintln!("{}", usage());
            return 2;
        }
    };
    if cmd != "init" {
        // A command-line tool, not PID 1: `brig logs | head` ends quietly when the reader goes,
        // as C tools do, instead of failing on EPIPE (Rust starts with SIGPIPE ignored).
        // SAFETY: signal(2) with a valid signal number and the default disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cmd {
        "init" => match parse_options(rest, &["--config", "--socket"]) {
            Ok(opts) => crate::boot::run(crate::boot::Mode::Manual {
                config: opts.get("--config").map(PathBuf::from),
                socket: opts.get("--socket").map(PathBuf::from),
            }),
            Err(e) => usage_error(&e),
        },
        "check" => match parse_options(rest, &["--root", "--config"]) {
            Ok(opts) => {
                check(opts.get("--root").map(Path::new), opts.get("--config").map(Path::new))
            }
            Err(e) => usage_error(&e),
        },
        "help" | "--help" | "-h" => {
            println!("{}", usage());
            0
        }
        "version" | "--version" | "-V" => {
            println!("brig {}", env!("CARGO_PKG_VERSION"));
            0
        }
        cmd if client::is_command(cmd) => client::main(cmd, rest),
        other => usage_error(&format!("unknown command {other:?}")),
    }
}

fn usage_error(message: &str) -> i32 {
    if message == HELP {
        println!("{}", usage());
        return 0;
    }
    eprintln!("brig: {message}\n\n{}", usage());
    2
}

/// What option parsing returns for `--help`: not an error, the usage is wanted.
const HELP: &str = "help requested";

fn usage() -> String {
    format!(
        "{USAGE}{}\n\nexit codes: 0 ok, 1 failed (problems found, a service did not start, reload \
         rejected), 2 usage error, 3 brig unreachable",
        client::USAGE
    )
}

/// Options of the form `--name VALUE`; anything else is an error naming the word.
struct Options(Vec<(String, String)>);

impl Options {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn parse_options(args: &[String], allowed: &[&str]) -> Result<Options, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--help" || arg == "-h" {
            return Err(HELP.into());
        }
        let name = arg.split_once('=').map_or(arg.as_str(), |(n, _)| n);
        if !allowed.contains(&name) {
            return Err(format!("unknown option {name:?}"));
        }
        let (name, value) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => {
                let value = it.next().ok_or(format!("{arg} needs a value"))?;
                (arg.clone(), value.clone())
            }
        };
        out.push((name, value));
    }
    Ok(Options(out))
}

/// `brig check`: validates `ROOT/etc/brig` (or `--config DIR`). With `--root`, also checks that
/// every program a service runs exists in that tree and is executable, which is what a firmware
/// build wants to know before the image is flashed.
fn check(root: Option<&Path>, config_dir: Option<&Path>) -> i32 {
    let root_dir = root.unwrap_or(Path::new("/"));
    let dir = match config_dir {
        Some(d) => d.to_path_buf(),
        None => root_dir.join(config::DEFAULT_DIR.trim_start_matches('/')),
    };
    if !dir.is_dir() {
        eprintln!("{}: not a directory", dir.display());
        return 1;
    }
    let tree = config::load(&dir);
    let mut problems: Vec<String> = tree.diagnostics.iter().map(ToString::to_string).collect();
    if let Some(root) = root {
        let paths = crate::container::Paths::from_system(&tree.system);
        for svc in &tree.services {
            problems.extend(root_problems(root, &paths, svc).iter().map(ToString::to_string));
        }
    }
    for p in &problems {
        eprintln!("{p}");
    }
    // Problems count every line above: errors in files, and (with --root) what the tree
    // lacks for a service whose file itself is fine.
    println!(
        "{}: {} read, {} rejected; {} in all",
        dir.display(),
        config::count(tree.services.len() + tree.broken.len(), "service file"),
        tree.broken.len(),
        config::count(problems.len(), "problem")
    );
    i32::from(!problems.is_empty())
}

/// What `brig check --root` finds wrong with `svc` in the tree at `root`: a program that cannot
/// run, a user or group name that the tree's (or the container image's) /etc/passwd and
/// /etc/group do not have.
fn root_problems(
    root: &Path,
    paths: &crate::container::Paths,
    svc: &config::Service,
) -> Vec<config::Diagnostic> {
    use crate::container::users;
    // A container's program and accounts live in its image, not in the host's tree.
    let base = match &svc.container {
        Some(c) => {
            let image = crate::container::image_dir(paths, &c.image);
            root.join(image.strip_prefix("/").unwrap_or(&image))
        }
        None => root.to_path_buf(),
    };
    if let Some(c) = svc.container.as_ref().filter(|_| !base.is_dir()) {
        // A squashfs image cannot be looked into without mounting it. Found where the start
        // looks: a name as NAME.squashfs in the store (the name may hold dots), an absolute
        // path as the file itself.
        let squashfs = if c.image.starts_with('/') {
            base.clone()
        } else {
            let mut file = base.clone().into_os_string();
            file.push(".squashfs");
            PathBuf::from(file)
        };
        if squashfs.is_file() {
            return Vec::new();
        }
        let message = if c.image.starts_with('/') {
            format!("container.image: image {:?} not found: no such directory or file", c.image)
        } else {
            format!(
                "container.image: image {:?} not found: no directory {} and no file {}",
                c.image,
                base.display(),
                squashfs.display()
            )
        };
        return vec![config::diagnostic_at_key(&svc.file, "container", message)];
    }
    let mut out = Vec::new();
    if let Some(why) = program_problem(&base, &svc.exec[0]) {
        let message = format!("exec: {} {why} under {}", svc.exec[0], base.display());
        out.push(config::diagnostic_at_key(&svc.file, "exec", message));
    }
    if let Some(config::Ident::Name(name)) = &svc.user {
        if users::user_by_name(&base, name).is_none() {
            let message = format!("user: {name:?} is not in {}", base.join("etc/passwd").display());
            out.push(config::diagnostic_at_key(&svc.file, "user", message));
        }
    }
    if let Some(config::Ident::Name(name)) = &svc.group {
        if users::group_by_name(&base, name).is_none() {
            let message = format!("group: {name:?} is not in {}", base.join("etc/group").display());
            out.push(config::diagnostic_at_key(&svc.file, "group", message));
        }
    }
    out
}

/// Why `program` (absolute, as seen from inside `root`) cannot run, if it cannot.
fn program_problem(root: &Path, program: &str) -> Option<&'static str> {
    use std::os::unix::fs::PermissionsExt;
    let mut path = root.join(program.trim_start_matches('/'));
    // Follow symlinks inside the tree, not on the build host (busybox applets are symlinks).
    for _ in 0..16 {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return Some("does not exist");
        };
        if !meta.file_type().is_symlink() {
            return match meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                true => None,
                false => Some("is not an executable file"),
            };
        }
        let Ok(target) = std::fs::read_link(&path) else {
            return Some("is an unreadable symlink");
        };
        path = if target.is_absolute() {
            root.join(target.strip_prefix("/").unwrap_or(&target))
        } else {
            path.parent().unwrap_or(root).join(target)
        };
    }
    Some("is a symlink loop")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn executable(root: &Path, rel: &str) {
        use std::os::unix::fs::PermissionsExt;
        write(root, rel, "#!/bin/sh\n");
        std::fs::set_permissions(root.join(rel), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn check_root_finds_missing_programs_and_accounts_in_the_tree_and_in_images() {
        let root = std::env::temp_dir().join(format!("brig-check-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        executable(&root, "usr/sbin/httpd");
        write(&root, "etc/passwd", "root:x:0:0::/root:/bin/sh\nwww:x:33:33::/:/bin/false\n");
        write(&root, "etc/group", "root:x:0:\nwww:x:33:\n");
        // The image has its own accounts: `dns` exists only there.
        let image = "var/lib/brig/images/dns";
        executable(&root, &format!("{image}/usr/sbin/dnsmasq"));
        write(&root, &format!("{image}/etc/passwd"), "dns:x:102:65534::/:/bin/false\n");
        write(&root, &format!("{image}/etc/group"), "nogroup:x:65534:\n");
        let services = "etc/brig/services";
        write(
            &root,
            &format!("{services}/web.toml"),
            "exec = [\"/usr/sbin/httpd\"]\nuser = \"www\"\n",
        );
        write(
            &root,
            &format!("{services}/typo.toml"),
            "# a comment\nexec = [\"/usr/sbin/httpdd\"]\nuser = \"ww\"\ngroup = \"wheel\"\n",
        );
        write(
            &root,
            &format!("{services}/dns.toml"),
            "exec = [\"/usr/sbin/dnsmasq\"]\nuser = \"dns\"\ngroup = \"nogroup\"\n[container]\nimage = \"dns\"\n",
        );
        write(
            &root,
            &format!("{services}/dns2.toml"),
            "exec = [\"/usr/sbin/dnsmasq\"]\nuser = \"www\"\n[container]\nimage = \"dns\"\n",
        );
        // A squashfs image whose name holds a dot.
        write(&root, "var/lib/brig/images/dns-2.90.squashfs", "hsqs");
        write(
            &root,
            &format!("{services}/packed.toml"),
            "exec = [\"/usr/sbin/dnsmasq\"]\n[container]\nimage = \"dns-2.90\"\n",
        );
        write(
            &root,
            &format!("{services}/lost.toml"),
            "exec = [\"/usr/sbin/dnsmasq\"]\n[container]\nimage = \"gone\"\n",
        );
        let tree = config::load(&root.join("etc/brig"));
        let paths = crate::container::Paths::from_system(&tree.system);
        let problems = |name: &str| -> Vec<String> {
            let svc = tree.service(name).unwrap();
            root_problems(&root, &paths, svc).iter().map(ToString::to_string).collect()
        };
        assert_eq!(problems("web"), Vec::<String>::new());
        assert_eq!(problems("dns"), Vec::<String>::new());
        let typo = root.join(services).join("typo.toml");
        assert_eq!(
            problems("typo"),
            vec![
                format!(
                    "{}:2:8: exec: /usr/sbin/httpdd does not exist under {}",
                    typo.display(),
                    root.display()
                ),
                format!(
                    "{}:3:8: user: \"ww\" is not in {}/etc/passwd",
                    typo.display(),
                    root.display()
                ),
                format!(
                    "{}:4:9: group: \"wheel\" is not in {}/etc/group",
                    typo.display(),
                    root.display()
                ),
            ]
        );
        // The host tree's www is not the image's.
        let dns2 = problems("dns2");
        assert_eq!(dns2.len(), 1, "{dns2:?}");
        assert!(dns2[0]
            .ends_with(&format!("user: \"www\" is not in {}/{image}/etc/passwd", root.display())));
        assert_eq!(problems("packed"), Vec::<String>::new());
        // A missing image is named as such, not as a missing program inside it.
        let lost = problems("lost");
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(lost[0].contains(":2:1: container.image: image \"gone\" not found"), "{lost:?}");
        assert_eq!(check(Some(&root), None), 1);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
