//! `kubectl-s2z`: the kubectl plugin of s2z.
//!
//! `main` parses the command line and calls [`run`]; [`run`] resolves the shared flags into
//! [`cli::Options`], builds a [`Ctx`] and dispatches to one module per subcommand. Errors come
//! back as [`Error`], which [`report`] prints as `error: failed to <what>: <why>` plus a hint,
//! and whose [`Error::exit_code`] is the documented exit code.

pub mod cli;
pub mod client;
pub mod cluster;
pub mod completion;
pub mod defrag;
pub mod error;
pub mod output;
pub mod settings;
pub mod status;
pub mod sweep;
pub mod toggle;
pub mod version;

use std::io::Write;

use tokio::sync::OnceCell;

pub use cli::{Cli, Command};
pub use error::{Error, Result};

use crate::output::{Style, paint};

/// What every subcommand gets: the checked options, a lazily built client, and output.
#[derive(Debug)]
pub struct Ctx {
    /// The checked shared flags.
    pub options: cli::Options,
    cluster: OnceCell<client::Cluster>,
}

impl Ctx {
    /// A context for `options`; no connection is made until [`Ctx::cluster`] is called.
    pub fn new(options: cli::Options) -> Self {
        Ctx {
            options,
            cluster: OnceCell::new(),
        }
    }

    /// The cluster client, built on first use.
    pub async fn cluster(&self) -> Result<&client::Cluster> {
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

/// Runs the parsed command line.
pub async fn run(cli: Cli, terminal: &cli::Terminal) -> Result<()> {
    let ctx = Ctx::new(cli.global.resolve(terminal)?);
    match cli.command {
        Command::Status(args) => status::run(&ctx, args).await,
        Command::Enable(args) => toggle::run(&ctx, toggle::Toggle::Enable, args).await,
        Command::Disable(args) => toggle::run(&ctx, toggle::Toggle::Disable, args).await,
        Command::Wake(args) => toggle::run(&ctx, toggle::Toggle::Wake, args).await,
        Command::Sleep(args) => toggle::run(&ctx, toggle::Toggle::Sleep, args).await,
        Command::Settings(args) => settings::run(&ctx, args).await,
        Command::Sweep(args) => sweep::run(&ctx, args).await,
        Command::Version(args) => version::run(&ctx, args).await,
        Command::Completion(args) => completion::run(&ctx, args),
        Command::Defrag(args) => defrag::run_cli(&ctx, args)
            .await
            .map(drop)
            .map_err(Error::from),
    }
}

/// Prints an error the way the plugin promises: no usage text, `error: failed to ...`, then a
/// hint. Broken pipes print nothing.
pub fn report(error: &Error, color: bool) {
    if error.is_broken_pipe() {
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{} {error}", paint("error:", Style::Bad, color));
    if let Some(hint) = error.hint() {
        let _ = writeln!(err, "{} {hint}", paint("hint:", Style::Dim, color));
    }
}
