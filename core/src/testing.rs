//! Helpers for the unit tests of s2z-core and of the crates built on it (feature `testing`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::dormancy::parse_time;

/// A label or annotation map from `(key, value)` pairs.
pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// An RFC 3339 time. Panics on a typo, so that a test never runs at the epoch by mistake.
pub fn t(s: &str) -> DateTime<Utc> {
    match parse_time(s) {
        Ok(t) => t,
        Err(e) => panic!("bad time in a test: {e}"),
    }
}
