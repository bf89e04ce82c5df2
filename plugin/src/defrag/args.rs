//! The arguments of `kubectl s2z defrag`, its `--help` epilogue, and what they mean once parsed.
//!
//! They are their own module because every step of defrag (the run, `--abort`, the prompt)
//! reads them, while `defrag/mod.rs` runs those steps: kept apart, nothing below `mod.rs`
//! depends on it.

use std::time::Duration;

use super::error::EXIT_CODES;
use crate::options::Format;

/// Arguments of `defrag`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_long_help = after_help())]
pub struct DefragArgs {
    /// The node to empty
    #[arg(value_name = "NODE", required_unless_present_any = ["list", "candidates"])]
    pub node: Option<String>,
    /// Print the inventory, the blockers and the plan; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal)
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// How long to wait for the replacements before giving up (the state is kept); 0 waits forever
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Undo a defrag of NODE: uncordon it and hand every orphan back to its ReplicaSet
    #[arg(long, conflicts_with_all = ["list", "candidates"])]
    pub abort: bool,
    /// Rank GPU nodes by how cheaply they can be emptied
    #[arg(long, conflicts_with_all = ["list", "node", "dry_run"])]
    pub candidates: bool,
    /// List pods left orphaned by defrag, cluster-wide (or on NODE)
    #[arg(long, conflicts_with = "dry_run")]
    pub list: bool,
    /// With --candidates: only nodes matching this label selector
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Output format, filled in from the global `-o` by the caller.
    #[arg(skip = Format::Table)]
    pub format: Format,
    /// Colour on stdout, filled in by the caller.
    #[arg(skip)]
    pub color: bool,
}

/// `defrag --help`'s epilogue: how it works, then the exit codes.
fn after_help() -> String {
    format!(
        "\
How it works (seed 002):
  1. Inventory the node: pods, GPUs, replicas, PodAutoscaler scale, blockers.
  2. Confirm (\"Proceed with defrag? (y/n)\"), unless --yes.
  3. Cordon the node; orphan each Knative revision pod from its ReplicaSet (remove its
     ownerReferences and pod-template-hash label, guarded by its resourceVersion). The
     ReplicaSet starts a replacement elsewhere; the orphan keeps serving.
  4. Watch until, for every revision with m pods on the node,
     current_kpa_scale >= initial_replicas + m  or  current_kpa_scale >= current_replicas + m.
  5. Print \"Safe to defrag/remove node\" and the kubectl drain command. s2z never evicts.

Orphans carry the label s2z.dev/defrag-node and s2z.dev/defrag-* annotations. Running the
same command again resumes; --abort uncordons and hands each orphan back to its ReplicaSet
(which then removes one surplus pod, a not-yet-ready replacement first), never dropping below
the serving capacity. `defrag --list` shows orphans left anywhere.

{EXIT_CODES}"
    )
}

fn parse_timeout(value: &str) -> Result<Duration, String> {
    s2z_core::settings::parse_duration(value).map_err(|e| e.to_string())
}

impl DefragArgs {
    /// `--timeout`, `None` for 0 (forever).
    pub fn wait_limit(&self) -> Option<Duration> {
        (!self.timeout.is_zero()).then_some(self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: DefragArgs,
    }

    fn parse(args: &[&str]) -> Result<DefragArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("defrag").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn flags_parse_and_default() -> Result<(), clap::Error> {
        let a = parse(&["gpu-1"])?;
        assert_eq!(a.node.as_deref(), Some("gpu-1"));
        assert_eq!(a.timeout, Duration::from_secs(1800));
        assert!(!a.yes && !a.dry_run && !a.abort);
        let a = parse(&["gpu-1", "--timeout", "90s", "--yes", "--abort"])?;
        assert_eq!(a.timeout, Duration::from_secs(90));
        assert!(a.yes && a.abort);
        assert!(parse(&["--list"])?.list);
        assert!(parse(&["--candidates", "-l", "pool=h100"])?.candidates);
        Ok(())
    }

    #[test]
    fn bad_combinations_are_usage_errors() {
        assert!(parse(&[]).is_err(), "a node is required");
        assert!(parse(&["n", "--timeout", "soon"]).is_err());
        assert!(parse(&["n", "--candidates"]).is_err());
        assert!(parse(&["--list", "--abort"]).is_err());
    }
}
