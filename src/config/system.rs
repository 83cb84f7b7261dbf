//! `system.toml`: the settings of the host itself (hostname, modules, log level, shutdown grace).
//!
//! Every key has a default, so a missing, empty or broken `system.toml` still boots.

use std::time::Duration;

use serde::Deserialize;

use super::duration::Dur;

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
}

impl Default for System {
    fn default() -> Self {
        System {
            hostname: "brig".into(),
            modules: Vec::new(),
            log_level: LogLevel::Info,
            shutdown_grace: Duration::from_secs(5),
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
}

/// Parses the text of `system.toml`; the error is toml's, with its span.
pub fn parse(text: &str) -> Result<System, toml::de::Error> {
    let file: SystemFile = toml::from_str(text)?;
    let defaults = System::default();
    Ok(System {
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
    fn unknown_key_is_rejected() {
        let err = parse("hostnme = \"gw\"\n").unwrap_err();
        assert!(err.message().contains("unknown field"), "{err}");
    }
}
