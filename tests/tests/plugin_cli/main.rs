//! `kubectl s2z` on the real control plane, run through the real kubectl exactly as a user runs
//! it: every command, its success and error paths, and its exit codes.
//!
//! Each test gets its own install namespace (`-n`), so settings never leak between tests, and its
//! own uniquely named orgs. The s2z controller may or may not be running on the shared plane; the
//! tests hold either way (see the sweep tests).
//!
//! Needs `cargo build -p kubectl-s2z` first (`make test` does it).

mod clusters;
mod plumbing;
mod settings;
mod status;
mod support;
mod sweep;
mod toggles;
