//! Activity signals: reading one from a request body, the never-backwards rule for
//! `status.lastActivityAt`, and the per-org coalescing that lets a rate limit drop writes without
//! dropping information.
//!
//! The rate limit itself (a token bucket) stays with the caller; [`Coalescer`] only asks it
//! "may this org write now, and if not, when?" through a closure, so every rule here is a pure
//! function of its inputs and the clock is whatever type the caller uses (`Instant` in
//! production, integers in tests).

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::dormancy::parse_time;

/// Why an activity request body was refused (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivityError {
    /// The body is not the JSON object the endpoint expects.
    #[error(
        "failed to read the activity request: {0}; send no body, or a JSON object such as {{\"at\": \"2025-01-31T12:00:00Z\"}}"
    )]
    Body(String),
    /// `at` is not an RFC 3339 timestamp.
    #[error("failed to read the activity request: {0}")]
    Timestamp(String),
}

#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    at: Option<String>,
}

/// One activity signal as accepted by the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    /// When the activity happened.
    pub at: DateTime<Utc>,
    /// Whether the sender's timestamp lay in the future and was pulled back to `now`.
    pub clamped: bool,
}

/// Reads an activity request body: empty means "now"; otherwise `{"at": "<RFC 3339>"}` with
/// `at` optional. A timestamp in the future becomes `now`, because a skewed clock must not keep
/// an org awake for longer than its real activity does.
pub fn parse_signal(body: &[u8], now: DateTime<Utc>) -> Result<Signal, ActivityError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Signal {
            at: now,
            clamped: false,
        });
    }
    let body: Body =
        serde_json::from_slice(body).map_err(|e| ActivityError::Body(e.to_string()))?;
    let Some(text) = body.at else {
        return Ok(Signal {
            at: now,
            clamped: false,
        });
    };
    let at = parse_time(&text).map_err(|e| ActivityError::Timestamp(e.to_string()))?;
    Ok(if at > now {
        Signal {
            at: now,
            clamped: true,
        }
    } else {
        Signal { at, clamped: false }
    })
}

/// Whether writing `candidate` as `lastActivityAt` moves it forward. An absent or unreadable
/// current value is overwritten: it carries no information worth keeping.
pub fn advances(current: Option<&str>, candidate: DateTime<Utc>) -> bool {
    match current.map(parse_time) {
        Some(Ok(current)) => candidate > current,
        Some(Err(_)) | None => true,
    }
}

/// The newest of two optional timestamps; merging pending activity never loses the newest.
pub fn newest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    a.max(b)
}

/// What [`Coalescer::offer`] did with a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer<T> {
    /// A write is due now.
    WriteNow,
    /// The rate limit holds the org back; the newest timestamp is written at `until`.
    Coalesced {
        /// When the window ends.
        until: T,
    },
    /// The org already had activity pending or being written; the signal was merged into it.
    Merged,
}

/// How a write of pending activity ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome<T> {
    /// The timestamp is recorded (written, or the org already had a newer one).
    Done,
    /// The write failed; retry at the given time, keeping everything pending.
    Retry {
        /// When to try again.
        at: T,
    },
    /// The org no longer exists; its pending activity is dropped.
    Gone,
}

#[derive(Debug, Clone)]
struct Entry<T> {
    newest: DateTime<Utc>,
    /// `Some(t)`: waiting until `t`; `None`: being written.
    waiting: Option<T>,
    /// Whether the rate limit already granted this write (checked again otherwise).
    granted: bool,
    /// What the write in flight carries.
    writing: Option<DateTime<Utc>>,
}

/// Pending activity per org: at most one write in flight per org, later signals merged into the
/// newest timestamp, and writes spaced by the caller's rate limit.
///
/// Invariant: for every org, the newest offered timestamp is either recorded (its write
/// finished with [`WriteOutcome::Done`]) or still held here. Nothing is lost to the rate limit
/// or to failed writes.
#[derive(Debug, Clone)]
pub struct Coalescer<T: Ord + Copy> {
    entries: HashMap<String, Entry<T>>,
    /// Waiting entries by due time, so the next wake-up is found without a scan.
    schedule: BTreeSet<(T, String)>,
}

impl<T: Ord + Copy> Default for Coalescer<T> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            schedule: BTreeSet::new(),
        }
    }
}

impl<T: Ord + Copy> Coalescer<T> {
    /// An empty coalescer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Orgs with activity pending or being written.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The newest timestamp held for `org`, pending or in flight.
    pub fn pending(&self, org: &str) -> Option<DateTime<Utc>> {
        self.entries.get(org).map(|e| e.newest)
    }

    fn wait(&mut self, org: &str, until: T) {
        if let Some(entry) = self.entries.get_mut(org) {
            if let Some(old) = entry.waiting.replace(until) {
                self.schedule.remove(&(old, org.to_string()));
            }
            self.schedule.insert((until, org.to_string()));
        }
    }

    /// Takes a signal. `urgent` (the org is dormant) skips the rate limit, so the first signal
    /// of a dormant org is written at once. `admit` asks the rate limit for a token: `None`
    /// grants one, `Some(t)` says the earliest time one is available; it is only called when
    /// the org has nothing pending.
    pub fn offer(
        &mut self,
        org: &str,
        at: DateTime<Utc>,
        urgent: bool,
        now: T,
        admit: impl FnOnce() -> Option<T>,
    ) -> Offer<T> {
        if let Some(entry) = self.entries.get_mut(org) {
            entry.newest = entry.newest.max(at);
            let waiting = entry.waiting;
            if urgent && waiting.is_some_and(|until| until > now) {
                entry.granted = true;
                self.wait(org, now);
                return Offer::WriteNow;
            }
            return Offer::Merged;
        }
        let held_until = if urgent { None } else { admit() };
        let (granted, until) = match held_until {
            None => (true, now),
            Some(later) => (false, later.max(now)),
        };
        self.entries.insert(
            org.to_string(),
            Entry {
                newest: at,
                waiting: None,
                granted,
                writing: None,
            },
        );
        self.wait(org, until);
        if until <= now {
            Offer::WriteNow
        } else {
            Offer::Coalesced { until }
        }
    }

    /// Every org with activity held, and the newest timestamp held for it, sorted by org.
    pub fn pending_orgs(&self) -> Vec<(String, DateTime<Utc>)> {
        let mut all: Vec<(String, DateTime<Utc>)> = self
            .entries
            .iter()
            .map(|(org, entry)| (org.clone(), entry.newest))
            .collect();
        all.sort();
        all
    }

    /// The earliest time an entry falls due.
    pub fn next_due(&self) -> Option<T> {
        self.schedule.first().map(|(t, _)| *t)
    }

    /// Up to `max` entries due at `now` whose write may start: each becomes in flight and is
    /// returned with the timestamp to write. An entry the rate limit still holds back is
    /// rescheduled to the time `admit` gives.
    pub fn take_due(
        &mut self,
        now: T,
        max: usize,
        mut admit: impl FnMut(&str) -> Option<T>,
    ) -> Vec<(String, DateTime<Utc>)> {
        let mut due = Vec::new();
        while let Some((until, org)) = self.schedule.first().cloned() {
            if until > now || due.len() >= max {
                break;
            }
            self.schedule.remove(&(until, org.clone()));
            let Some(entry) = self.entries.get_mut(&org) else {
                continue;
            };
            entry.waiting = None;
            if !entry.granted
                && let Some(later) = admit(&org)
            {
                let later = later.max(now);
                entry.waiting = Some(later);
                self.schedule.insert((later, org));
                continue;
            }
            entry.granted = false;
            entry.writing = Some(entry.newest);
            due.push((org, entry.newest));
        }
        due
    }

    /// Every entry not yet in flight, regardless of rate limit and backoff: used to flush on
    /// shutdown. Each becomes in flight.
    pub fn take_all(&mut self) -> Vec<(String, DateTime<Utc>)> {
        self.schedule.clear();
        let mut all = Vec::new();
        for (org, entry) in &mut self.entries {
            if entry.writing.is_none() {
                entry.waiting = None;
                entry.writing = Some(entry.newest);
                all.push((org.clone(), entry.newest));
            }
        }
        all
    }

    /// Records how the write for `org` ended. Activity that arrived while it was in flight
    /// stays pending and, being a new write, waits for the rate limit again (`admit`).
    pub fn finish(
        &mut self,
        org: &str,
        outcome: WriteOutcome<T>,
        now: T,
        admit: impl FnOnce() -> Option<T>,
    ) {
        let Some(entry) = self.entries.get_mut(org) else {
            return;
        };
        let written = entry.writing.take();
        match outcome {
            WriteOutcome::Gone => {
                self.remove(org);
            }
            WriteOutcome::Retry { at } => {
                // The failed write took no effect, so it keeps the token it was granted.
                entry.granted = true;
                self.wait(org, at.max(now));
            }
            WriteOutcome::Done => {
                if written.is_some_and(|w| entry.newest <= w) {
                    self.remove(org);
                    return;
                }
                let until = match admit() {
                    None => {
                        entry.granted = true;
                        now
                    }
                    Some(later) => {
                        entry.granted = false;
                        later.max(now)
                    }
                };
                self.wait(org, until);
            }
        }
    }

    fn remove(&mut self, org: &str) {
        if let Some(entry) = self.entries.remove(org)
            && let Some(until) = entry.waiting
        {
            self.schedule.remove(&(until, org.to_string()));
        }
    }
}

#[cfg(test)]
#[path = "activity_tests.rs"]
mod tests;
