use super::*;
use serde_json::json;

#[test]
fn pods_count_gpus_like_the_scheduler() -> serde_json::Result<()> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "ns", "managedFields": [{"manager": "x"}]},
        "spec": {
            "containers": [
                {"name": "a", "resources": {"limits": {"nvidia.com/gpu": "2", "cpu": "1"}}},
                {"name": "b", "resources": {"requests": {"nvidia.com/gpu": "1"}}},
                {"name": "c"}
            ],
            "initContainers": [{"name": "i", "resources": {"limits": {"nvidia.com/gpu": "4"}}}]
        },
        "status": {"phase": "Running"}
    }))?;
    assert_eq!(pod.gpus(), 4);
    let pod: Pod = serde_json::from_value(json!({"metadata": {}, "spec": {"containers": [
        {"resources": {"limits": {"nvidia.com/gpu": 1}}}
    ]}}))?;
    assert_eq!(pod.gpus(), 1);
    // Every vendor defrag and the controller count.
    let pod: Pod = serde_json::from_value(json!({"metadata": {}, "spec": {"containers": [
        {"resources": {"limits": {"amd.com/gpu": "2"}}},
        {"resources": {"requests": {"gpu.intel.com/i915": "1"}}},
        {"resources": {"limits": {"example.com/fpga": "3"}}}
    ]}}))?;
    assert_eq!(pod.gpus(), 3);
    Ok(())
}

#[test]
fn a_bad_setting_falls_back_to_its_default_only() {
    let data = s2z_core::testing::map(&[
        ("orgDormancyPeriodSecs", "7200"),
        ("orgWarmupRatelimitStr", "lots"),
        ("typo", "1"),
    ]);
    let view = SettingsView::from_data("s2z-system", Some(data));
    assert_eq!(view.settings.dormancy_period.as_secs(), 7200);
    assert_eq!(
        view.settings.warmup_ratelimit,
        Settings::default().warmup_ratelimit
    );
    assert_eq!(view.problems.len(), 2, "{:?}", view.problems);
    assert!(view.problems[0].starts_with("ignoring orgWarmupRatelimitStr=\"lots\""));
    assert_eq!(view.source(), "configmap/s2z-settings in s2z-system");
    let missing = SettingsView::from_data("ops", None);
    assert_eq!(
        missing.source(),
        "defaults (no configmap/s2z-settings in ops)"
    );
    assert_eq!(missing.settings, Settings::default());
}

#[test]
fn join_keeps_only_the_selected_orgs() {
    let org = |name: &str| Org::new(name, Default::default());
    let object = |ns: &str, name: &str| Object {
        metadata: Meta {
            name: name.into(),
            namespace: ns.into(),
            ..Meta::default()
        },
    };
    let namespaces: BTreeMap<String, String> = [("a1", "a"), ("b1", "b")]
        .into_iter()
        .map(|(n, o)| (n.to_string(), o.to_string()))
        .collect();
    let inv = join(
        vec![org("a")],
        namespaces,
        (
            vec![
                object("a1", "r1"),
                object("b1", "r2"),
                object("other", "r3"),
            ],
            None,
        ),
        vec![Pod {
            metadata: object("b1", "p").metadata,
            ..Pod::default()
        }],
    );
    assert_eq!(inv.namespaces_of("a"), vec!["a1".to_string()]);
    assert_eq!(inv.revisions.len(), 1);
    assert!(inv.pods.is_empty());
}

#[test]
fn few_namespaces_are_listed_one_by_one() {
    let ns = |n: usize| -> BTreeMap<String, String> {
        (0..n)
            .map(|i| (format!("ns{i}"), "o".to_string()))
            .collect()
    };
    assert_eq!(scopes(&ns(2), false).len(), 2);
    assert_eq!(scopes(&ns(2), true), vec![None]);
    assert_eq!(scopes(&ns(PER_NAMESPACE_LIMIT + 1), false), vec![None]);
}
