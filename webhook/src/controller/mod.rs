//! The dormancy controller: on the replica holding the `s2z-controller` Lease, a level-based
//! kube-runtime `Controller` over Orgs keeps every revision's autoscaling annotations equal to
//! the core decision for its org's state, flips each org at the instant it is due, and reports
//! in the Org's status and Events.
//!
//! Triggers: the Orgs themselves (activity, sleep and sweep requests arrive as Org changes), the
//! org's revisions and namespaces (a revision that escaped the webhook is corrected at once),
//! PodAutoscalers on Knative <= 1.20, and any change of settings or Knative configuration
//! (re-evaluates every org). Each reconcile requeues itself for the org's due time, or the
//! backstop sweep interval.

pub mod context;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod ready;
pub mod reconcile;
pub mod savings;
pub mod schedule;
pub mod settings;
pub mod status;
pub mod target;
pub mod traffic;
pub mod warm;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, reflector, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use s2z_core::labels::ORG_LABEL;
use s2z_core::org::Org;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use self::context::{Context, Error};
use self::index::{NamespaceIndex, ObjectIndex};
use self::metrics::ControllerMetrics;
use self::target::{KnativeVersion, Target};
use crate::activity::queue::ActivityQueue;
use crate::cache::{Caches, slim};

/// Orgs reconciled at once; each has up to 8 patches in flight, so this bounds the controller
/// at a few hundred concurrent API calls when many orgs flip together.
const CONCURRENCY: u16 = 32;

/// What the controller needs from the binary's configuration.
#[derive(Debug, Clone)]
pub struct Options {
    /// Knative Serving's namespace (version detection).
    pub knative_namespace: String,
    /// `--knative-version`.
    pub knative_version: Option<KnativeVersion>,
    /// `--org-selector`.
    pub org_selector: Option<String>,
    /// `--wake-on-traffic`.
    pub wake_on_traffic: bool,
}

/// What the controller shares with the rest of the binary.
#[derive(Clone)]
pub struct Parts {
    /// The client.
    pub client: Client,
    /// The binary's caches.
    pub caches: Arc<Caches>,
    /// Publishes Events.
    pub recorder: Arc<Recorder>,
    /// Metrics.
    pub metrics: ControllerMetrics,
    /// Configuration.
    pub options: Options,
    /// Where wake-on-traffic sends activity.
    pub activity: Option<ActivityQueue>,
}

/// Runs the controller whenever `leader` says this replica leads, until `cancel`.
pub async fn run(parts: Parts, mut leader: watch::Receiver<bool>, cancel: CancellationToken) {
    let metrics = parts.metrics.clone();
    loop {
        // Wait to lead.
        while !*leader.borrow_and_update() {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = leader.changed() => if changed.is_err() { return },
            }
        }
        metrics.set_leader(true);
        let term = run_term(parts.clone());
        tokio::pin!(term);
        // Lead until the Lease is lost; dropping the term stops every watch and reconcile.
        loop {
            tokio::select! {
                () = &mut term => break,
                () = cancel.cancelled() => break,
                changed = leader.changed() => {
                    if changed.is_err() || !*leader.borrow_and_update() {
                        break;
                    }
                }
            }
        }
        metrics.set_leader(false);
        tracing::info!("controller stopped");
        if cancel.is_cancelled() {
            return;
        }
    }
}

/// One leadership term: detect the target, start the watches and the Controller.
async fn run_term(parts: Parts) {
    let Parts {
        client,
        caches,
        recorder,
        metrics,
        options,
        activity,
    } = parts;
    caches.wait_until_ready().await;
    let (target, version) =
        target::detect(&client, &options.knative_namespace, options.knative_version).await;
    let watch_autoscalers = target == Target::PodAutoscaler || options.wake_on_traffic;
    tracing::info!(
        target = target.as_str(),
        knative = version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "unknown".into()),
        org_selector = options.org_selector.as_deref().unwrap_or(""),
        wake_on_traffic = options.wake_on_traffic,
        "controller leading"
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        caches: caches.clone(),
        recorder,
        metrics,
        target,
        namespaces: NamespaceIndex::default(),
        revisions: ObjectIndex::default(),
        autoscalers: ObjectIndex::default(),
        watch_autoscalers,
        answered: Mutex::new(HashMap::new()),
        failures: Mutex::new(HashMap::new()),
        traffic: activity
            .filter(|_| options.wake_on_traffic)
            .map(traffic::Detector::new),
        warming: Mutex::default(),
        looked: Mutex::default(),
    });

    let org_config = match &options.org_selector {
        Some(selector) => watcher::Config::default().labels(selector),
        None => watcher::Config::default(),
    };
    // The controller's own Org store, slimmed as the admission caches are: managedFields are
    // two thirds of a stored Org and no reconcile reads them (Org writes are merge patches).
    let writer = Writer::<Org>::default();
    let reader = writer.as_reader();
    let orgs = watcher::watcher(Api::<Org>::all(client.clone()), org_config).modify(slim);
    let mut controller = Controller::for_stream(reflector(writer, orgs).applied_objects(), reader)
        .with_config(ControllerConfig::default().concurrency(CONCURRENCY))
        .reconcile_on(namespace_triggers(&client, ctx.clone()))
        .reconcile_on(revision_triggers(&client, ctx.clone()))
        .reconcile_all_on(settings::changes(&caches));
    if watch_autoscalers {
        controller = controller.reconcile_on(autoscaler_triggers(&client, ctx.clone()));
    }
    controller
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        })
        .await;
}

fn org_label(ns: &PartialObjectMeta<Namespace>) -> Option<String> {
    ns.metadata.labels.as_ref()?.get(ORG_LABEL).cloned()
}

/// Logs watch errors (the watcher retries with backoff) and passes events on.
fn events<K: Send + 'static>(
    name: &'static str,
    stream: impl Stream<Item = watcher::Result<Event<K>>> + Send + 'static,
) -> impl Stream<Item = Event<K>> + Send + 'static {
    stream
        .default_backoff()
        .filter_map(move |event| async move {
            match event {
                Ok(event) => Some(event),
                Err(error) => {
                    tracing::warn!(watch = name, %error, "watch failed; retrying");
                    None
                }
            }
        })
}

/// The org refs an event about a namespaced child touches.
fn touched<K: Resource>(ctx: &Context, event: &Event<K>) -> Vec<ObjectRef<Org>> {
    match event {
        Event::Apply(obj) | Event::Delete(obj) | Event::InitApply(obj) => obj
            .meta()
            .namespace
            .as_deref()
            .and_then(|ns| ctx.namespaces.org_of(ns))
            .map(|org| vec![ObjectRef::new(&org)])
            .unwrap_or_default(),
        Event::Init | Event::InitDone => vec![],
    }
}

fn namespace_triggers(
    client: &Client,
    ctx: Arc<Context>,
) -> impl Stream<Item = ObjectRef<Org>> + Send + 'static {
    let api = Api::<PartialObjectMeta<Namespace>>::all(client.clone());
    let config = watcher::Config::default().labels(ORG_LABEL);
    events("namespaces", watcher::watcher(api, config)).flat_map(move |event| {
        let orgs = ctx.namespaces.apply(&event, org_label);
        stream::iter(orgs.into_iter().map(|org| ObjectRef::new(&org)))
    })
}

fn revision_triggers(
    client: &Client,
    ctx: Arc<Context>,
) -> impl Stream<Item = ObjectRef<Org>> + Send + 'static {
    let resource: ApiResource = target::revision_resource();
    let api = Api::<PartialObjectMeta<DynamicObject>>::all_with(client.clone(), &resource);
    events(
        "revisions",
        watcher::watcher(api, watcher::Config::default()),
    )
    .flat_map(move |event| {
        ctx.revisions.apply(&event);
        stream::iter(touched(&ctx, &event))
    })
}

fn autoscaler_triggers(
    client: &Client,
    ctx: Arc<Context>,
) -> impl Stream<Item = ObjectRef<Org>> + Send + 'static {
    let resource: ApiResource = target::autoscaler_resource();
    let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
    events(
        "podautoscalers",
        watcher::watcher(api, watcher::Config::default()),
    )
    .flat_map(move |event| {
        ctx.autoscalers.apply(&event);
        if let Some(traffic) = &ctx.traffic {
            traffic.observe(&ctx.namespaces, &ctx.caches, &event);
        }
        // PodAutoscaler changes only matter to reconciles when they carry the annotations.
        let refs = if ctx.target == Target::PodAutoscaler {
            touched(&ctx, &event)
        } else {
            vec![]
        };
        stream::iter(refs)
    })
}
