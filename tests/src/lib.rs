//! Test support for s2z's integration tests: every test talks to the real local control plane
//! built by `tests/cluster` (etcd, kube-apiserver, controllers, scheduler, KWOK, kubectl).
//!
//! [`cluster`] connects to a running plane or starts one; [`TestEnv`] gives each test its own
//! namespaces and orgs so tests run in parallel without interfering.

pub mod activator;
pub mod container;
pub mod env;
pub mod kserve;
pub mod nodes;
pub mod plane;
pub mod scale;
pub mod spike;
pub mod tls;
pub mod webhook;

pub use env::TestEnv;
pub use plane::{Plane, cluster, kubectl};
