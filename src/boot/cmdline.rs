//! The kernel command line options brig reads from /proc/cmdline.
//!
//! The kernel keeps parameters with a dot in their name (`brig.debug`) for modules and does not
//! pass them to init as arguments or environment, so /proc/cmdline is the only place to find them.

use std::path::PathBuf;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `brig.debug`: log at debug level whatever system.toml says.
    pub debug: bool,
    /// `brig.config=DIR`: read the configuration from DIR instead of /etc/brig.
    pub config: Option<PathBuf>,
    /// `brig.rescue`: start a shell on the console besides the services.
    pub rescue: bool,
    /// `brig.factory_reset`: discard the writable layer before using it.
    pub factory_reset: bool,
}

pub fn parse(cmdline: &str) -> Options {
    let mut opts = Options::default();
    for word in split(cmdline) {
        match word.split_once('=') {
            None if word == "brig.debug" => opts.debug = true,
            Some(("brig.debug", v)) => opts.debug = !matches!(v, "0" | "off" | "no"),
            Some(("brig.config", v)) if !v.is_empty() => opts.config = Some(PathBuf::from(v)),
            None if word == "brig.rescue" => opts.rescue = true,
            None if word == "brig.factory_reset" => opts.factory_reset = true,
            _ => {}
        }
    }
    opts
}

/// Splits on whitespace, keeping double-quoted parts together as the kernel does.
fn split(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brig_options_are_found_among_others() {
        let o = parse("console=ttyS0 brig.debug root=/dev/vda brig.config=/data/brig\n");
        assert_eq!(
            o,
            Options { debug: true, config: Some("/data/brig".into()), ..Options::default() }
        );
        let o = parse("brig.rescue brig.factory_reset");
        assert!(o.rescue && o.factory_reset);
    }

    #[test]
    fn quoted_values_keep_spaces() {
        let o = parse("brig.config=\"/etc/my brig\" quiet");
        assert_eq!(o.config, Some("/etc/my brig".into()));
    }

    #[test]
    fn nothing_set_by_default() {
        assert_eq!(parse("console=ttyAMA0"), Options::default());
    }
}
