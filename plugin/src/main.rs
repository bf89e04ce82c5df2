//! `kubectl-s2z`: kubectl runs it as `kubectl s2z ...`. Parses the command line and hands off
//! to the library; see `kubectl s2z --help` for the exit codes.

use std::process::ExitCode;

use clap::Parser;
use kubectl_s2z::options::Terminal;
use kubectl_s2z::{Cli, Error, error::exit};

fn main() -> ExitCode {
    // Usage errors exit 2 with clap's message; nothing after this point prints usage text.
    let cli = Cli::parse();
    let terminal = Terminal::detect();
    let color = cli
        .global
        .color
        .enabled(terminal.stderr, terminal.no_color.as_deref());
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Api {
            what: "start the async runtime".into(),
            why: e.to_string(),
        })
        .and_then(|runtime| runtime.block_on(kubectl_s2z::run(cli, &terminal)));
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(error) => {
            kubectl_s2z::report(&error, color);
            ExitCode::from(error.exit_code())
        }
    }
}
