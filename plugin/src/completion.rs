//! `kubectl s2z completion bash|zsh|fish`: prints a completion script for `kubectl-s2z`.

use clap_complete::Shell;

use crate::ctx::Ctx;
use crate::error::Result;

/// The shells with completion scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompletionShell {
    // Bash.
    Bash,
    // Zsh.
    Zsh,
    // Fish.
    Fish,
}

/// Arguments of `completion`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Examples:
  source <(kubectl-s2z completion bash)
  kubectl-s2z completion zsh > \"${fpath[1]}/_kubectl-s2z\"
  kubectl-s2z completion fish > ~/.config/fish/completions/kubectl-s2z.fish")]
pub struct Args {
    /// The shell
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

/// Renders the completion script of `command` (the whole command line) for `shell`.
///
/// The caller passes the command in: the command line is defined above this module, and
/// depending on it here would make the two depend on each other.
pub fn script(shell: CompletionShell, mut command: clap::Command) -> String {
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "kubectl-s2z", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `completion` for `command`, the whole command line.
pub fn run(ctx: &Ctx, args: Args, command: clap::Command) -> Result<()> {
    ctx.print(&script(args.shell, command))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::CommandFactory;

    #[test]
    fn every_shell_gets_a_script_naming_the_subcommands() {
        for shell in [
            CompletionShell::Bash,
            CompletionShell::Zsh,
            CompletionShell::Fish,
        ] {
            let text = script(shell, Cli::command());
            assert!(text.contains("kubectl-s2z"), "{shell:?}");
            for sub in [
                "status", "enable", "disable", "wake", "sleep", "settings", "sweep",
            ] {
                assert!(text.contains(sub), "{shell:?} lacks {sub}");
            }
        }
    }
}
