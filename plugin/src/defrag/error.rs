//! How `kubectl s2z defrag` ends: its outcomes, its errors and the exit codes they map to.
//!
//! Defrag has outcomes the other subcommands do not (an unknown node, a node with nothing to do,
//! a revision without its PodAutoscaler, an interrupted run), so it has its own codes on top of
//! the plugin's shared ones; scripts can tell "not safe yet" (8) from "nothing to do" (10).

use std::io;
use std::time::Duration;

use crate::client::{Cluster, Req};
use crate::error::{Error as PluginError, Forbidden, SubcommandError, exit};

/// Exit codes of `defrag`; 0-8 are the plugin's shared codes.
pub mod code {
    pub use crate::error::exit::{FAILURE, FORBIDDEN, OK, REFUSED, TIMEOUT, USAGE};
    /// The node named on the command line does not exist.
    pub const UNKNOWN_NODE: u8 = 9;
    /// The node has no Knative revision pod to move (or, with `--abort`, no defrag to undo).
    pub const NOTHING_TO_DO: u8 = 10;
    /// A revision on the node has no PodAutoscaler (or no Deployment): its scale cannot be read,
    /// so the node can never be declared safe.
    pub const MISSING_AUTOSCALER: u8 = 11;
    /// Interrupted by Ctrl-C or SIGTERM (128 + SIGINT); the state left behind is consistent.
    pub const INTERRUPTED: u8 = 130;
}

/// The exit-code table printed in `defrag --help` and the README.
pub const EXIT_CODES: &str = "\
Exit codes:
  0    safe to drain (or: dry run printed, abort complete, list/candidates printed)
  1    other failure, e.g. an unexpected API error
  2    bad usage or invalid value
  3    refused: stdin is not a terminal and --yes was not given, or the prompt was declined
  4    no usable cluster (kubeconfig, connection, credentials)
  6    forbidden by RBAC: the message names the verb and resource
  8    timed out: not safe yet; the state is kept, run again to resume or use --abort
  9    unknown node
  10   nothing to do: no Knative pod on the node (with --abort: no defrag to undo)
  11   a revision on the node has no PodAutoscaler or Deployment
  130  interrupted (Ctrl-C); the state is kept, run again to resume or use --abort";

/// How a run that did not fail ended; every outcome exits 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The node is safe to drain.
    Safe,
    /// `--dry-run` printed the plan.
    DryRun,
    /// `--abort` handed everything back.
    Aborted,
    /// `--list` or `--candidates` printed.
    Listed,
}

impl Outcome {
    /// The exit code.
    pub fn exit_code(self) -> u8 {
        code::OK
    }
}

/// Everything that can go wrong in `defrag`.
#[derive(Debug, thiserror::Error)]
pub enum DefragError {
    /// The node does not exist.
    #[error("failed to find node/{0}: no such node")]
    UnknownNode(String),
    /// Nothing to move (or to undo).
    #[error("failed to {what}: nothing to do: {why}")]
    NothingToDo {
        /// What was asked, e.g. `defrag node/n1`.
        what: String,
        /// What was looked for and not found.
        why: String,
        /// What to do instead.
        hint: String,
    },
    /// Revisions whose PodAutoscaler or Deployment is missing.
    #[error("failed to read the scale of {}: {why}", .revisions.join(", "))]
    MissingAutoscaler {
        /// `namespace/revision` of each.
        revisions: Vec<String>,
        /// What is missing.
        why: String,
    },
    /// RBAC forbids a request.
    #[error(transparent)]
    Forbidden(Forbidden),
    /// The node did not become safe (or the abort did not finish) in time.
    #[error("failed to {what} within {}: {pending}", humantime::format_duration(*.waited))]
    Timeout {
        /// What was awaited.
        what: String,
        /// What was still pending.
        pending: String,
        /// How long.
        waited: Duration,
        /// The node, for the hint.
        node: String,
    },
    /// Refused before changing anything.
    #[error("failed to start {what}: {why}")]
    Refused {
        /// `defrag` or `abort`.
        what: String,
        /// Why.
        why: String,
        /// What to do instead.
        hint: String,
    },
    /// Ctrl-C or SIGTERM.
    #[error("failed to finish {what} of node/{node}: interrupted")]
    Interrupted {
        /// `defrag` or `abort`.
        what: String,
        /// The node.
        node: String,
    },
    /// An abort left pods orphaned (it reports which).
    #[error("failed to hand back every orphan of node/{node}: {left}")]
    Leftover {
        /// The node.
        node: String,
        /// The pods still orphaned.
        left: String,
    },
    /// Any other cluster error, with the plugin's shared mapping (unreachable, unauthorized...).
    #[error(transparent)]
    Cluster(PluginError),
    /// Writing output failed.
    #[error("failed to write output: {0}")]
    Output(#[source] io::Error),
}

impl From<io::Error> for DefragError {
    fn from(e: io::Error) -> Self {
        DefragError::Output(e)
    }
}

impl From<DefragError> for PluginError {
    fn from(e: DefragError) -> Self {
        PluginError::Subcommand(Box::new(e))
    }
}

impl SubcommandError for DefragError {
    fn exit_code(&self) -> u8 {
        match self {
            DefragError::UnknownNode(_) => code::UNKNOWN_NODE,
            DefragError::NothingToDo { .. } => code::NOTHING_TO_DO,
            DefragError::MissingAutoscaler { .. } => code::MISSING_AUTOSCALER,
            DefragError::Forbidden(_) => code::FORBIDDEN,
            DefragError::Timeout { .. } => code::TIMEOUT,
            DefragError::Refused { .. } => code::REFUSED,
            DefragError::Interrupted { .. } => code::INTERRUPTED,
            DefragError::Leftover { .. } => code::FAILURE,
            DefragError::Cluster(e) => e.exit_code(),
            DefragError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe => exit::OK,
            DefragError::Output(_) => code::FAILURE,
        }
    }

    fn is_broken_pipe(&self) -> bool {
        match self {
            DefragError::Output(e) => e.kind() == io::ErrorKind::BrokenPipe,
            DefragError::Cluster(e) => e.is_broken_pipe(),
            _ => false,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            DefragError::UnknownNode(_) => Some(
                "`kubectl get nodes` lists the nodes; `kubectl s2z defrag --candidates` ranks the GPU nodes"
                    .into(),
            ),
            DefragError::NothingToDo { hint, .. } => Some(hint.clone()),
            DefragError::MissingAutoscaler { .. } => Some(
                "defrag waits on the PodAutoscaler's status.actualScale (autoscaling.internal.knative.dev, same name as the revision) and the Deployment's replicas; check that Knative Serving is running (`kubectl get podautoscalers -A`)"
                    .into(),
            ),
            DefragError::Forbidden(forbidden) => Some(forbidden.hint()),
            DefragError::Timeout { node, .. } | DefragError::Interrupted { node, .. } => {
                Some(resume_hint(node))
            }
            DefragError::Refused { hint, .. } => Some(hint.clone()),
            DefragError::Leftover { node, .. } => Some(format!(
                "run `kubectl s2z defrag {node} --abort --yes` again; `kubectl s2z defrag --list` shows what is left"
            )),
            DefragError::Cluster(e) => e.hint(),
            DefragError::Output(_) => None,
        }
    }
}

impl DefragError {
    /// Maps a client error for `req` through the plugin's shared mapping (see the `From` below).
    pub fn api(cluster: &Cluster, req: &Req, err: kube::Error) -> Self {
        req.error(cluster, err).into()
    }
}

/// The plugin's errors as defrag's: a 403 stays distinct ([`DefragError::Forbidden`]) so that
/// defrag can say which permission it lacks and that nothing was changed.
impl From<PluginError> for DefragError {
    fn from(error: PluginError) -> Self {
        match error {
            PluginError::Forbidden(forbidden) => DefragError::Forbidden(forbidden),
            other => DefragError::Cluster(other),
        }
    }
}

/// How to continue after a timeout or an interruption: both commands, always.
pub fn resume_hint(node: &str) -> String {
    format!(
        "the node stays cordoned and the orphans keep serving; resume with `kubectl s2z defrag {node} --yes`, or undo with `kubectl s2z defrag {node} --abort --yes`"
    )
}

/// True when a client error is an HTTP status `code`.
pub fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_documented_code() {
        let cases: Vec<(DefragError, u8)> = vec![
            (DefragError::UnknownNode("n".into()), 9),
            (
                DefragError::NothingToDo {
                    what: "defrag node/n".into(),
                    why: "x".into(),
                    hint: "y".into(),
                },
                10,
            ),
            (
                DefragError::MissingAutoscaler {
                    revisions: vec!["a/b".into()],
                    why: "x".into(),
                },
                11,
            ),
            (
                DefragError::Forbidden(Forbidden {
                    what: "x".into(),
                    verb: "patch".into(),
                    resource: "nodes".into(),
                    namespace: None,
                    why: "no".into(),
                }),
                6,
            ),
            (
                DefragError::Timeout {
                    what: "x".into(),
                    pending: "y".into(),
                    waited: Duration::from_secs(1),
                    node: "n".into(),
                },
                8,
            ),
            (
                DefragError::Refused {
                    what: "defrag".into(),
                    why: "x".into(),
                    hint: "y".into(),
                },
                3,
            ),
            (
                DefragError::Interrupted {
                    what: "defrag".into(),
                    node: "n".into(),
                },
                130,
            ),
            (DefragError::Output(io::ErrorKind::BrokenPipe.into()), 0),
        ];
        for (error, want) in cases {
            assert_eq!(error.exit_code(), want, "{error}");
            assert!(error.to_string().starts_with("failed to "), "{error}");
        }
    }

    #[test]
    fn every_exit_code_is_documented() {
        for c in [0, 1, 2, 3, 4, 6, 8, 9, 10, 11, 130] {
            assert!(EXIT_CODES.contains(&format!("\n  {c} ")), "{c}");
        }
    }

    #[test]
    fn timeout_says_what_is_pending_and_how_to_go_on() {
        let e = DefragError::Timeout {
            what: "see node/n1 become safe to drain".into(),
            pending: "revision ns/r needs 1 more ready pod".into(),
            waited: Duration::from_secs(90),
            node: "n1".into(),
        };
        assert_eq!(
            e.to_string(),
            "failed to see node/n1 become safe to drain within 1m 30s: revision ns/r needs 1 more ready pod"
        );
        let hint = e.hint().unwrap_or_default();
        assert!(hint.contains("kubectl s2z defrag n1 --yes"), "{hint}");
        assert!(
            hint.contains("kubectl s2z defrag n1 --abort --yes"),
            "{hint}"
        );
    }
}
