//! s2z-core: the pure domain logic of s2z, with no client and no I/O.
//!
//! Everything the webhook, the controller and the `kubectl s2z` plugin must agree on lives here,
//! as functions of plain data, so that all three reach the same answer and every rule can be
//! tested without a cluster.

pub mod activity;
pub mod annotations;
pub mod defrag;
pub mod defrag_plan;
pub mod dormancy;
pub mod knative;
pub mod labels;
pub mod org;
pub mod savings;
pub mod schedule;
pub mod settings;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod warm;
pub mod workload;

pub use annotations::{Decision, DecisionError, DecisionInput, decide};
pub use dormancy::{StateInput, due_at, org_state};
pub use org::{Org, OrgSpec, OrgState, OrgStatus, WorkloadCounts};
pub use settings::{KnativeConfig, RateLimit, Settings, SettingsError};
pub use workload::{WorkloadKind, kind_of};

#[cfg(test)]
mod generated;
