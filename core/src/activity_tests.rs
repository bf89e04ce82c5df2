use super::*;
use crate::testing::t;

const NOW: &str = "2025-01-31T12:00:00Z";

#[test]
fn empty_body_means_now() {
    for body in [&b""[..], b"  \n", b"{}", br#"{"at": null}"#] {
        assert_eq!(
            parse_signal(body, t(NOW)),
            Ok(Signal {
                at: t(NOW),
                clamped: false
            }),
            "{body:?}"
        );
    }
}

#[test]
fn past_timestamp_is_kept() {
    let signal = parse_signal(br#"{"at": "2025-01-31T11:00:00+00:00"}"#, t(NOW));
    assert_eq!(
        signal,
        Ok(Signal {
            at: t("2025-01-31T11:00:00Z"),
            clamped: false
        })
    );
}

#[test]
fn future_timestamp_is_clamped_to_now() {
    let signal = parse_signal(br#"{"at": "2030-01-01T00:00:00Z"}"#, t(NOW));
    assert_eq!(
        signal,
        Ok(Signal {
            at: t(NOW),
            clamped: true
        })
    );
}

#[test]
fn malformed_bodies_are_refused() {
    for body in [
        &b"not json"[..],
        b"[1]",
        br#"{"at": 5}"#,
        br#"{"at": "yesterday"}"#,
    ] {
        let err = parse_signal(body, t(NOW)).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with("failed to read the activity request"),
            "{body:?}: {msg}"
        );
    }
}

#[test]
fn never_backwards() {
    let at = t("2025-01-31T12:00:00Z");
    assert!(advances(None, at));
    assert!(advances(Some("garbage"), at));
    assert!(advances(Some("2025-01-31T11:59:59Z"), at));
    assert!(
        !advances(Some("2025-01-31T12:00:00Z"), at),
        "equal is no news"
    );
    assert!(!advances(Some("2025-01-31T13:00:00+01:00"), at));
    assert!(!advances(Some("2025-02-01T00:00:00Z"), at));
    assert_eq!(newest(Some(at), None), Some(at));
    assert_eq!(newest(None, None), None);
}

/// A token bucket stand-in: grants while `tokens` last, then says "at `next`".
struct Bucket {
    tokens: u32,
    next: u64,
    asked: u32,
}

impl Bucket {
    fn admit(&mut self) -> Option<u64> {
        self.asked += 1;
        if self.tokens > 0 {
            self.tokens -= 1;
            None
        } else {
            Some(self.next)
        }
    }
}

fn secs(n: i64) -> DateTime<Utc> {
    t(NOW) + chrono::TimeDelta::seconds(n)
}

#[test]
fn first_signal_writes_now_and_later_ones_merge_while_in_flight() {
    let mut c = Coalescer::new();
    let mut bucket = Bucket {
        tokens: 1,
        next: 100,
        asked: 0,
    };
    assert_eq!(
        c.offer("a", secs(1), false, 0, || bucket.admit()),
        Offer::WriteNow
    );
    assert_eq!(
        c.take_due(0, usize::MAX, |_| bucket.admit()),
        vec![("a".into(), secs(1))]
    );
    assert_eq!(bucket.asked, 1, "a granted write is not asked twice");
    assert_eq!(
        c.offer("a", secs(3), false, 1, || bucket.admit()),
        Offer::Merged
    );
    assert_eq!(
        c.offer("a", secs(2), false, 1, || bucket.admit()),
        Offer::Merged
    );
    assert_eq!(c.pending("a"), Some(secs(3)), "the newest wins");
    // The write of secs(1) ends; secs(3) waits for the next token.
    c.finish("a", WriteOutcome::Done, 2, || bucket.admit());
    assert_eq!(c.next_due(), Some(100));
    assert!(c.take_due(99, usize::MAX, |_| bucket.admit()).is_empty());
    bucket.tokens = 1;
    assert_eq!(
        c.take_due(100, usize::MAX, |_| bucket.admit()),
        vec![("a".into(), secs(3))]
    );
    c.finish("a", WriteOutcome::Done, 101, || bucket.admit());
    assert!(c.is_empty());
}

#[test]
fn suppressed_signals_coalesce_into_one_write_at_window_end() {
    let mut c = Coalescer::new();
    let mut bucket = Bucket {
        tokens: 0,
        next: 50,
        asked: 0,
    };
    assert_eq!(
        c.offer("a", secs(1), false, 10, || bucket.admit()),
        Offer::Coalesced { until: 50 }
    );
    for n in 2..20 {
        assert_eq!(
            c.offer("a", secs(n), false, 10 + n as u64, || bucket.admit()),
            Offer::Merged
        );
    }
    assert_eq!(bucket.asked, 1);
    bucket.tokens = 1;
    let due = c.take_due(50, usize::MAX, |_| bucket.admit());
    assert_eq!(due, vec![("a".into(), secs(19))], "one write, the newest");
    c.finish("a", WriteOutcome::Done, 51, || bucket.admit());
    assert!(c.is_empty());
}

#[test]
fn a_window_still_closed_is_waited_for_again() {
    let mut c = Coalescer::new();
    let mut bucket = Bucket {
        tokens: 0,
        next: 50,
        asked: 0,
    };
    c.offer("a", secs(1), false, 0, || bucket.admit());
    bucket.next = 80;
    assert!(c.take_due(50, usize::MAX, |_| bucket.admit()).is_empty());
    assert_eq!(c.next_due(), Some(80));
}

#[test]
fn dormant_org_skips_the_limit_even_while_coalescing() {
    let mut c = Coalescer::new();
    let mut bucket = Bucket {
        tokens: 0,
        next: 500,
        asked: 0,
    };
    assert_eq!(
        c.offer("a", secs(1), true, 0, || bucket.admit()),
        Offer::WriteNow
    );
    assert_eq!(bucket.asked, 0);
    assert_eq!(c.take_due(0, usize::MAX, |_| bucket.admit()).len(), 1);
    c.finish("a", WriteOutcome::Done, 1, || bucket.admit());

    assert_eq!(
        c.offer("b", secs(1), false, 0, || bucket.admit()),
        Offer::Coalesced { until: 500 }
    );
    assert_eq!(
        c.offer("b", secs(2), true, 5, || bucket.admit()),
        Offer::WriteNow
    );
    assert_eq!(c.next_due(), Some(5));
    assert_eq!(
        c.take_due(5, usize::MAX, |_| Some(999)),
        vec![("b".into(), secs(2))]
    );
}

#[test]
fn failed_writes_keep_everything_and_retry() {
    let mut c = Coalescer::new();
    c.offer("a", secs(1), false, 0, || None);
    assert_eq!(c.take_due(0, usize::MAX, |_| None).len(), 1);
    c.offer("a", secs(5), false, 1, || None);
    c.finish("a", WriteOutcome::Retry { at: 30 }, 2, || Some(1000));
    assert_eq!(c.next_due(), Some(30));
    assert_eq!(
        c.take_due(30, usize::MAX, |_| Some(1000)),
        vec![("a".into(), secs(5))],
        "a retry needs no new token and carries the newest"
    );
}

#[test]
fn gone_orgs_are_dropped_and_unknown_finishes_ignored() {
    let mut c = Coalescer::new();
    c.offer("a", secs(1), false, 0, || None);
    c.take_due(0, usize::MAX, |_| None);
    c.finish("a", WriteOutcome::Gone, 1, || None);
    assert!(c.is_empty());
    c.finish("zzz", WriteOutcome::Done, 1, || None);
    assert!(c.is_empty());
}

#[test]
fn take_all_flushes_everything_not_in_flight() {
    let mut c = Coalescer::new();
    c.offer("a", secs(1), false, 0, || Some(100));
    c.offer("b", secs(2), false, 0, || None);
    c.offer("c", secs(3), false, 0, || None);
    let first = c.take_due(0, usize::MAX, |_| None);
    assert_eq!(first.len(), 2);
    let mut rest = c.take_all();
    rest.sort();
    assert_eq!(rest, vec![("a".into(), secs(1))]);
    assert_eq!(c.next_due(), None);
    assert_eq!(c.len(), 3);
    assert_eq!(
        c.pending_orgs(),
        vec![
            ("a".into(), secs(1)),
            ("b".into(), secs(2)),
            ("c".into(), secs(3))
        ]
    );
}

#[test]
fn take_due_respects_the_batch_size() {
    let mut c = Coalescer::new();
    for org in ["a", "b", "c"] {
        c.offer(org, secs(1), false, 0, || None);
    }
    assert_eq!(c.take_due(0, 2, |_| None).len(), 2);
    assert_eq!(c.next_due(), Some(0));
    assert_eq!(c.take_due(0, 2, |_| None).len(), 1);
}

#[test]
fn orgs_are_independent() {
    let mut c = Coalescer::new();
    assert_eq!(c.offer("a", secs(1), false, 0, || None), Offer::WriteNow);
    assert_eq!(c.offer("b", secs(1), false, 0, || None), Offer::WriteNow);
    let mut due = c.take_due(0, usize::MAX, |_| None);
    due.sort();
    assert_eq!(due, vec![("a".into(), secs(1)), ("b".into(), secs(1))]);
}
