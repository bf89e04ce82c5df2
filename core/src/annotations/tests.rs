//! Tests of the decision, including an exhaustive loop over annotation combinations.

use super::*;
use crate::labels::{
    INITIAL_SCALE_CAMEL, MAX_SCALE, MAX_SCALE_CAMEL, MIN_SCALE_CAMEL, RETENTION_CAMEL,
};
use crate::testing::map as anns;

const STATES: [OrgState; 3] = [OrgState::Active, OrgState::Dormant, OrgState::Exempt];
const TARGET: &str = "autoscaling.knative.dev/target";

fn input(state: OrgState, annotations: &BTreeMap<String, String>) -> DecisionInput<'_> {
    DecisionInput {
        state,
        allow_zero_initial_scale: true,
        scale_down_window: None,
        annotations,
    }
}

fn ok(input: &DecisionInput<'_>) -> Decision {
    match decide(input) {
        Ok(d) => d,
        Err(e) => panic!("{:?} on {:?}: {e}", input.state, input.annotations),
    }
}

/// Applies the decision for `state` and returns the resulting annotations.
fn step(
    state: OrgState,
    allow: bool,
    current: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let d = ok(&DecisionInput {
        allow_zero_initial_scale: allow,
        ..input(state, current)
    });
    apply(current, &d)
}

#[test]
fn only_the_decision_inputs_matter() {
    let sets = [
        anns(&[]),
        anns(&[(MIN_SCALE, "3"), (MAX_SCALE, "6"), (TARGET, "10")]),
        anns(&[
            (MIN_SCALE_CAMEL, "2"),
            (INITIAL_SCALE_CAMEL, "1"),
            (ACTIVATION_SCALE, "4"),
        ]),
        anns(&[
            (MIN_SCALE, "0"),
            (
                DECLARED_ANNOTATION,
                r#"{"autoscaling.knative.dev/min-scale":"5"}"#,
            ),
        ]),
        anns(&[(RETENTION_CAMEL, "90s"), (MAX_SCALE_CAMEL, "1")]),
    ];
    let others = [
        (
            "serving.knative.dev/creator",
            "system:serviceaccount:platform:deployer",
        ),
        (
            "serving.knative.dev/routingStateModified",
            "2025-06-01T12:00:00Z",
        ),
        ("autoscaling.knative.devx/min-scale", "7"),
        ("s2z.dev/declared-by", "someone"),
    ];
    for set in &sets {
        let mut full = set.clone();
        full.extend(others.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let inputs: BTreeMap<String, String> = full
            .iter()
            .filter(|(k, _)| is_decision_input(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            &inputs, set,
            "the filter keeps exactly the autoscaling keys"
        );
        for state in STATES {
            for allow in [true, false] {
                for window in [None, Some(Duration::from_secs(600))] {
                    let with = |annotations| {
                        decide(&DecisionInput {
                            allow_zero_initial_scale: allow,
                            scale_down_window: window,
                            ..input(state, annotations)
                        })
                    };
                    assert_eq!(
                        with(&full),
                        with(&inputs),
                        "{state:?} allow={allow} window={window:?} on {full:?}"
                    );
                }
            }
        }
    }
}

fn set_to(key: &str, value: &str) -> (String, Option<String>) {
    (key.to_string(), Some(value.to_string()))
}

#[test]
fn dormant_and_allowed_scales_to_zero_from_the_first_pod() {
    let fresh = anns(&[]);
    let d = ok(&input(OrgState::Dormant, &fresh));
    assert_eq!(
        d.desired,
        BTreeMap::from([
            set_to(DECLARED_ANNOTATION, "{}"),
            set_to(INITIAL_SCALE, "0"),
            set_to(MIN_SCALE, "0"),
        ])
    );
    assert!(d.warnings.is_empty());
}

#[test]
fn dormant_but_forbidden_initial_scale_warns_and_omits_it() {
    let fresh = anns(&[(MIN_SCALE, "3"), (INITIAL_SCALE, "2")]);
    let d = ok(&DecisionInput {
        allow_zero_initial_scale: false,
        ..input(OrgState::Dormant, &fresh)
    });
    assert_eq!(d.warnings, vec![ZERO_INITIAL_SCALE_FORBIDDEN.to_string()]);
    assert_eq!(d.desired.get(INITIAL_SCALE), Some(&None));
    assert_eq!(d.desired.get(MIN_SCALE), Some(&Some("0".to_string())));
    let out = apply(&fresh, &d);
    assert!(!out.contains_key(INITIAL_SCALE));
    let cluster = KnativeConfig {
        allow_zero_initial_scale: false,
        ..KnativeConfig::default()
    };
    assert_eq!(validate_knative_with(&out, &cluster), Ok(()));
}

#[test]
fn dormant_uses_the_scale_down_window_as_retention() {
    let fresh = anns(&[(RETENTION_CAMEL, "5s")]);
    let d = ok(&DecisionInput {
        scale_down_window: Some(Duration::from_secs(600)),
        ..input(OrgState::Dormant, &fresh)
    });
    assert_eq!(d.desired.get(RETENTION), Some(&Some("600s".to_string())));
    assert_eq!(d.desired.get(RETENTION_CAMEL), Some(&None));
    assert!(d.warnings.is_empty());
}

#[test]
fn a_window_over_an_hour_is_clamped_with_a_warning() {
    let fresh = anns(&[]);
    let d = ok(&DecisionInput {
        scale_down_window: Some(Duration::from_secs(7200)),
        ..input(OrgState::Dormant, &fresh)
    });
    assert_eq!(d.desired.get(RETENTION), Some(&Some("3600s".to_string())));
    assert_eq!(d.warnings.len(), 1);
    assert!(d.warnings[0].contains("2h"), "{}", d.warnings[0]);
    assert!(
        d.warnings[0].contains("scaleDownWindow"),
        "{}",
        d.warnings[0]
    );
}

#[test]
fn active_puts_a_floor_of_one() {
    for fresh in [
        anns(&[]),
        anns(&[(MIN_SCALE, "0")]),
        anns(&[(MIN_SCALE_CAMEL, "0")]),
    ] {
        let out = step(OrgState::Active, true, &fresh);
        assert_eq!(
            out.get(MIN_SCALE).map(String::as_str),
            Some("1"),
            "{fresh:?}"
        );
        assert!(!out.contains_key(MIN_SCALE_CAMEL), "{fresh:?}");
        assert!(!out.contains_key(INITIAL_SCALE), "{fresh:?}");
    }
}

#[test]
fn active_keeps_a_declared_min_scale_of_three() {
    // What KServe writes for `minReplicas: 3`.
    let fresh = anns(&[(MIN_SCALE, "3")]);
    let d = ok(&input(OrgState::Active, &fresh));
    let record = serde_json::json!({ MIN_SCALE: "3" }).to_string();
    assert_eq!(
        d.desired,
        BTreeMap::from([set_to(DECLARED_ANNOTATION, &record)])
    );
    assert_eq!(
        apply(&fresh, &d).get(MIN_SCALE).map(String::as_str),
        Some("3")
    );
}

#[test]
fn exempt_is_kept_warm_like_active() {
    for fresh in [
        anns(&[]),
        anns(&[(MIN_SCALE, "0")]),
        anns(&[(MIN_SCALE, "3"), (MAX_SCALE, "5"), (INITIAL_SCALE, "2")]),
        anns(&[
            (MIN_SCALE_CAMEL, "1"),
            (RETENTION, "30s"),
            ("example.com/x", "y"),
        ]),
    ] {
        let exempt = step(OrgState::Exempt, true, &fresh);
        assert_eq!(exempt, step(OrgState::Active, true, &fresh), "{fresh:?}");
        assert!(
            int_of(&exempt, &MIN_SCALE_KEYS).is_some_and(|m| m >= 1),
            "{fresh:?} -> {exempt:?}"
        );
    }
    // A declared min-scale above the floor is kept as it is.
    let three = step(OrgState::Exempt, true, &anns(&[(MIN_SCALE, "3")]));
    assert_eq!(three.get(MIN_SCALE).map(String::as_str), Some("3"));
}

#[test]
fn waking_restores_exactly_the_declared_min_scale() {
    let fresh = anns(&[(MIN_SCALE, "3"), (MAX_SCALE, "5"), (TARGET, "10")]);
    let dormant = step(OrgState::Dormant, true, &fresh);
    assert_eq!(dormant.get(MIN_SCALE).map(String::as_str), Some("0"));
    assert_eq!(dormant.get(INITIAL_SCALE).map(String::as_str), Some("0"));
    assert_eq!(dormant.get(MAX_SCALE).map(String::as_str), Some("5"));

    let active = step(OrgState::Active, true, &dormant);
    assert_eq!(active.get(MIN_SCALE).map(String::as_str), Some("3"));
    assert!(!active.contains_key(INITIAL_SCALE));

    let exempt = step(OrgState::Exempt, true, &active);
    assert_eq!(exempt, active);
}

#[test]
fn deciding_again_changes_nothing() {
    let fresh = anns(&[
        (MIN_SCALE_CAMEL, "2"),
        (INITIAL_SCALE, "0"),
        (MAX_SCALE, "4"),
    ]);
    for state in STATES {
        for allow in [true, false] {
            let out = step(state, allow, &fresh);
            let again = ok(&DecisionInput {
                allow_zero_initial_scale: allow,
                ..input(state, &out)
            });
            assert!(
                again.is_noop(),
                "{state:?} allow={allow}: {:?}",
                again.desired
            );
        }
    }
}

#[test]
fn camel_case_keys_are_replaced_and_restored() {
    let fresh = anns(&[(MIN_SCALE_CAMEL, "3"), (INITIAL_SCALE_CAMEL, "2")]);
    assert_eq!(
        ok(&input(OrgState::Active, &fresh)).desired.len(),
        1,
        "only the record"
    );

    let dormant = step(OrgState::Dormant, true, &fresh);
    assert_eq!(dormant.get(MIN_SCALE).map(String::as_str), Some("0"));
    assert_eq!(dormant.get(INITIAL_SCALE).map(String::as_str), Some("0"));
    assert!(!dormant.contains_key(MIN_SCALE_CAMEL));
    assert!(!dormant.contains_key(INITIAL_SCALE_CAMEL));

    let active = step(OrgState::Active, true, &dormant);
    assert_eq!(active.get(MIN_SCALE_CAMEL).map(String::as_str), Some("3"));
    assert_eq!(
        active.get(INITIAL_SCALE_CAMEL).map(String::as_str),
        Some("2")
    );
    assert!(!active.contains_key(MIN_SCALE));
    assert!(!active.contains_key(INITIAL_SCALE));
}

#[test]
fn kebab_zero_beats_camel_three_and_gets_the_floor() {
    let fresh = anns(&[(MIN_SCALE, "0"), (MIN_SCALE_CAMEL, "3")]);
    let active = step(OrgState::Active, true, &fresh);
    assert_eq!(active.get(MIN_SCALE).map(String::as_str), Some("1"));
    assert!(!active.contains_key(MIN_SCALE_CAMEL));
    assert_eq!(step(OrgState::Exempt, true, &active), active);
}

#[test]
fn unparseable_annotations_are_an_error() {
    for (current, needle) in [
        (
            anns(&[(MIN_SCALE, "abc")]),
            "annotation autoscaling.knative.dev/min-scale=\"abc\"",
        ),
        (anns(&[(MAX_SCALE, "-1")]), "max-scale"),
        (
            anns(&[(RETENTION, "2h")]),
            "scale-to-zero-pod-retention-period",
        ),
        (
            anns(&[(DECLARED_ANNOTATION, "not json")]),
            "s2z.dev/declared",
        ),
        (anns(&[(DECLARED_ANNOTATION, "[1,2]")]), "s2z.dev/declared"),
        (
            anns(&[(DECLARED_ANNOTATION, r#"{"a": 1}"#)]),
            "s2z.dev/declared",
        ),
        (
            anns(&[(
                DECLARED_ANNOTATION,
                r#"{"autoscaling.knative.dev/min-scale": "x"}"#,
            )]),
            "s2z.dev/declared",
        ),
    ] {
        for state in STATES {
            match decide(&input(state, &current)) {
                Ok(d) => panic!("{current:?} in {state:?} gave {d:?}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.starts_with("failed to read annotation"), "{msg}");
                    assert!(msg.contains(needle), "{msg}");
                }
            }
        }
    }
}

#[test]
fn declared_min_above_a_later_max_is_clamped() {
    let record = serde_json::json!({ MIN_SCALE: "5", MAX_SCALE: "8" }).to_string();
    let current = anns(&[
        (MIN_SCALE, "0"),
        (MAX_SCALE, "3"),
        (DECLARED_ANNOTATION, &record),
    ]);
    for state in [OrgState::Active, OrgState::Exempt] {
        let d = ok(&input(state, &current));
        assert_eq!(
            d.desired.get(MIN_SCALE),
            Some(&Some("3".to_string())),
            "{state:?}"
        );
        assert_eq!(d.warnings.len(), 1, "{state:?}: {:?}", d.warnings);
        assert_eq!(validate_knative(&apply(&current, &d)), Ok(()));
    }
}

#[test]
fn declared_min_above_a_later_activation_scale_is_clamped() {
    let record = serde_json::json!({ MIN_SCALE: "5" }).to_string();
    let current = anns(&[
        (MIN_SCALE, "1"),
        (ACTIVATION_SCALE, "2"),
        (DECLARED_ANNOTATION, &record),
    ]);
    let d = ok(&input(OrgState::Active, &current));
    assert_eq!(
        d.desired.get(MIN_SCALE),
        Some(&Some("2".to_string())),
        "{d:?}"
    );
    assert_eq!(d.warnings.len(), 1);
}

#[test]
fn a_declared_zero_initial_scale_the_cluster_forbids_is_dropped() {
    let fresh = anns(&[(INITIAL_SCALE, "0")]);
    let d = ok(&DecisionInput {
        allow_zero_initial_scale: false,
        ..input(OrgState::Exempt, &fresh)
    });
    assert_eq!(d.desired.get(INITIAL_SCALE), Some(&None), "{d:?}");
    assert_eq!(
        d.desired.get(MIN_SCALE),
        Some(&Some("1".to_string())),
        "{d:?}"
    );
    assert_eq!(d.warnings.len(), 1);
}

#[test]
fn other_annotations_are_never_touched() {
    let fresh = anns(&[
        ("example.com/x", "y"),
        (TARGET, "10"),
        (MAX_SCALE_CAMEL, "7"),
    ]);
    for state in STATES {
        let d = ok(&input(state, &fresh));
        for key in d.desired.keys() {
            assert!(
                MANAGED_KEYS.contains(&key.as_str()) || key == DECLARED_ANNOTATION,
                "{state:?} touched {key}"
            );
        }
    }
}

#[test]
fn apply_sets_and_removes() {
    let current = anns(&[("a", "1"), ("b", "2")]);
    let decision = Decision {
        desired: BTreeMap::from([set_to("a", "9"), ("b".to_string(), None), set_to("c", "3")]),
        warnings: vec![],
    };
    assert_eq!(apply(&current, &decision), anns(&[("a", "9"), ("c", "3")]));
}

#[test]
fn scaled_to_zero_reads_the_effective_min_scale() {
    assert!(is_scaled_to_zero(&anns(&[])));
    assert!(is_scaled_to_zero(&anns(&[(MIN_SCALE, "0")])));
    assert!(is_scaled_to_zero(&anns(&[(MIN_SCALE_CAMEL, "0")])));
    assert!(!is_scaled_to_zero(&anns(&[(MIN_SCALE, "1")])));
    assert!(!is_scaled_to_zero(&anns(&[
        (MIN_SCALE, "1"),
        (MIN_SCALE_CAMEL, "0")
    ])));
    assert!(!is_scaled_to_zero(&anns(&[(MIN_SCALE, "x")])));
}

#[test]
fn declared_falls_back_to_current_autoscaling_keys() -> Result<(), DecisionError> {
    let current = anns(&[(MIN_SCALE, "2"), ("example.com/x", "y")]);
    assert_eq!(declared(&current)?, anns(&[(MIN_SCALE, "2")]));
    let record = anns(&[
        (MIN_SCALE, "0"),
        (
            DECLARED_ANNOTATION,
            r#"{"autoscaling.knative.dev/min-scale":"4"}"#,
        ),
    ]);
    assert_eq!(declared(&record)?, anns(&[(MIN_SCALE, "4")]));
    Ok(())
}

type Choice = &'static [(&'static str, &'static str)];

/// Every combination of declared annotations, cluster setting, window and state: the output
/// validates, is idempotent, does not depend on the path taken to it, and keeps its promises.
#[test]
fn property_every_combination_validates_and_is_stable() {
    let mins: [Choice; 8] = [
        &[],
        &[(MIN_SCALE, "0")],
        &[(MIN_SCALE, "1")],
        &[(MIN_SCALE, "3")],
        &[(MIN_SCALE_CAMEL, "0")],
        &[(MIN_SCALE_CAMEL, "3")],
        &[(MIN_SCALE, "3"), (MIN_SCALE_CAMEL, "0")],
        &[(MIN_SCALE, "0"), (MIN_SCALE_CAMEL, "3")],
    ];
    let maxes: [Choice; 5] = [
        &[],
        &[(MAX_SCALE, "0")],
        &[(MAX_SCALE, "2")],
        &[(MAX_SCALE, "5")],
        &[(MAX_SCALE_CAMEL, "2")],
    ];
    let initials: [Choice; 5] = [
        &[],
        &[(INITIAL_SCALE, "0")],
        &[(INITIAL_SCALE, "1")],
        &[(INITIAL_SCALE_CAMEL, "0")],
        &[(INITIAL_SCALE_CAMEL, "2")],
    ];
    let activations: [Choice; 3] = [&[], &[(ACTIVATION_SCALE, "2")], &[(ACTIVATION_SCALE, "3")]];
    let retentions: [Choice; 3] = [&[], &[(RETENTION, "30s")], &[(RETENTION_CAMEL, "45s")]];
    let windows = [
        None,
        Some(Duration::from_secs(600)),
        Some(Duration::from_secs(7200)),
    ];

    let (mut valid, mut invalid) = (0, 0);
    for min in mins {
        for max in maxes {
            for initial in initials {
                for activation in activations {
                    for retention in retentions {
                        let mut fresh = anns(&[("example.com/x", "y"), (TARGET, "10")]);
                        for (k, v) in [min, max, initial, activation, retention].concat() {
                            fresh.insert(k.to_string(), v.to_string());
                        }
                        if validate_knative(&fresh).is_err() {
                            invalid += 1;
                            for state in STATES {
                                assert!(decide(&input(state, &fresh)).is_err(), "{fresh:?}");
                            }
                            continue;
                        }
                        valid += 1;
                        for allow in [true, false] {
                            for window in windows {
                                check_combination(&fresh, allow, window);
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        valid > 1000 && invalid > 100,
        "valid={valid} invalid={invalid}"
    );
}

fn check_combination(fresh: &BTreeMap<String, String>, allow: bool, window: Option<Duration>) {
    let cluster = KnativeConfig {
        allow_zero_initial_scale: allow,
        ..KnativeConfig::default()
    };
    let admitted = validate_knative_with(fresh, &cluster).is_ok();
    let run = |state: OrgState, current: &BTreeMap<String, String>| {
        let d = ok(&DecisionInput {
            state,
            allow_zero_initial_scale: allow,
            scale_down_window: window,
            annotations: current,
        });
        let out = apply(current, &d);
        assert_eq!(
            validate_knative_with(&out, &cluster),
            Ok(()),
            "{state:?} allow={allow} window={window:?} on {current:?} -> {out:?}"
        );
        (d, out)
    };
    let direct = STATES.map(|state| run(state, fresh));

    for (state, (d, out)) in STATES.into_iter().zip(&direct) {
        // Built only when an assertion fails: formatting every case would dominate the run time.
        let ctx = || format!("{state:?} allow={allow} window={window:?} on {fresh:?} -> {out:?}");
        assert_eq!(
            out.get("example.com/x"),
            fresh.get("example.com/x"),
            "{}",
            ctx()
        );
        assert_eq!(out.get(TARGET), fresh.get(TARGET), "{}", ctx());
        assert_eq!(
            out.get(ACTIVATION_SCALE),
            fresh.get(ACTIVATION_SCALE),
            "{}",
            ctx()
        );
        assert_eq!(
            first_present(out, &MAX_SCALE_KEYS),
            first_present(fresh, &MAX_SCALE_KEYS),
            "{}",
            ctx()
        );

        let again = run(state, out).0;
        assert!(
            again.is_noop(),
            "not idempotent: {}: {:?}",
            ctx(),
            again.desired
        );

        let min = int_of(out, &MIN_SCALE_KEYS);
        let declared_min = int_of(fresh, &MIN_SCALE_KEYS);
        match state {
            OrgState::Dormant => {
                assert_eq!(min, Some(0), "{}", ctx());
                let initial = int_of(out, &INITIAL_SCALE_KEYS);
                assert_eq!(initial, allow.then_some(0), "{}", ctx());
                let warned = d.warnings.iter().any(|w| w == ZERO_INITIAL_SCALE_FORBIDDEN);
                assert_eq!(warned, !allow, "{}", ctx());
                let retention = first_present(out, &RETENTION_KEYS).map(|(_, v)| v);
                let expected = match window {
                    Some(w) if w > MAX_RETENTION => Some("3600s"),
                    Some(_) => Some("600s"),
                    None => first_present(fresh, &RETENTION_KEYS).map(|(_, v)| v),
                };
                assert_eq!(retention, expected, "{}", ctx());
                assert!(out.contains_key(DECLARED_ANNOTATION), "{}", ctx());
            }
            // Exempt orgs get the same warm floor as active ones.
            OrgState::Active | OrgState::Exempt => {
                assert!(min.is_some_and(|m| m >= 1), "{}", ctx());
                if declared_min.is_some_and(|m| m >= 1) {
                    assert_eq!(min, declared_min, "{}", ctx());
                }
                assert!(out.contains_key(DECLARED_ANNOTATION), "{}", ctx());
            }
        }

        // Whatever the path, the same state ends in the same annotations.
        if admitted {
            for (next, (_, expected)) in STATES.into_iter().zip(&direct) {
                let (_, via) = run(next, out);
                assert_eq!(&via, expected, "path {state:?} -> {next:?}: {}", ctx());
            }
        }
    }
}
