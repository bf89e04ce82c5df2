//! Feeds arbitrary bytes to the pure AdmissionReview-to-patch function: it must never panic,
//! and whatever it answers must be JSON. From the repository root, with nightly:
//! `cargo fuzz run mutate fuzz/corpus/mutate fuzz/seeds/mutate`.

#![no_main]

use std::sync::OnceLock;

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use s2z_core::org::Org;
use s2z_webhook::admission::review;
use s2z_webhook::view::StaticView;

fn org(name: &str, allowed: bool, last_activity: &str, window: &str) -> Org {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "s2z.dev/v1alpha1",
        "kind": "Org",
        "metadata": {"name": name, "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"scaleToZeroAllowed": allowed, "scaleDownWindow": window},
        "status": {"lastActivityAt": last_activity},
    }))
    .expect("valid org")
}

/// Namespaces `dormant`, `active`, `exempt` and `ghost` (an org that does not exist).
fn view() -> &'static StaticView {
    static VIEW: OnceLock<StaticView> = OnceLock::new();
    VIEW.get_or_init(|| {
        StaticView::new()
            .with_namespace("dormant", "sleepy")
            .with_namespace("active", "busy")
            .with_namespace("exempt", "vip")
            .with_namespace("ghost", "nobody")
            .with_org(org("sleepy", true, "2025-05-01T00:00:00Z", "2h"))
            .with_org(org("busy", true, "2025-06-01T11:59:00Z", "nonsense"))
            .with_org(org("vip", false, "not a time", "5m"))
    })
}

fuzz_target!(|data: &[u8]| {
    let now = Utc
        .with_ymd_and_hms(2025, 6, 1, 12, 0, 0)
        .single()
        .expect("valid time");
    if let Ok(reviewed) = review(data, view(), now) {
        serde_json::from_slice::<serde_json::Value>(&reviewed.body).expect("response is JSON");
    }
});
