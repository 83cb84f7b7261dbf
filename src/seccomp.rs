//! Seccomp filters of services: the BPF program a `[seccomp]` table describes, built in PID 1,
//! and installed by the child as its last step before execve.
//!
//! The program is compiled by seccompiler (rust-vmm's, the one Firecracker uses) and system
//! call names are resolved by the `syscalls` crate, both for the architecture brig is built
//! for. Compiling happens before the clone, so between clone and exec the child makes one more
//! system call, seccomp(2), on memory that already exists. seccompiler has a backend for
//! x86_64, aarch64 and riscv64 only: elsewhere neither crate is built, [`SUPPORTED`] is false
//! and the config loader rejects a `[seccomp]` table.

use nix::errno::Errno;

/// Whether this build can filter system calls.
pub const SUPPORTED: bool =
    cfg!(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64"));

/// How the listed system calls are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only the listed calls (and brig's own `execve`, `write` and `exit_group`) run; every
    /// other one gets the action.
    Allow,
    /// The listed calls get the action; every other one runs.
    Deny,
}

/// What a filtered system call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The call fails with this errno and the program goes on.
    Errno(i32),
    /// SECCOMP_RET_KILL_PROCESS: the whole process dies at once, as if by SIGSYS.
    Kill,
}

pub use imp::{compile, syscall_number, Program};

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64"))]
mod imp {
    use std::collections::BTreeMap;

    use nix::errno::Errno;
    use seccompiler::{sock_filter, BpfProgram, SeccompAction, SeccompFilter, TargetArch};

    use super::{Action, Mode};

    /// The system calls brig itself makes after installing an allow-list filter: execve to
    /// reach the program, and write + exit_group to report a failed exec through the status
    /// pipe.
    pub const IMPLICIT_ALLOW: &[&str] = &["execve", "write", "exit_group"];

    /// A compiled filter, ready for seccomp(2).
    #[derive(Debug)]
    pub struct Program(pub(super) BpfProgram);

    /// The number of system call `name` on this architecture, if it has one.
    pub fn syscall_number(name: &str) -> Option<i64> {
        name.parse::<syscalls::Sysno>().ok().map(|s| i64::from(s.id()))
    }

    /// Builds the BPF program: `numbers` are the listed system calls.
    pub fn compile(mode: Mode, numbers: &[i64], action: Action) -> Result<Program, String> {
        #[cfg(target_arch = "x86_64")]
        let arch = TargetArch::x86_64;
        #[cfg(target_arch = "aarch64")]
        let arch = TargetArch::aarch64;
        #[cfg(target_arch = "riscv64")]
        let arch = TargetArch::riscv64;
        let action = match action {
            // The kernel caps the errno at MAX_ERRNO (4095); config accepts no more.
            Action::Errno(e) => SeccompAction::Errno(e as u32),
            Action::Kill => SeccompAction::KillProcess,
        };
        // Inserted one by one: collect() would sort first and bring a sort routine along.
        let mut rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = BTreeMap::new();
        for &n in numbers {
            rules.insert(n, Vec::new());
        }
        let (mismatch, matched) = match mode {
            Mode::Allow => {
                for name in IMPLICIT_ALLOW {
                    let n = super::syscall_number(name)
                        .ok_or_else(|| format!("no system call {name} on this architecture"))?;
                    rules.insert(n, Vec::new());
                }
                (action.clone(), SeccompAction::Allow)
            }
            Mode::Deny => (SeccompAction::Allow, action.clone()),
        };
        let filter =
            SeccompFilter::new(rules, mismatch, matched, arch).map_err(|e| e.to_string())?;
        let program: BpfProgram =
            filter.try_into().map_err(|e: seccompiler::BackendError| e.to_string())?;
        Ok(Program(x32_guard(u32::from(action)).into_iter().chain(program).collect()))
    }

    /// On x86_64, calls through the x32 ABI carry the native architecture value with bit 30 of
    /// the number set, so `mount` is also 0x40000000 + 165: a deny list keyed on numbers would
    /// let them through. Every x32 call gets the action; no appliance service is an x32
    /// program. The guard runs before seccompiler's program, which checks the architecture
    /// itself; jumps in BPF are relative, so prepending leaves that program intact.
    #[cfg(target_arch = "x86_64")]
    fn x32_guard(action: u32) -> Vec<sock_filter> {
        const X32_SYSCALL_BIT: u32 = 0x4000_0000;
        const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
        // struct seccomp_data: nr at offset 0, arch at offset 4.
        let op = |code: u32, k: u32, jt: u8, jf: u8| sock_filter { code: code as u16, jt, jf, k };
        vec![
            op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4, 0, 0),
            // Another architecture: on to seccompiler's check, which kills.
            op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, AUDIT_ARCH_X86_64, 0, 3),
            op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
            op(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K, X32_SYSCALL_BIT, 0, 1),
            op(libc::BPF_RET | libc::BPF_K, action, 0, 0),
        ]
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn x32_guard(_action: u32) -> Vec<sock_filter> {
        Vec::new()
    }

    impl Program {
        /// Installs the filter on the calling process. The caller has set no_new_privs: the
        /// kernel refuses a filter without it (or CAP_SYS_ADMIN). Makes system calls only.
        pub fn install(&self) -> Result<(), Errno> {
            use seccompiler::Error;
            seccompiler::apply_filter(&self.0).map_err(|e| match e {
                Error::Prctl(e) | Error::Seccomp(e) => {
                    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL))
                }
                _ => Errno::EINVAL,
            })
        }
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64")))]
mod imp {
    use nix::errno::Errno;

    use super::{Action, Mode};

    /// No filter can exist here: the config loader rejects `[seccomp]` on this architecture.
    #[derive(Debug)]
    pub enum Program {}

    pub fn syscall_number(_name: &str) -> Option<i64> {
        None
    }

    pub fn compile(_mode: Mode, _numbers: &[i64], _action: Action) -> Result<Program, String> {
        Err(format!(
            "seccomp filters are not supported on this architecture ({})",
            std::env::consts::ARCH
        ))
    }

    impl Program {
        pub fn install(&self) -> Result<(), Errno> {
            match *self {}
        }
    }
}

/// The errno named `name` (`"EPERM"`, `"eacces"`), as this architecture numbers it.
pub fn errno_number(name: &str) -> Option<i32> {
    use std::fmt::Write;
    let upper = name.to_ascii_uppercase();
    let mut text = String::new();
    // Errno's names are its Debug text; the numbers differ between architectures (MIPS).
    (1..4096).find(|&n| {
        let e = Errno::from_raw(n);
        text.clear();
        let _ = write!(text, "{e:?}");
        e != Errno::UnknownErrno && text == upper
    })
}

#[cfg(test)]
// The filters are built and run on the build machine; armv7 and mipsel have none.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod tests {
    use super::*;

    fn number(name: &str) -> i64 {
        syscall_number(name).unwrap()
    }

    /// Whether the program compares the system call number against `nr` somewhere.
    fn checks(program: &Program, nr: i64) -> bool {
        let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
        program.0.iter().any(|i| i.code == jeq && i64::from(i.k) == nr)
    }

    /// Runs `body` in a forked child under `program` and returns its wait status. The child
    /// makes system calls only (the test harness is multi-threaded).
    fn run_filtered(program: &Program, body: fn() -> i32) -> i32 {
        // SAFETY: the child only makes system calls and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: prctl with integer arguments; _exit never returns.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                let code = match program.install() {
                    Ok(()) => body(),
                    Err(_) => 100,
                };
                libc::_exit(code)
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    /// mkdir on a parent that does not exist: ENOENT if it ran, the filter's errno if not.
    fn mkdir_errno() -> i32 {
        // SAFETY: a static C string.
        let rc = unsafe { libc::mkdir(c"/nonexistent-brig-test/x".as_ptr(), 0o755) };
        if rc == 0 {
            0
        } else {
            Errno::last_raw()
        }
    }

    #[test]
    fn allow_list_lets_brig_exec_and_report_a_failed_exec() {
        let p = compile(Mode::Allow, &[number("read")], Action::Errno(libc::EPERM)).unwrap();
        for name in ["read", "execve", "write", "exit_group"] {
            assert!(checks(&p, number(name)), "{name} not allowed");
        }
        // A deny list adds nothing: brig's own calls are not filtered there.
        let p = compile(Mode::Deny, &[number("mount")], Action::Kill).unwrap();
        assert!(checks(&p, number("mount")));
        assert!(!checks(&p, number("execve")));
    }

    #[test]
    fn denied_call_fails_with_the_errno_and_others_run() {
        let nrs = [number("mkdir"), number("mkdirat")];
        let p = compile(Mode::Deny, &nrs, Action::Errno(libc::EACCES)).unwrap();
        let status = run_filtered(&p, mkdir_errno);
        assert!(libc::WIFEXITED(status), "{status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), libc::EACCES);
    }

    #[test]
    fn kill_action_ends_the_process_with_sigsys() {
        let nrs = [number("mkdir"), number("mkdirat")];
        let p = compile(Mode::Deny, &nrs, Action::Kill).unwrap();
        let status = run_filtered(&p, mkdir_errno);
        assert!(libc::WIFSIGNALED(status), "{status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    #[test]
    fn allow_list_refuses_everything_else() {
        let p = compile(Mode::Allow, &[number("getpid")], Action::Errno(libc::EPERM)).unwrap();
        let status = run_filtered(&p, mkdir_errno);
        assert!(libc::WIFEXITED(status), "{status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), libc::EPERM);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_numbers_cannot_get_around_a_deny_list() {
        fn mkdir_x32() -> i32 {
            // SAFETY: a raw system call with a static C string; it fails either way.
            let rc = unsafe {
                libc::syscall(
                    0x4000_0000 | libc::SYS_mkdir,
                    c"/nonexistent-brig-test/x".as_ptr(),
                    0o755,
                )
            };
            if rc == 0 {
                0
            } else {
                Errno::last_raw()
            }
        }
        let p = compile(Mode::Deny, &[number("mkdir")], Action::Errno(libc::EACCES)).unwrap();
        let status = run_filtered(&p, mkdir_x32);
        assert!(libc::WIFEXITED(status), "{status:#x}");
        // Without the guard: ENOENT from an x32 kernel, ENOSYS from one without x32.
        assert_eq!(libc::WEXITSTATUS(status), libc::EACCES);
    }

    #[test]
    fn errno_names_are_this_architectures() {
        assert_eq!(errno_number("EPERM"), Some(libc::EPERM));
        assert_eq!(errno_number("enosys"), Some(libc::ENOSYS));
        assert_eq!(errno_number("EFOO"), None);
        assert_eq!(errno_number("UnknownErrno"), None);
    }
}
