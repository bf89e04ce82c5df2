//! The activity writer: one task per replica owning every org's pending activity.
//!
//! Signals arrive through a channel; the task applies the per-org rate limit (governor's keyed
//! GCRA, built from `orgWarmupRatelimitStr`), coalesces what the limit holds back into the
//! newest timestamp (s2z_core::activity::Coalescer), and writes with the guarded patch of
//! [`super::write`]. A failed write keeps its activity and is retried with backoff, so an API
//! server outage loses nothing; on shutdown everything pending is written at once, limits
//! aside, before the process exits.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use kube::api::Api;
use s2z_core::activity::{Coalescer, Offer, WriteOutcome, advances};
use s2z_core::org::Org;
use s2z_core::settings::{RateLimit, Settings};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::ActivityMetrics;
use super::write::{Recorded, WriteError, record};
use crate::cache::Caches;
use crate::view::ClusterView;

/// Signals buffered between the endpoint and the writer before the endpoint answers 503.
const CHANNEL_CAPACITY: usize = 65_536;
/// Writes in flight at once.
const MAX_IN_FLIGHT: usize = 32;
/// First retry delay after a failed write; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// One activity signal for the writer.
#[derive(Debug, Clone)]
pub struct Signal {
    /// The org.
    pub org: String,
    /// When the activity happened.
    pub at: DateTime<Utc>,
    /// The org is dormant: write at once, limits aside.
    pub urgent: bool,
}

/// The signal could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The writer is behind by [`CHANNEL_CAPACITY`] signals.
    #[error(
        "failed to queue activity: the writer is {CHANNEL_CAPACITY} signals behind; retry shortly"
    )]
    Full,
    /// The writer has stopped (shutdown).
    #[error("failed to queue activity: the writer has stopped (shutting down)")]
    Closed,
}

/// The sending side, shared by the endpoint and the wake-on-traffic watch.
#[derive(Debug, Clone)]
pub struct ActivityQueue {
    tx: mpsc::Sender<Signal>,
}

impl ActivityQueue {
    /// Queues a signal without waiting.
    pub fn submit(&self, signal: Signal) -> Result<(), SubmitError> {
        self.tx.try_send(signal).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::Full,
            mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
        })
    }
}

/// Starts the writer. It runs until `cancel`, then flushes for at most `flush_timeout`.
pub fn spawn(
    client: kube::Client,
    caches: Arc<Caches>,
    metrics: ActivityMetrics,
    cancel: CancellationToken,
    flush_timeout: Duration,
) -> (ActivityQueue, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let worker = Worker {
        api: Api::all(client),
        caches,
        metrics,
        coalescer: Coalescer::new(),
        limiter: Limiter::default(),
        failures: HashMap::new(),
        in_flight: FuturesUnordered::new(),
    };
    let handle = tokio::spawn(worker.run(rx, cancel, flush_timeout));
    (ActivityQueue { tx }, handle)
}

/// The rate limit in force, rebuilt when the settings change it.
#[derive(Default)]
struct Limiter {
    config: Option<(RateLimit, bool)>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl Limiter {
    fn refresh(&mut self, settings: &Settings) {
        let wanted = (settings.warmup_ratelimit, settings.ratelimit_enabled);
        if self.config == Some(wanted) {
            return;
        }
        self.config = Some(wanted);
        self.limiter = settings
            .ratelimit_enabled
            .then(|| quota(&settings.warmup_ratelimit))
            .flatten()
            .map(RateLimiter::keyed);
        tracing::info!(ratelimit = %settings.warmup_ratelimit, enabled = settings.ratelimit_enabled, "activity rate limit in force");
    }

    /// `None` when `org` may write now (taking a token), else when it may.
    fn admit(&self, org: &str, now: Instant) -> Option<Instant> {
        let limiter = self.limiter.as_ref()?;
        match limiter.check_key(&org.to_string()) {
            Ok(()) => None,
            Err(not_until) => Some(now + not_until.wait_time_from(DefaultClock::default().now())),
        }
    }

    fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
        }
    }
}

/// `count` writes per `period`, in bursts of up to `count`.
fn quota(rate: &RateLimit) -> Option<Quota> {
    let interval = rate.interval().max(Duration::from_nanos(1));
    Some(Quota::with_period(interval)?.allow_burst(rate.count.max(NonZeroU32::MIN)))
}

type Done = (String, Result<Recorded, WriteError>);

struct Worker {
    api: Api<Org>,
    caches: Arc<Caches>,
    metrics: ActivityMetrics,
    coalescer: Coalescer<Instant>,
    limiter: Limiter,
    failures: HashMap<String, u32>,
    in_flight: FuturesUnordered<BoxFuture<'static, Done>>,
}

impl Worker {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Signal>,
        cancel: CancellationToken,
        flush_timeout: Duration,
    ) {
        let mut housekeeping = tokio::time::interval(Duration::from_secs(60));
        loop {
            self.start_due();
            self.metrics.pending(self.coalescer.len());
            let room = self.in_flight.len() < MAX_IN_FLIGHT;
            let next_due = self.coalescer.next_due().filter(|_| room);
            tokio::select! {
                () = cancel.cancelled() => break,
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.finish(done);
                }
                signal = rx.recv() => match signal {
                    Some(signal) => self.offer(signal),
                    None => break,
                },
                () = sleep_until(next_due) => {}
                _ = housekeeping.tick() => self.limiter.forget_idle(),
            }
        }
        rx.close();
        while let Ok(signal) = rx.try_recv() {
            self.offer(signal);
        }
        self.flush(flush_timeout).await;
    }

    fn offer(&mut self, signal: Signal) {
        let now = Instant::now();
        self.limiter.refresh(&self.caches.config().settings);
        let cached = self.caches.org(&signal.org);
        let recorded = cached.as_ref().is_some_and(|org| {
            let current = org
                .status
                .as_ref()
                .and_then(|s| s.last_activity_at.as_deref());
            !advances(current, signal.at)
        });
        if recorded && self.coalescer.pending(&signal.org).is_none() {
            self.metrics.signal("recorded");
            return;
        }
        let limiter = &self.limiter;
        let offer = self
            .coalescer
            .offer(&signal.org, signal.at, signal.urgent, now, || {
                limiter.admit(&signal.org, now)
            });
        let outcome = match offer {
            Offer::WriteNow => "immediate",
            Offer::Coalesced { .. } => "coalesced",
            Offer::Merged => "merged",
        };
        self.metrics.signal(outcome);
        tracing::debug!(org = %signal.org, at = %signal.at, urgent = signal.urgent, outcome, "activity signal");
    }

    fn write(&self, org: String, at: DateTime<Utc>) -> BoxFuture<'static, Done> {
        let api = self.api.clone();
        let cached = self.caches.org(&org);
        async move {
            let result = record(&api, &org, cached, at).await;
            (org, result)
        }
        .boxed()
    }

    fn start_due(&mut self) {
        let room = MAX_IN_FLIGHT.saturating_sub(self.in_flight.len());
        if room == 0 {
            return;
        }
        let now = Instant::now();
        let limiter = &self.limiter;
        let due = self
            .coalescer
            .take_due(now, room, |org| limiter.admit(org, now));
        for (org, at) in due {
            let write = self.write(org, at);
            self.in_flight.push(write);
        }
    }

    /// Applies a finished write; returns whether it failed.
    fn finish(&mut self, (org, result): Done) -> bool {
        let now = Instant::now();
        let limiter = &self.limiter;
        let admit = || limiter.admit(&org, now);
        let (outcome, failed) = match result {
            Ok(recorded) => {
                self.failures.remove(&org);
                let (label, outcome) = match recorded {
                    Recorded::Written => ("written", WriteOutcome::Done),
                    Recorded::Stale => ("stale", WriteOutcome::Done),
                    Recorded::Gone => ("gone", WriteOutcome::Gone),
                };
                self.metrics.write(label);
                tracing::debug!(org = %org, result = label, "activity write finished");
                (outcome, false)
            }
            Err(error) => {
                self.metrics.write("error");
                let failures = self.failures.entry(org.clone()).or_insert(0);
                let delay = backoff(*failures);
                *failures = failures.saturating_add(1);
                tracing::warn!(org = %org, %error, retry_in = ?delay, "activity kept; retrying");
                (WriteOutcome::Retry { at: now + delay }, true)
            }
        };
        self.coalescer.finish(&org, outcome, now, admit);
        failed
    }

    /// Writes everything pending, limits and backoff aside, until done or `timeout`.
    async fn flush(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        if !self.coalescer.is_empty() {
            tracing::info!(
                orgs = self.coalescer.len(),
                "writing pending activity before exit"
            );
        }
        loop {
            for (org, at) in self.coalescer.take_all() {
                let write = self.write(org, at);
                self.in_flight.push(write);
            }
            if self.in_flight.is_empty() {
                break;
            }
            let failed = tokio::select! {
                Some(done) = self.in_flight.next() => self.finish(done),
                () = tokio::time::sleep_until(deadline) => break,
            };
            if failed {
                // Do not spin against an API server that is down.
                tokio::select! {
                    () = tokio::time::sleep(FIRST_BACKOFF) => {}
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        self.metrics.pending(self.coalescer.len());
        if !self.coalescer.is_empty() {
            let lost: Vec<String> = self
                .coalescer
                .pending_orgs()
                .into_iter()
                .map(|(org, at)| format!("{org}={}", super::write::text(at)))
                .collect();
            tracing::error!(orgs = lost.len(), pending = %lost.join(","), "failed to write pending activity before exit; replay it with `kubectl s2z wake`");
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(5), Duration::from_secs(8));
        assert_eq!(backoff(6), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn limiter_follows_the_settings() {
        let mut limiter = Limiter::default();
        let now = Instant::now();
        let mut settings = Settings {
            warmup_ratelimit: "2/hour"
                .parse()
                .unwrap_or(Settings::default().warmup_ratelimit),
            ..Settings::default()
        };
        limiter.refresh(&settings);
        assert_eq!(limiter.admit("a", now), None);
        assert_eq!(limiter.admit("a", now), None, "a burst of two");
        let later = limiter.admit("a", now);
        assert!(
            later.is_some_and(|t| t > now + Duration::from_secs(1700)),
            "{later:?}"
        );
        assert_eq!(limiter.admit("b", now), None, "per org");
        settings.ratelimit_enabled = false;
        limiter.refresh(&settings);
        assert_eq!(limiter.admit("a", now), None);
        assert_eq!(limiter.admit("a", now), None);
        assert_eq!(limiter.admit("a", now), None);
    }
}
