//! `kubectl-s2z`: the kubectl plugin of s2z.
//!
//! `main` parses the command line and calls [`run`]; [`run`] resolves the shared flags into
//! [`options::Options`], builds a [`Ctx`] and dispatches to one module per subcommand. Errors
//! come back as [`Error`], which [`report`] prints as `error: failed to <what>: <why>` plus a
//! hint, and whose [`Error::exit_code`] is the documented exit code.
//!
//! The modules depend on each other one way only, top to bottom: [`cli`] (parsing and
//! dispatch) on the subcommands; the subcommands on [`ctx`], [`cluster`], [`client`] and
//! [`output`]; those on [`options`] and [`error`]. Nothing below `cli` reaches back up, so a
//! subcommand can be read, tested and changed without the rest of the command line.

pub mod cli;
pub mod client;
pub mod cluster;
pub mod completion;
pub mod ctx;
pub mod defrag;
pub mod error;
pub mod options;
pub mod output;
pub mod settings;
pub mod status;
pub mod sweep;
pub mod toggle;
pub mod version;

pub use cli::{Cli, Command, run};
pub use ctx::Ctx;
pub use error::{Error, Result};
pub use output::report;
