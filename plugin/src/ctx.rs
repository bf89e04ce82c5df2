//! [`Ctx`], what every subcommand is handed: the checked options, a lazily built client, and
//! the plugin's ways to write to stdout and stderr.
//!
//! It is its own module, not part of `lib.rs` or `cli.rs`, because every subcommand depends on
//! it while the dispatcher depends on every subcommand: kept apart, the dependencies run one way.

use std::io::Write;

use tokio::sync::OnceCell;

use crate::client::{self, Cluster};
use crate::error::Result;
use crate::options::Options;
use crate::output::{Style, paint};

/// What every subcommand gets: the checked options, a lazily built client, and output.
#[derive(Debug)]
pub struct Ctx {
    /// The checked shared flags.
    pub options: Options,
    cluster: OnceCell<Cluster>,
}

impl Ctx {
    /// A context for `options`; no connection is made until [`Ctx::cluster`] is called.
    pub fn new(options: Options) -> Self {
        Ctx {
            options,
            cluster: OnceCell::new(),
        }
    }

    /// The cluster client, built on first use.
    pub async fn cluster(&self) -> Result<&Cluster> {
        self.cluster
            .get_or_try_init(|| client::connect(&self.options))
            .await
    }

    /// Writes to stdout. A closed pipe comes back as an error that exits 0 silently.
    pub fn print(&self, text: &str) -> Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        Ok(())
    }

    /// A `warning:` line on stderr.
    pub fn warn(&self, message: &str) {
        let prefix = paint("warning:", Style::Warn, self.options.color_stderr);
        let _ = writeln!(std::io::stderr(), "{prefix} {message}");
    }

    /// A plain line on stderr, for progress and notes that are not the command's output.
    pub fn note(&self, message: &str) {
        let _ = writeln!(std::io::stderr(), "{message}");
    }
}
