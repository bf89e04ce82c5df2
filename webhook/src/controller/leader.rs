//! Leader election on the coordination.k8s.io Lease `s2z-controller`, with client-go's rules:
//! a candidate takes the Lease only when its record has not changed for a whole lease duration
//! (measured on the candidate's own clock, so clock skew between replicas does not matter), the
//! holder renews every retry period and steps down when it could not renew for the renew
//! deadline, which is shorter than the lease duration. Writes are `replace`s carrying the
//! resourceVersion read, so two candidates can never both win.
//!
//! kube-lease-manager (the kube 5 compatible crate) cannot write the `s2z.dev/version`
//! annotation `kubectl s2z version` reads, and its timing parameters do not map onto client-go's
//! three flags, so this small loop is ours.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Name of the Lease.
pub const LEASE_NAME: &str = "s2z-controller";
/// Annotation on the Lease naming the holder's s2z version.
pub const VERSION_ANNOTATION: &str = "s2z.dev/version";

/// How the election runs.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The Lease's namespace (the install namespace).
    pub namespace: String,
    /// This replica's identity, unique among candidates.
    pub identity: String,
    /// How long a Lease is honoured after its last renewal.
    pub lease_duration: Duration,
    /// How long the holder keeps leading while renewals fail.
    pub renew_deadline: Duration,
    /// How often candidates try and the holder renews.
    pub retry_period: Duration,
}

/// What a replica does with the Lease it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Someone else holds a live Lease.
    Wait,
    /// The Lease is ours: renew it.
    Renew,
    /// The Lease is free or expired: take it.
    Acquire,
}

/// Decides what to do with a Lease whose record was last seen changing at `observed_at`.
pub fn step(
    spec: &LeaseSpec,
    me: &str,
    observed_at: Instant,
    now: Instant,
    fallback: Duration,
) -> Step {
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => Step::Renew,
        None | Some("") => Step::Acquire,
        Some(_) => {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(fallback);
            if now >= observed_at + duration {
                Step::Acquire
            } else {
                Step::Wait
            }
        }
    }
}

fn duration_secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// The Lease as this replica writes it when taking or renewing it.
pub fn claimed(mut lease: Lease, config: &LeaseConfig, now: Timestamp) -> Lease {
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    if !ours {
        spec.acquire_time = Some(MicroTime(now));
        let had_holder = spec
            .holder_identity
            .as_deref()
            .is_some_and(|h| !h.is_empty());
        let transitions = spec.lease_transitions.unwrap_or(0);
        spec.lease_transitions = Some(if had_holder {
            transitions.saturating_add(1)
        } else {
            transitions
        });
    }
    spec.holder_identity = Some(config.identity.clone());
    spec.lease_duration_seconds = Some(duration_secs(config.lease_duration));
    spec.renew_time = Some(MicroTime(now));
    lease
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(VERSION_ANNOTATION.into(), env!("CARGO_PKG_VERSION").into());
    lease
}

fn fresh(config: &LeaseConfig) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(LEASE_NAME.into()),
            namespace: Some(config.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec::default()),
    }
}

/// One candidate's view of the Lease between attempts.
struct Candidate {
    api: Api<Lease>,
    config: LeaseConfig,
    /// resourceVersion of the record last read, and when it was first seen.
    observed: Option<(String, Instant)>,
}

impl Candidate {
    /// One attempt to take or renew the Lease; true when this replica holds it afterwards.
    async fn attempt(&mut self) -> Result<bool, kube::Error> {
        let now = Instant::now();
        let Some(current) = self.api.get_opt(LEASE_NAME).await? else {
            let lease = claimed(fresh(&self.config), &self.config, Timestamp::now());
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let rv = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let observed_at = match &self.observed {
            Some((seen, at)) if *seen == rv => *at,
            _ => {
                self.observed = Some((rv, now));
                now
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        match step(
            &spec,
            &self.config.identity,
            observed_at,
            now,
            self.config.lease_duration,
        ) {
            Step::Wait => Ok(false),
            Step::Renew | Step::Acquire => {
                let lease = claimed(current, &self.config, Timestamp::now());
                match self
                    .api
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Hands the Lease over at shutdown so the next leader need not wait for it to expire.
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }
}

/// Campaigns for the Lease until `cancel`, publishing on `leader` whether this replica leads.
/// Releases the Lease on the way out when it holds it.
pub async fn run(
    client: kube::Client,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    // A hung request must not outlive the renew deadline, or a partitioned leader would keep
    // leading after its Lease expired for everyone else.
    let call_timeout = config
        .retry_period
        .min(config.renew_deadline / 2)
        .max(Duration::from_millis(200));
    let mut candidate = Candidate {
        api,
        config: config.clone(),
        observed: None,
    };
    let mut last_renewal: Option<Instant> = None;
    loop {
        let result = tokio::select! {
            () = cancel.cancelled() => break,
            result = tokio::time::timeout(call_timeout, candidate.attempt()) => result,
        };
        let leading = *leader.borrow();
        match result {
            Ok(Ok(true)) => {
                last_renewal = Some(Instant::now());
                if !leading {
                    tracing::info!(identity = %config.identity, lease = LEASE_NAME, namespace = %config.namespace, "acquired the controller Lease");
                    leader.send_replace(true);
                }
            }
            Ok(Ok(false)) => {
                if leading {
                    tracing::warn!(identity = %config.identity, "another replica holds the controller Lease; stepping down");
                    leader.send_replace(false);
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(identity = %config.identity, %error, "failed to take or renew the controller Lease");
            }
            Err(_) => {
                tracing::warn!(identity = %config.identity, timeout = ?call_timeout, "failed to take or renew the controller Lease: timed out");
            }
        }
        let expired = last_renewal.is_none_or(|at| at.elapsed() >= config.renew_deadline);
        if *leader.borrow() && expired {
            tracing::warn!(identity = %config.identity, deadline = ?config.renew_deadline, "could not renew the controller Lease in time; stepping down");
            leader.send_replace(false);
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(config.retry_period) => {}
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        match tokio::time::timeout(Duration::from_secs(2), candidate.release()).await {
            Ok(Ok(())) => {
                tracing::info!(identity = %config.identity, "released the controller Lease")
            }
            Ok(Err(error)) => tracing::warn!(%error, "failed to release the controller Lease"),
            Err(_) => tracing::warn!("failed to release the controller Lease: timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LeaseConfig {
        LeaseConfig {
            namespace: "s2z-system".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn held_by(holder: Option<&str>, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(secs),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_live_lease_of_another_is_respected_until_it_expires() {
        let seen = Instant::now();
        let spec = held_by(Some("other"), 15);
        let fallback = Duration::from_secs(99);
        assert_eq!(
            step(&spec, "me", seen, seen + Duration::from_secs(14), fallback),
            Step::Wait
        );
        assert_eq!(
            step(&spec, "me", seen, seen + Duration::from_secs(15), fallback),
            Step::Acquire
        );
    }

    #[test]
    fn own_and_free_leases() {
        let now = Instant::now();
        let d = Duration::from_secs(15);
        assert_eq!(
            step(&held_by(Some("me"), 15), "me", now, now, d),
            Step::Renew
        );
        assert_eq!(step(&held_by(None, 1), "me", now, now, d), Step::Acquire);
        assert_eq!(
            step(&held_by(Some(""), 1), "me", now, now, d),
            Step::Acquire
        );
        let mut no_duration = held_by(Some("other"), 0);
        no_duration.lease_duration_seconds = None;
        assert_eq!(
            step(&no_duration, "me", now, now + Duration::from_secs(14), d),
            Step::Wait
        );
    }

    #[test]
    fn claiming_counts_transitions_and_stamps_the_version() {
        let now = Timestamp::from_second(1_700_000_000).unwrap_or_default();
        let mut lease = fresh(&config());
        lease.spec = Some(held_by(Some("other"), 15));
        let taken = claimed(lease, &config(), now);
        let spec = taken.spec.clone().unwrap_or_default();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert!(spec.acquire_time.is_some() && spec.renew_time.is_some());
        assert_eq!(
            taken
                .metadata
                .annotations
                .unwrap_or_default()
                .get(VERSION_ANNOTATION)
                .map(String::as_str),
            Some(env!("CARGO_PKG_VERSION"))
        );
        let renewed = claimed(claimed(fresh(&config()), &config(), now), &config(), now);
        assert_eq!(
            renewed.spec.and_then(|s| s.lease_transitions),
            Some(0),
            "renewing is no transition"
        );
    }
}
