//! The activity endpoint's parts, bundled for the shared state.
//!
//! They live apart from the handler in `activity/mod.rs` because the dependency runs both ways
//! otherwise: [`crate::state::AppState`] holds these parts, and the handler reads that state.
//! With the parts here, the state depends on this module and the handler on the state, never
//! the reverse.

use super::auth::Authenticator;
use super::metrics::ActivityMetrics;
use super::queue::ActivityQueue;

/// The endpoint's parts.
#[derive(Debug)]
pub struct Activity {
    /// Token and access checks.
    pub auth: Authenticator,
    /// The writer's queue.
    pub queue: ActivityQueue,
    /// Metrics.
    pub metrics: ActivityMetrics,
}
