//! `system.toml`: the settings of the host itself (hostname, modules, log level, shutdown grace).
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
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SystemFile {
    hostname: Option<String>,
    modules: Option<Vec<String>>,
    log_level: Option<LogLevel>,
    shutdown_grace: Option<Dur>,
    log_buffer: Option<Spanned<usize>>,
    image_store: Option<Spanned<String>>,
    container_state: Option<Spanned<String>>,
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
    Ok(System {
        image_store: absolute("image_store", file.image_store, defaults.image_store.clone())?,
        container_state: absolute(
            "container_state",
            file.container_state,
            defaults.container_state.clone(),
        )?,
        log_buffer,
        hostname: file.hostname.unwrap_or(defaults.hostname),
        modules: file.modules.unwrap_or_default(),
        log_level: file.log_level.unwrap_or(defaults.log_level),
        shutdown_grace: file.shutdown_grace.map_or(defaults.shutdown_grace, |d| d.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
