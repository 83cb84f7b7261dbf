//! `system.toml`: the settings of the host itself: hostname, modules, logging, shutdown, and
//! the appliance sections `[watchdog]`, `[storage]` and `[boot]`.
//!
//! Every key has a default, so a missing, empty or broken `system.toml` still boots.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use toml::Spanned;

use super::duration::Dur;
use super::service::FileError;

/// Log levels as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// The typed `system.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct System {
    pub hostname: String,
    pub modules: Vec<String>,
    pub log_level: LogLevel,
    /// Time between SIGTERM and SIGKILL for processes left after the services stopped.
    pub shutdown_grace: Duration,
    /// Bytes of recent output kept in memory per service for `brig logs`.
    pub log_buffer: usize,
    /// Where container images live: `IMAGE_STORE/NAME` is a directory tree.
    pub image_store: PathBuf,
    /// Where persistent container layers live (on the data partition).
    pub container_state: PathBuf,
    pub watchdog: Option<Watchdog>,
    pub storage: Option<Storage>,
    pub boot: Boot,
}

/// `[watchdog]`: the hardware watchdog PID 1 kicks from its main loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watchdog {
    pub device: PathBuf,
    pub timeout: Duration,
    /// Between kicks; a third of the timeout when not given.
    pub interval: Option<Duration>,
    /// Disarm with the magic 'V' when brig lets go of the device (handing it over).
    pub magic_close: bool,
}

/// `[storage]`: the OpenWrt-style root, a read-only base plus a writable upper on a data
/// partition, merged with overlayfs and switched into from the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    /// Block device or image file holding the base; None: the initramfs is the base.
    pub base: Option<PathBuf>,
    pub base_fstype: String,
    /// Block device of the data partition.
    pub data: PathBuf,
    pub data_fstype: String,
    pub data_options: String,
    /// Run `format_command DEVICE` when the data partition has no filesystem.
    pub format: bool,
    pub format_command: Vec<String>,
    /// How long to wait for the devices to appear after their drivers loaded.
    pub device_wait: Duration,
}

/// What a fatal internal error in PID 1 does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFatal {
    /// Log it, sync and reboot: the appliance comes back in a known state.
    Reboot,
    /// Log it and keep reaping children forever: the services keep running unsupervised.
    Reap,
}

/// `[boot]`: when a boot counts as good, and what a bad one does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// All `critical` services up this long: the boot is good.
    pub good_after: Duration,
    /// Run once the boot is good (reset a bootloader counter, mark an A/B slot good).
    pub good_command: Vec<String>,
    /// Reboot when a critical service fails for good, so the bootloader can fall back.
    pub reboot_on_critical_failure: bool,
    pub on_fatal: OnFatal,
    /// The shell started on the console for `brig.rescue`, or when nothing could be started.
    pub rescue_shell: Vec<String>,
}

impl Default for Boot {
    fn default() -> Self {
        Boot {
            good_after: Duration::from_secs(30),
            good_command: Vec::new(),
            reboot_on_critical_failure: true,
            on_fatal: OnFatal::Reboot,
            rescue_shell: vec!["/bin/sh".into()],
        }
    }
}

impl Default for System {
    fn default() -> Self {
        System {
            hostname: "brig".into(),
            modules: Vec::new(),
            log_level: LogLevel::Info,
            shutdown_grace: Duration::from_secs(5),
            log_buffer: 16 * 1024,
            image_store: PathBuf::from("/var/lib/brig/images"),
            container_state: PathBuf::from("/var/lib/brig/containers"),
            watchdog: None,
            storage: None,
            boot: Boot::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SystemFile {
    hostname: Option<super::isolation::Hostname>,
    modules: Option<Vec<String>>,
    log_level: Option<LogLevel>,
    shutdown_grace: Option<Dur>,
    log_buffer: Option<Spanned<usize>>,
    image_store: Option<Spanned<String>>,
    container_state: Option<Spanned<String>>,
    watchdog: Option<WatchdogFile>,
    storage: Option<StorageFile>,
    boot: Option<BootFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchdogFile {
    device: String,
    timeout: Option<Spanned<Dur>>,
    interval: Option<Spanned<Dur>>,
    #[serde(default)]
    magic_close: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageFile {
    base: Option<String>,
    base_fstype: Option<String>,
    data: String,
    data_fstype: Option<String>,
    data_options: Option<String>,
    #[serde(default)]
    format: bool,
    format_command: Option<Vec<String>>,
    device_wait: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BootFile {
    good_after: Option<Dur>,
    good_command: Option<Spanned<Vec<String>>>,
    reboot_on_critical_failure: Option<bool>,
    on_fatal: Option<OnFatal>,
    rescue_shell: Option<Spanned<Vec<String>>>,
}

/// A duration that makes no sense below one second (a watchdog cannot be kicked every 0 s).
fn at_least_a_second(
    value: Option<Spanned<Dur>>,
    what: &str,
) -> Result<Option<Duration>, FileError> {
    match value {
        Some(v) if v.get_ref().0 < Duration::from_secs(1) => {
            Err(FileError { span: Some(v.span()), message: format!("{what} must be at least 1s") })
        }
        Some(v) => Ok(Some(v.into_inner().0)),
        None => Ok(None),
    }
}

/// A command given as an argv array: empty, or starting with an absolute path.
fn command(
    value: Option<Spanned<Vec<String>>>,
    key: &str,
    default: Vec<String>,
) -> Result<Vec<String>, FileError> {
    let Some(value) = value else { return Ok(default) };
    match value.get_ref().first() {
        Some(p) if !p.starts_with('/') => Err(FileError {
            span: Some(value.span()),
            message: format!("{key}: program {p:?} must be an absolute path"),
        }),
        _ => Ok(value.into_inner()),
    }
}

/// Parses the text of `system.toml`; the error is toml's, with its span.
pub fn parse(text: &str) -> Result<System, FileError> {
    let file: SystemFile = toml::from_str(text)?;
    let defaults = System::default();
    let log_buffer = match file.log_buffer {
        Some(b) if *b.get_ref() < 1024 => {
            return Err(FileError {
                span: Some(b.span()),
                message: "log_buffer must be at least 1024 (bytes per service)".into(),
            })
        }
        Some(b) => b.into_inner(),
        None => defaults.log_buffer,
    };
    let absolute = |key: &str, v: Option<Spanned<String>>, default: PathBuf| match v {
        Some(p) if !p.get_ref().starts_with('/') => Err(FileError {
            span: Some(p.span()),
            message: format!("{key} must be an absolute path"),
        }),
        Some(p) => Ok(PathBuf::from(p.into_inner())),
        None => Ok(default),
    };
    let watchdog = match file.watchdog {
        None => None,
        Some(w) => Some(Watchdog {
            device: PathBuf::from(w.device),
            timeout: at_least_a_second(w.timeout, "watchdog timeout")?
                .unwrap_or(Duration::from_secs(30)),
            interval: at_least_a_second(w.interval, "watchdog interval")?,
            magic_close: w.magic_close,
        }),
    };
    let storage = file.storage.map(|st| Storage {
        base: st.base.map(PathBuf::from),
        base_fstype: st.base_fstype.unwrap_or_else(|| "squashfs".into()),
        data: PathBuf::from(st.data),
        data_fstype: st.data_fstype.unwrap_or_else(|| "ext4".into()),
        data_options: st.data_options.unwrap_or_default(),
        format: st.format,
        format_command: st
            .format_command
            .unwrap_or_else(|| vec!["/sbin/mkfs.ext4".into(), "-q".into()]),
        device_wait: st.device_wait.map_or(Duration::from_secs(5), |d| d.0),
    });
    let boot = match file.boot {
        None => Boot::default(),
        Some(b) => {
            let d = Boot::default();
            Boot {
                good_after: b.good_after.map_or(d.good_after, |x| x.0),
                good_command: command(b.good_command, "good_command", d.good_command)?,
                reboot_on_critical_failure: b
                    .reboot_on_critical_failure
                    .unwrap_or(d.reboot_on_critical_failure),
                on_fatal: b.on_fatal.unwrap_or(d.on_fatal),
                rescue_shell: command(b.rescue_shell, "rescue_shell", d.rescue_shell)?,
            }
        }
    };
    Ok(System {
        image_store: absolute("image_store", file.image_store, defaults.image_store.clone())?,
        container_state: absolute(
            "container_state",
            file.container_state,
            defaults.container_state.clone(),
        )?,
        watchdog,
        storage,
        boot,
        log_buffer,
        hostname: file.hostname.map_or(defaults.hostname, |h| h.0),
        modules: file.modules.unwrap_or_default(),
        log_level: file.log_level.unwrap_or(defaults.log_level),
        shutdown_grace: file.shutdown_grace.map_or(defaults.shutdown_grace, |d| d.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_is_checked_when_read_not_when_sethostname_fails() {
        for bad in ["a b/c", "", &"x".repeat(65)] {
            let e = parse(&format!("hostname = \"{bad}\"\n")).unwrap_err();
            assert!(e.message.contains("is not a host name"), "{bad:?}: {e:?}");
        }
        assert_eq!(parse("hostname = \"gw-1.lan\"\n").unwrap().hostname, "gw-1.lan");
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("").unwrap(), System::default());
    }

    #[test]
    fn all_keys_parse() {
        let s = parse(
            "hostname = \"gw\"\nmodules = [\"overlay\"]\nlog_level = \"debug\"\n\
             shutdown_grace = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(s.hostname, "gw");
        assert_eq!(s.modules, vec!["overlay"]);
        assert_eq!(s.log_level, LogLevel::Debug);
        assert_eq!(s.shutdown_grace, Duration::from_secs(2));
    }

    #[test]
    fn appliance_sections_parse_with_defaults() {
        let s = parse(
            "[watchdog]\ndevice = \"/dev/watchdog\"\n[storage]\ndata = \"/dev/vdb\"\n\
             [boot]\ngood_command = [\"/usr/sbin/fw_setenv\", \"bootcount\", \"0\"]\n",
        )
        .unwrap();
        let w = s.watchdog.unwrap();
        assert_eq!(w.timeout, Duration::from_secs(30));
        assert!(!w.magic_close);
        let st = s.storage.unwrap();
        assert_eq!(st.base, None);
        assert_eq!(st.data_fstype, "ext4");
        assert_eq!(s.boot.good_command[0], "/usr/sbin/fw_setenv");
        assert_eq!(s.boot.on_fatal, OnFatal::Reboot);
    }

    #[test]
    fn relative_boot_command_is_rejected() {
        let text = "[boot]\ngood_command = [\"fw_setenv\"]\n";
        let err = parse(text).unwrap_err();
        assert!(err.message.contains("must be an absolute path"), "{err:?}");
        assert_eq!(&text[err.span.unwrap()], "[\"fw_setenv\"]");
    }

    #[test]
    fn tiny_log_buffer_is_rejected_at_its_value() {
        let text = "log_buffer = 10\n";
        let err = parse(text).unwrap_err();
        assert_eq!(&text[err.span.unwrap()], "10");
    }

    #[test]
    fn image_store_must_be_absolute() {
        let s = parse("image_store = \"/data/images\"\n").unwrap();
        assert_eq!(s.image_store, PathBuf::from("/data/images"));
        assert_eq!(s.container_state, PathBuf::from("/var/lib/brig/containers"));
        let err = parse("image_store = \"images\"\n").unwrap_err();
        assert!(err.message.contains("absolute"), "{err:?}");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = parse("hostnme = \"gw\"\n").unwrap_err();
        assert!(err.message.contains("unknown field"), "{err:?}");
    }
}
