//! Waiting, driven by watches: each revision's PodAutoscaler (its `actualScale`) and Deployment
//! (its replicas), and the pods on the node (how many of each revision are still there, and
//! whether handed-back pods were adopted). Every event updates a [`Tracker`] and is evaluated at
//! once, so the reaction time is the watch latency plus microseconds, not a polling interval.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use s2z_core::defrag::RevisionProgress;
use s2z_core::labels::REVISION_LABEL;
use tokio::time::Instant;

use super::error::DefragError;
use super::interrupt::Interrupt;
use super::inventory::{actual_scale, pod_autoscalers, replicas};
use crate::client::{Cluster, Req};

/// A revision to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// Namespace.
    pub namespace: String,
    /// Revision.
    pub revision: String,
    /// Replicas when the defrag started.
    pub initial_replicas: i64,
}

/// What the watches say about one revision.
#[derive(Debug, Clone, Default)]
struct RevisionState {
    kpa_scale: Option<i64>,
    has_autoscaler: bool,
    deployments: BTreeMap<String, i64>,
}

/// A pod on the node, as last seen.
#[derive(Debug, Clone)]
pub struct PodState {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its revision.
    pub revision: Option<String>,
    /// Not being deleted.
    pub live: bool,
    /// A controller owns it.
    pub controlled: bool,
}

/// Where an event came from; a source is ready once its first list is complete.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Autoscaler(usize),
    Deployment(usize),
    NodePods,
}

enum Update {
    Autoscaler(usize, Event<DynamicObject>),
    Deployment(usize, Event<Deployment>),
    Pod(Event<Pod>),
}

/// One revision's line: the seed's progress, plus what is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Namespace.
    pub namespace: String,
    /// The seed's numbers.
    pub progress: RevisionProgress,
    /// The PodAutoscaler exists and reports a scale.
    pub known: bool,
    /// Neither a PodAutoscaler nor a Deployment is left: the revision was deleted, so its pods on
    /// the node protect nothing.
    pub gone: bool,
}

impl Line {
    /// Seed 002's rule, unknown scale counting as not satisfied.
    pub fn satisfied(&self) -> bool {
        self.gone || (self.known && self.progress.satisfied())
    }

    /// The seed's progress line.
    pub fn text(&self) -> String {
        if self.gone {
            format!(
                "Revision {} - deleted, nothing to protect",
                self.progress.revision
            )
        } else if !self.known {
            format!(
                "Revision {} - waiting for its PodAutoscaler to report actualScale - replicas={} initial_scale={}",
                self.progress.revision,
                self.progress.current_replicas,
                self.progress.initial_replicas
            )
        } else {
            self.progress.to_string()
        }
    }
}

/// Words for what a revision still needs.
pub fn pending(lines: &[Line]) -> String {
    let waiting: Vec<String> = lines
        .iter()
        .filter(|l| !l.satisfied())
        .map(|l| {
            if l.known {
                format!(
                    "revision {}/{} needs {} more ready pod(s) (current_scale={} replicas={} initial_scale={} on_node={})",
                    l.namespace,
                    l.progress.revision,
                    l.progress.extra_needed(),
                    l.progress.current_kpa_scale,
                    l.progress.current_replicas,
                    l.progress.initial_replicas,
                    l.progress.on_node
                )
            } else {
                format!(
                    "revision {}/{}: its PodAutoscaler reports no actualScale",
                    l.namespace, l.progress.revision
                )
            }
        })
        .collect();
    if waiting.is_empty() {
        "the watches never completed their first list".into()
    } else {
        waiting.join("; ")
    }
}

/// The watched world.
#[derive(Debug, Default)]
pub struct Tracker {
    watched: Vec<Watched>,
    revisions: Vec<RevisionState>,
    /// Pods on the node by UID.
    pub pods: BTreeMap<String, PodState>,
    ready: BTreeSet<Source>,
    sources: usize,
}

impl Tracker {
    /// Every source has listed once, so evaluations see the whole picture.
    pub fn ready(&self) -> bool {
        self.ready.len() == self.sources
    }

    /// Live pods of a revision on the node; `uncontrolled` counts only orphans.
    pub fn on_node(&self, namespace: &str, revision: &str, uncontrolled: bool) -> i64 {
        self.pods
            .values()
            .filter(|p| {
                p.live
                    && p.namespace == namespace
                    && p.revision.as_deref() == Some(revision)
                    && !(uncontrolled && p.controlled)
            })
            .count() as i64
    }

    /// One line per watched revision. `uncontrolled` as in [`Tracker::on_node`].
    pub fn lines(&self, uncontrolled: bool) -> Vec<Line> {
        self.watched
            .iter()
            .zip(&self.revisions)
            .map(|(w, s)| Line {
                namespace: w.namespace.clone(),
                known: s.kpa_scale.is_some(),
                gone: !s.has_autoscaler && s.deployments.is_empty(),
                progress: RevisionProgress {
                    revision: w.revision.clone(),
                    current_kpa_scale: s.kpa_scale.unwrap_or(0),
                    initial_replicas: w.initial_replicas,
                    current_replicas: s.deployments.values().sum(),
                    on_node: self.on_node(&w.namespace, &w.revision, uncontrolled),
                },
            })
            .collect()
    }

    fn apply(&mut self, update: Update) {
        match update {
            Update::Autoscaler(i, event) => {
                let source = Source::Autoscaler(i);
                let Some(state) = self.revisions.get_mut(i) else {
                    return;
                };
                match event {
                    Event::Init => {
                        self.ready.remove(&source);
                        state.has_autoscaler = false;
                        state.kpa_scale = None;
                    }
                    Event::InitDone => {
                        self.ready.insert(source);
                    }
                    Event::Apply(pa) | Event::InitApply(pa) => {
                        state.has_autoscaler = true;
                        state.kpa_scale = actual_scale(&pa);
                    }
                    Event::Delete(_) => {
                        state.has_autoscaler = false;
                        state.kpa_scale = None;
                    }
                }
            }
            Update::Deployment(i, event) => {
                let source = Source::Deployment(i);
                let Some(state) = self.revisions.get_mut(i) else {
                    return;
                };
                match event {
                    Event::Init => {
                        self.ready.remove(&source);
                        state.deployments.clear();
                    }
                    Event::InitDone => {
                        self.ready.insert(source);
                    }
                    Event::Apply(d) | Event::InitApply(d) => {
                        let name = d.metadata.name.clone().unwrap_or_default();
                        state.deployments.insert(name, replicas(&d));
                    }
                    Event::Delete(d) => {
                        state
                            .deployments
                            .remove(d.metadata.name.as_deref().unwrap_or_default());
                    }
                }
            }
            Update::Pod(event) => match event {
                Event::Init => {
                    self.ready.remove(&Source::NodePods);
                    self.pods.clear();
                }
                Event::InitDone => {
                    self.ready.insert(Source::NodePods);
                }
                Event::Apply(p) | Event::InitApply(p) => {
                    let uid = p.metadata.uid.clone().unwrap_or_default();
                    let finished = matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    );
                    let state = PodState {
                        namespace: p.metadata.namespace.clone().unwrap_or_default(),
                        name: p.metadata.name.clone().unwrap_or_default(),
                        revision: p
                            .metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(REVISION_LABEL).cloned()),
                        live: p.metadata.deletion_timestamp.is_none() && !finished,
                        controlled: p
                            .metadata
                            .owner_references
                            .iter()
                            .flatten()
                            .any(|o| o.controller == Some(true)),
                    };
                    self.pods.insert(uid, state);
                }
                Event::Delete(p) => {
                    self.pods
                        .remove(p.metadata.uid.as_deref().unwrap_or_default());
                }
            },
        }
    }
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `step` said done.
    Done,
    /// The deadline passed.
    TimedOut,
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

/// The API error behind a watch error when it is a 403: waiting cannot fix that, so it ends the
/// wait, while every other error is retried by the watcher's backoff.
fn forbidden(err: &watcher::Error) -> Option<kube::Error> {
    let inner = match err {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        _ => return None,
    };
    match inner {
        kube::Error::Api(status) if status.code == 403 => Some(kube::Error::Api(status.clone())),
        _ => None,
    }
}

fn stream<K, F>(
    api: Api<K>,
    config: watcher::Config,
    wrap: F,
    req: Req,
) -> BoxStream<'static, Result<Update, (Req, watcher::Error)>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(Event<K>) -> Update + Send + 'static,
{
    watcher(api, config)
        .default_backoff()
        .map_ok(wrap)
        .map_err(move |e| (req.clone(), e))
        .boxed()
}

/// Watches `revisions` and the pods on `node` until `step` returns true, the deadline passes, or
/// the run is interrupted. `step` sees the tracker after every event once every watch has listed.
pub async fn until<F>(
    cluster: &Cluster,
    node: &str,
    revisions: &[Watched],
    timeout: Option<Duration>,
    interrupt: &mut Interrupt,
    mut step: F,
) -> Result<(End, Tracker), DefragError>
where
    F: FnMut(&Tracker) -> Result<bool, DefragError>,
{
    let client = &cluster.client;
    let mut streams: SelectAll<BoxStream<'static, Result<Update, (Req, watcher::Error)>>> =
        SelectAll::new();
    for (i, w) in revisions.iter().enumerate() {
        let pas: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &w.namespace, &pod_autoscalers());
        streams.push(stream(
            pas,
            watcher::Config::default().fields(&format!("metadata.name={}", w.revision)),
            move |e| Update::Autoscaler(i, e),
            Req::new("watch", "podautoscalers.autoscaling.internal.knative.dev")
                .in_namespace(&w.namespace),
        ));
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &w.namespace);
        streams.push(stream(
            deployments,
            watcher::Config::default().labels(&format!("{REVISION_LABEL}={}", w.revision)),
            move |e| Update::Deployment(i, e),
            Req::new("watch", "deployments.apps").in_namespace(&w.namespace),
        ));
    }
    streams.push(stream(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        Update::Pod,
        Req::new("watch", "pods"),
    ));
    let mut tracker = Tracker {
        watched: revisions.to_vec(),
        revisions: vec![RevisionState::default(); revisions.len()],
        sources: revisions.len() * 2 + 1,
        ..Tracker::default()
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    let sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => futures::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            // Events first: an event that makes the node safe wins over a deadline at the same time.
            biased;
            item = streams.next() => {
                match item {
                    Some(Ok(update)) => {
                        tracker.apply(update);
                        if tracker.ready() && step(&tracker)? {
                            return Ok((End::Done, tracker));
                        }
                    }
                    Some(Err((req, e))) => {
                        if let Some(e) = forbidden(&e) {
                            return Err(DefragError::api(cluster, &req, e));
                        }
                    }
                    None => return Ok((End::TimedOut, tracker)),
                }
            }
            () = interrupt.wait() => return Ok((End::Interrupted, tracker)),
            () = &mut sleep => return Ok((End::TimedOut, tracker)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pa(scale: i64) -> DynamicObject {
        let mut o = DynamicObject::new("r", &pod_autoscalers());
        o.data = json!({"status": {"actualScale": scale}});
        o
    }

    fn deployment(replicas: i32) -> Deployment {
        serde_json::from_value(
            json!({"metadata": {"name": "r-deployment"}, "spec": {"replicas": replicas,
            "selector": {}, "template": {}}}),
        )
        .unwrap_or_default()
    }

    fn pod(uid: &str, controlled: bool, deleting: bool) -> Pod {
        let mut p: Pod = serde_json::from_value(
            json!({"metadata": {"name": uid, "namespace": "ns", "uid": uid,
            "labels": {REVISION_LABEL: "r"}}}),
        )
        .unwrap_or_default();
        if controlled {
            p.metadata.owner_references = Some(vec![serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "x", "controller": true}))
            .unwrap_or_default()]);
        }
        if deleting {
            p.metadata.deletion_timestamp =
                serde_json::from_value(json!("2026-01-01T00:00:00Z")).ok();
        }
        p
    }

    fn tracker() -> Tracker {
        Tracker {
            watched: vec![Watched {
                namespace: "ns".into(),
                revision: "r".into(),
                initial_replicas: 3,
            }],
            revisions: vec![RevisionState::default()],
            sources: 3,
            ..Tracker::default()
        }
    }

    fn init<K>(t: &mut Tracker, wrap: impl Fn(Event<K>) -> Update, items: Vec<K>) {
        t.apply(wrap(Event::Init));
        for item in items {
            t.apply(wrap(Event::InitApply(item)));
        }
        t.apply(wrap(Event::InitDone));
    }

    #[test]
    fn evaluates_only_once_every_watch_has_listed_and_follows_events() {
        let mut t = tracker();
        init(&mut t, |e| Update::Autoscaler(0, e), vec![pa(3)]);
        init(&mut t, |e| Update::Deployment(0, e), vec![deployment(3)]);
        assert!(!t.ready());
        init(&mut t, Update::Pod, vec![pod("a", false, false)]);
        assert!(t.ready());
        let line = &t.lines(false)[0];
        assert_eq!(
            line.text(),
            "Revision r - 1 extra needed - current_scale=3 replicas=3 initial_scale=3"
        );
        assert!(!line.satisfied());

        t.apply(Update::Autoscaler(0, Event::Apply(pa(4))));
        assert!(t.lines(false)[0].satisfied());

        // The orphan went away (deleted): nothing is needed for it any more.
        t.apply(Update::Autoscaler(0, Event::Apply(pa(3))));
        t.apply(Update::Pod(Event::Apply(pod("a", false, true))));
        assert_eq!(t.lines(false)[0].progress.on_node, 0);
        assert!(t.lines(false)[0].satisfied());
    }

    #[test]
    fn unknown_scale_is_never_safe_and_a_deleted_revision_is() {
        let mut t = tracker();
        init(&mut t, |e| Update::Autoscaler(0, e), vec![]);
        init(&mut t, |e| Update::Deployment(0, e), vec![deployment(1)]);
        init(&mut t, Update::Pod, vec![]);
        let line = &t.lines(false)[0];
        assert!(!line.known && !line.satisfied(), "{}", line.text());
        t.apply(Update::Deployment(0, Event::Delete(deployment(1))));
        assert!(t.lines(false)[0].satisfied());
    }

    #[test]
    fn a_relist_pauses_evaluation_until_it_is_complete() {
        let mut t = tracker();
        init(&mut t, |e| Update::Autoscaler(0, e), vec![pa(3)]);
        init(&mut t, |e| Update::Deployment(0, e), vec![deployment(3)]);
        init(&mut t, Update::Pod, vec![pod("a", false, false)]);
        t.apply(Update::Pod(Event::Init));
        assert!(!t.ready());
        t.apply(Update::Pod(Event::InitApply(pod("a", true, false))));
        t.apply(Update::Pod(Event::InitDone));
        assert!(t.ready());
        assert_eq!(t.on_node("ns", "r", true), 0, "adopted again");
        assert_eq!(t.on_node("ns", "r", false), 1);
    }

    #[test]
    fn pending_names_what_is_missing() {
        let line = Line {
            namespace: "ns".into(),
            progress: s2z_core::defrag::RevisionProgress {
                revision: "r".into(),
                current_kpa_scale: 3,
                initial_replicas: 3,
                current_replicas: 3,
                on_node: 1,
            },
            known: true,
            gone: false,
        };
        assert_eq!(
            pending(&[line]),
            "revision ns/r needs 1 more ready pod(s) (current_scale=3 replicas=3 initial_scale=3 on_node=1)"
        );
    }
}
