//! Settings changes: the trigger that re-evaluates every org when the effective settings or
//! Knative's autoscaler configuration change (one step, where seed 000 needed two), and the
//! monitor that reports a refused `s2z-settings` as a log line, a metric and, from the leader, a
//! Warning Event on the ConfigMap. The caches keep the last valid settings in force.

use std::sync::Arc;

use futures::Stream;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};
use s2z_core::settings::{KnativeConfig, Settings};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::metrics::ControllerMetrics;
use crate::cache::Caches;
use crate::view::ClusterConfig;

/// Event reason for a refused settings ConfigMap.
pub const INVALID_SETTINGS: &str = "InvalidSettings";

fn effective(config: &ClusterConfig) -> (Settings, KnativeConfig) {
    (config.settings.clone(), config.knative)
}

/// Yields once per change of the effective configuration (not per ConfigMap event: an invalid
/// edit, or a resync, changes nothing and re-evaluates nothing).
pub fn changes(caches: &Caches) -> impl Stream<Item = ()> + Send + 'static {
    let mut rx = caches.subscribe_config();
    let first = effective(&rx.borrow_and_update());
    futures::stream::unfold((rx, first), |(mut rx, mut last)| async move {
        loop {
            rx.changed().await.ok()?;
            let now = effective(&rx.borrow_and_update());
            if now != last {
                tracing::info!(settings = ?now.0, knative = ?now.1, "configuration changed; re-evaluating every org");
                last = now;
                return Some(((), (rx, last)));
            }
        }
    })
}

/// Reports refused settings until `cancel`: every replica logs and counts; the leader also
/// raises the Event (one per distinct problem, so replicas and resyncs do not repeat it).
pub async fn monitor(
    caches: Arc<Caches>,
    metrics: ControllerMetrics,
    recorder: Arc<Recorder>,
    leader: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let mut rx = caches.subscribe_config();
    let mut reported: Option<String> = None;
    loop {
        let config = rx.borrow_and_update().clone();
        match &config.settings_error {
            Some(error) if reported.as_ref() != Some(error) => {
                // The caches already logged the refusal; this adds the metric and the Event.
                metrics.settings(false, true);
                if *leader.borrow() {
                    publish(&caches, &recorder, &metrics, error).await;
                }
                reported = Some(error.clone());
            }
            Some(_) => {}
            None => {
                if reported.take().is_some() {
                    metrics.settings(true, false);
                    tracing::info!("s2z-settings accepted again");
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

async fn publish(caches: &Caches, recorder: &Recorder, metrics: &ControllerMetrics, error: &str) {
    let Some(configmap) = caches.settings_configmap() else {
        return;
    };
    let event = Event {
        type_: EventType::Warning,
        reason: INVALID_SETTINGS.into(),
        note: Some(format!(
            "{error}; the last valid settings stay in force until this is fixed"
        )),
        action: "ReadSettings".into(),
        secondary: None,
    };
    match recorder.publish(&event, &configmap.object_ref(&())).await {
        Ok(()) => metrics.event(INVALID_SETTINGS),
        Err(publish_error) => {
            tracing::warn!(error = %publish_error, "failed to publish the InvalidSettings Event");
        }
    }
}
