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
/// raises the Event, once per distinct problem (so replicas and resyncs do not repeat it), also
/// when it becomes leader while the settings are refused, and retries a failed publish.
pub async fn monitor(
    caches: Arc<Caches>,
    metrics: ControllerMetrics,
    recorder: Arc<Recorder>,
    mut leader: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let mut rx = caches.subscribe_config();
    let mut counted: Option<String> = None;
    let mut published: Option<String> = None;
    loop {
        let config = rx.borrow_and_update().clone();
        let leading = *leader.borrow_and_update();
        match &config.settings_error {
            Some(error) => {
                if counted.as_ref() != Some(error) {
                    // The caches already logged the refusal; this adds the metric and the Event.
                    metrics.settings(false, true);
                    counted = Some(error.clone());
                }
                if leading
                    && published.as_ref() != Some(error)
                    && publish(&caches, &recorder, &metrics, error).await
                {
                    published = Some(error.clone());
                }
            }
            None => {
                published = None;
                if counted.take().is_some() {
                    metrics.settings(true, false);
                    tracing::info!("s2z-settings accepted again");
                }
            }
        }
        let retry = counted.is_some() && leading && published != counted;
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
            changed = leader.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(std::time::Duration::from_secs(5)), if retry => {}
        }
    }
}

/// Publishes the InvalidSettings Event; true when it was published.
async fn publish(
    caches: &Caches,
    recorder: &Recorder,
    metrics: &ControllerMetrics,
    error: &str,
) -> bool {
    let Some(configmap) = caches.settings_configmap() else {
        return false;
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
        Ok(()) => {
            metrics.event(INVALID_SETTINGS);
            true
        }
        Err(publish_error) => {
            tracing::warn!(error = %publish_error, "failed to publish the InvalidSettings Event; retrying");
            false
        }
    }
}
