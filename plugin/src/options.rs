//! The shared flags once checked ([`Options`]) and the types they are made of: the output
//! [`Format`], the [`ColorChoice`] and the [`Terminal`] it is resolved against.
//!
//! They sit below everything else, next to [`crate::error`]: the client, the output and every
//! subcommand read them, while only `cli.rs` knows the raw flags and how to parse them.

use std::time::Duration;

use clap::ValueEnum;

use crate::error::{Error, Result};

/// Output formats, as in `kubectl get -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    // A table for people.
    Table,
    // The table with more columns.
    Wide,
    // The documented JSON schema.
    Json,
    // The same document as YAML.
    Yaml,
}

impl Format {
    /// True for the machine-readable formats.
    pub fn is_structured(self) -> bool {
        matches!(self, Format::Json | Format::Yaml)
    }
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    // Colour when writing to a terminal and NO_COLOR is unset.
    Auto,
    // Always colour.
    Always,
    // Never colour.
    Never,
}

impl ColorChoice {
    /// Whether to colour a stream, given whether it is a terminal and the NO_COLOR variable.
    pub fn enabled(self, is_terminal: bool, no_color: Option<&str>) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            // https://no-color.org: any non-empty value disables colour.
            ColorChoice::Auto => is_terminal && no_color.is_none_or(str::is_empty),
        }
    }
}

/// The shared flags after checking: what the rest of the plugin uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `--kubeconfig`.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `--request-timeout`; `None` means no timeout.
    pub request_timeout: Option<Duration>,
    /// `--chunk-size`; `None` (0) lists everything in one request.
    pub chunk_size: Option<u32>,
    /// The install namespace.
    pub namespace: String,
    /// `-o`.
    pub format: Format,
    /// Colour on stdout.
    pub color_stdout: bool,
    /// Colour on stderr.
    pub color_stderr: bool,
}

/// Whether stdout and stderr are terminals, and NO_COLOR; passed in so resolution is testable.
#[derive(Debug, Clone, Default)]
pub struct Terminal {
    /// stdout is a terminal.
    pub stdout: bool,
    /// stderr is a terminal.
    pub stderr: bool,
    /// The NO_COLOR variable.
    pub no_color: Option<String>,
}

impl Terminal {
    /// The real process's terminal.
    pub fn detect() -> Self {
        use std::io::IsTerminal;
        Terminal {
            stdout: std::io::stdout().is_terminal(),
            stderr: std::io::stderr().is_terminal(),
            no_color: std::env::var("NO_COLOR").ok(),
        }
    }
}

/// Parses a duration flag: whole seconds or humantime (`30s`, `2m`, `1h 30m`).
pub fn parse_duration_flag(flag: &str, value: &str) -> Result<Duration> {
    // The core's message already says how to write a duration.
    s2z_core::settings::parse_duration(value)
        .map_err(|e| Error::usage(format!("read {flag}"), e.to_string(), None))
}

/// Like [`parse_duration_flag`], where zero means "no limit".
pub fn parse_timeout(flag: &str, value: &str) -> Result<Option<Duration>> {
    let duration = parse_duration_flag(flag, value)?;
    Ok((!duration.is_zero()).then_some(duration))
}
