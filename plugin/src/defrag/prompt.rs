//! The confirmation prompt of `defrag` and `--abort`: asked unless `--yes`, and refused when
//! stdin is not a terminal, since then nobody can answer it.

use std::io::{self, IsTerminal};

use super::args::DefragArgs;
use super::error::DefragError;
use super::output::Printer;

/// Asks `question` unless `--yes`; refuses when nobody can answer.
pub fn confirm(
    args: &DefragArgs,
    printer: &mut Printer<'_>,
    question: &str,
    what: &str,
) -> Result<(), DefragError> {
    if args.yes {
        printer.human("\n")?;
        return Ok(());
    }
    if !io::stdin().is_terminal() {
        return Err(DefragError::Refused {
            what: what.into(),
            why: "stdin is not a terminal and --yes was not given; nothing was changed".into(),
            hint: "run it from a terminal to answer the prompt, or pass --yes; --dry-run shows the plan without changing anything".into(),
        });
    }
    printer.human(&format!("\n{question} (y/n): "))?;
    let mut answer = String::new();
    io::stdin().read_line(&mut answer)?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(DefragError::Refused {
            what: what.into(),
            why: "declined at the prompt; nothing was changed".into(),
            hint: "--dry-run shows the plan without changing anything".into(),
        }),
    }
}
