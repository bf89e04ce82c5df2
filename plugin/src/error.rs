//! The plugin's errors and their exit codes.
//!
//! Every variant renders as `failed to <what>: <why>` and carries a hint of what to do next;
//! [`Error::exit_code`] maps it to one of the documented [`exit`] codes, so scripts can tell an
//! unknown org from a forbidden write without parsing text.

use std::io;
use std::time::Duration;

/// The documented exit codes (see `kubectl s2z --help` and the README).
pub mod exit {
    /// Success. A closed stdout (broken pipe, e.g. `| head`) also exits 0.
    pub const OK: u8 = 0;
    /// Any other failure, e.g. an unexpected API error.
    pub const FAILURE: u8 = 1;
    /// Bad usage or an invalid value: unknown flag, bad duration, bad rate limit.
    pub const USAGE: u8 = 2;
    /// Refused: the request is valid but unsafe or pointless; `--force` may override.
    pub const REFUSED: u8 = 3;
    /// No usable cluster: kubeconfig or context unusable, server unreachable, credentials rejected.
    pub const UNREACHABLE: u8 = 4;
    /// s2z is not installed: the `orgs.s2z.dev` CRD is missing.
    pub const NOT_INSTALLED: u8 = 5;
    /// RBAC forbids a request; the message names the verb and the resource.
    pub const FORBIDDEN: u8 = 6;
    /// An org named on the command line does not exist.
    pub const UNKNOWN_ORG: u8 = 7;
    /// Timed out waiting for the controller to report what was asked.
    pub const TIMEOUT: u8 = 8;
}

/// Result type of the plugin.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, one variant per exit code family.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or argument value is invalid.
    #[error("failed to {what}: {why}")]
    Usage {
        /// What was being done, e.g. "read --dormancy-period".
        what: String,
        /// Why it failed.
        why: String,
        /// What to do instead.
        hint: Option<String>,
    },
    /// The request was understood but is refused.
    #[error("failed to {what}: {why}")]
    Refused {
        /// What was refused.
        what: String,
        /// Why.
        why: String,
        /// How to proceed.
        hint: Option<String>,
    },
    /// The kubeconfig cannot be loaded or names no usable context.
    #[error("failed to load kubeconfig: {why}")]
    Kubeconfig {
        /// What is wrong.
        why: String,
    },
    /// The API server cannot be reached or did not answer in time.
    #[error("failed to {what}: cannot reach the cluster at {server}: {why}")]
    Unreachable {
        /// The request that failed.
        what: String,
        /// The API server URL.
        server: String,
        /// The transport error.
        why: String,
    },
    /// The API server rejected the credentials.
    #[error("failed to {what}: the cluster at {server} rejected the credentials: {why}")]
    Unauthorized {
        /// The request that failed.
        what: String,
        /// The API server URL.
        server: String,
        /// The server's message.
        why: String,
    },
    /// s2z is not installed: the Org CRD or the install namespace is missing.
    #[error("failed to {what}: {why}")]
    NotInstalled {
        /// The request that failed.
        what: String,
        /// What is missing.
        why: String,
    },
    /// RBAC forbids the request.
    #[error(transparent)]
    Forbidden(Forbidden),
    /// Orgs named on the command line do not exist.
    #[error("failed to find {}: no such org", org_list(.names))]
    UnknownOrg {
        /// The names that were not found.
        names: Vec<String>,
    },
    /// The controller did not report in time.
    #[error("failed to {what}: {why}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// What was still missing when the time ran out.
        why: String,
        /// How long was waited.
        waited: Duration,
        /// The install namespace, for the hint.
        namespace: String,
    },
    /// Any other API error.
    #[error("failed to {what}: {why}")]
    Api {
        /// The request that failed.
        what: String,
        /// The server's or the client's message.
        why: String,
    },
    /// Writing output failed.
    #[error("failed to write output: {0}")]
    Output(#[source] io::Error),
    /// A subcommand with an error type of its own failed: `defrag`, which has its own exit
    /// codes (see `kubectl s2z defrag --help`).
    #[error(transparent)]
    Subcommand(Box<dyn SubcommandError>),
}

/// A subcommand's own error type, for a subcommand whose failures need exit codes and hints
/// beyond the shared ones (`defrag`).
///
/// [`Error`] holds it boxed behind this trait instead of naming the type, so that this module
/// stays below the subcommands: they depend on it, and it never depends on them.
pub trait SubcommandError: std::error::Error + Send + Sync + 'static {
    /// The documented exit code.
    fn exit_code(&self) -> u8;
    /// True when stdout was closed by the reader; the plugin then exits 0 silently.
    fn is_broken_pipe(&self) -> bool;
    /// What the user can do next.
    fn hint(&self) -> Option<String>;
}

// `#[error(transparent)]` needs a field that is an `Error` itself, and std implements `Error`
// for `Box<T>` only when `T` is sized: the boxed trait object gets its own impl, forwarding to
// the error inside, so the message and the source chain stay the subcommand's.
impl std::error::Error for Box<dyn SubcommandError> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        (**self).source()
    }
}

fn org_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("org/{n}")).collect();
    quoted.join(", ")
}

/// RBAC refused a request: which one, and the permission it needed. Shared by every subcommand
/// (defrag keeps it as its own variant, with the same exit code and hint).
#[derive(Debug, thiserror::Error)]
#[error("failed to {what}: forbidden: {why}")]
pub struct Forbidden {
    /// The request that failed.
    pub what: String,
    /// The verb that is missing, e.g. `patch`.
    pub verb: String,
    /// The resource, e.g. `orgs.s2z.dev` or `orgs.s2z.dev/status`.
    pub resource: String,
    /// The namespace, for namespaced resources.
    pub namespace: Option<String>,
    /// The API server's message (it names the user).
    pub why: String,
}

impl Forbidden {
    /// Who can fix it, and the `kubectl auth can-i` that checks the fix (a subresource goes in
    /// `--subresource`, as `can-i` wants it).
    pub fn hint(&self) -> String {
        let Forbidden {
            verb,
            resource,
            namespace,
            ..
        } = self;
        let (base, sub) = match resource.split_once('/') {
            Some((base, sub)) => (base, format!(" --subresource={sub}")),
            None => (resource.as_str(), String::new()),
        };
        let ns = namespace
            .as_ref()
            .map(|n| format!(" -n {n}"))
            .unwrap_or_default();
        format!(
            "ask a cluster admin to grant `{verb}` on `{resource}`; check with `kubectl auth can-i {verb} {base}{sub}{ns}`"
        )
    }
}

impl Error {
    /// The documented exit code of this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage { .. } => exit::USAGE,
            Error::Refused { .. } => exit::REFUSED,
            Error::Kubeconfig { .. } | Error::Unreachable { .. } | Error::Unauthorized { .. } => {
                exit::UNREACHABLE
            }
            Error::NotInstalled { .. } => exit::NOT_INSTALLED,
            Error::Forbidden(_) => exit::FORBIDDEN,
            Error::UnknownOrg { .. } => exit::UNKNOWN_ORG,
            Error::Timeout { .. } => exit::TIMEOUT,
            Error::Output(e) if e.kind() == io::ErrorKind::BrokenPipe => exit::OK,
            Error::Api { .. } | Error::Output(_) => exit::FAILURE,
            Error::Subcommand(e) => e.exit_code(),
        }
    }

    /// True when stdout was closed by the reader; the plugin then exits 0 silently.
    pub fn is_broken_pipe(&self) -> bool {
        match self {
            Error::Output(e) => e.kind() == io::ErrorKind::BrokenPipe,
            Error::Subcommand(e) => e.is_broken_pipe(),
            _ => false,
        }
    }

    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Usage { hint, .. } | Error::Refused { hint, .. } => hint.clone(),
            Error::Kubeconfig { .. } => Some(
                "check --kubeconfig, $KUBECONFIG and --context (`kubectl config get-contexts` lists the contexts)"
                    .into(),
            ),
            Error::Unreachable { .. } => Some(
                "check that the cluster is running and that `kubectl cluster-info` works with the same --kubeconfig and --context; raise --request-timeout on a slow link"
                    .into(),
            ),
            Error::Unauthorized { .. } => {
                Some("refresh your credentials (`kubectl auth whoami` shows who you are)".into())
            }
            Error::NotInstalled { .. } => Some(
                "install s2z (`kubectl apply -k manifests/overlays/cert-manager` or `helm install s2z charts/s2z`, from the s2z repository), or check --context and -n/--namespace"
                    .into(),
            ),
            Error::Forbidden(forbidden) => Some(forbidden.hint()),
            Error::UnknownOrg { .. } => {
                Some("`kubectl s2z status` lists the orgs (`kubectl get orgs` too)".into())
            }
            Error::Timeout {
                waited, namespace, ..
            } => Some(format!(
                "the s2z controller may not be running: check `kubectl -n {namespace} get lease s2z-controller` and `kubectl -n {namespace} get pods`; the request stays recorded, so the controller applies it when it runs (waited {})",
                humantime::format_duration(*waited)
            )),
            Error::Api { .. } | Error::Output(_) => None,
            Error::Subcommand(e) => e.hint(),
        }
    }

    /// A usage error with a hint.
    pub fn usage(what: impl Into<String>, why: impl Into<String>, hint: Option<String>) -> Self {
        Error::Usage {
            what: what.into(),
            why: why.into(),
            hint,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Output(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_per_family() {
        let cases: Vec<(Error, u8)> = vec![
            (Error::usage("read --x", "bad", None), 2),
            (
                Error::Refused {
                    what: "a".into(),
                    why: "b".into(),
                    hint: None,
                },
                3,
            ),
            (Error::Kubeconfig { why: "x".into() }, 4),
            (
                Error::Unreachable {
                    what: "list orgs.s2z.dev".into(),
                    server: "https://x".into(),
                    why: "refused".into(),
                },
                4,
            ),
            (
                Error::NotInstalled {
                    what: "x".into(),
                    why: "y".into(),
                },
                5,
            ),
            (
                Error::Forbidden(Forbidden {
                    what: "x".into(),
                    verb: "patch".into(),
                    resource: "orgs.s2z.dev".into(),
                    namespace: None,
                    why: "no".into(),
                }),
                6,
            ),
            (
                Error::UnknownOrg {
                    names: vec!["a".into()],
                },
                7,
            ),
            (
                Error::Timeout {
                    what: "x".into(),
                    why: "y".into(),
                    waited: Duration::from_secs(1),
                    namespace: "s2z-system".into(),
                },
                8,
            ),
            (
                Error::Api {
                    what: "x".into(),
                    why: "y".into(),
                },
                1,
            ),
            (Error::Output(io::Error::from(io::ErrorKind::BrokenPipe)), 0),
            (Error::Output(io::Error::from(io::ErrorKind::Other)), 1),
        ];
        for (error, code) in cases {
            assert_eq!(error.exit_code(), code, "{error}");
        }
    }

    #[test]
    fn forbidden_hint_names_verb_and_resource() {
        let e = Error::Forbidden(Forbidden {
            what: "patch orgs.s2z.dev/acme status".into(),
            verb: "patch".into(),
            resource: "orgs.s2z.dev/status".into(),
            namespace: None,
            why: "User \"x\" cannot patch".into(),
        });
        assert_eq!(
            e.hint().as_deref(),
            Some(
                "ask a cluster admin to grant `patch` on `orgs.s2z.dev/status`; check with `kubectl auth can-i patch orgs.s2z.dev --subresource=status`"
            )
        );
        let e = Error::Forbidden(Forbidden {
            what: "x".into(),
            verb: "get".into(),
            resource: "configmaps".into(),
            namespace: Some("s2z-system".into()),
            why: "no".into(),
        });
        assert_eq!(
            e.hint().as_deref(),
            Some(
                "ask a cluster admin to grant `get` on `configmaps`; check with `kubectl auth can-i get configmaps -n s2z-system`"
            )
        );
    }

    #[test]
    fn unknown_orgs_are_listed() {
        let e = Error::UnknownOrg {
            names: vec!["a".into(), "b".into()],
        };
        assert_eq!(e.to_string(), "failed to find org/a, org/b: no such org");
    }
}
