//! The arithmetic of the deploy-spike measurement (`tests/examples/spike.rs`): pod lifetimes
//! observed after a redeploy, integrated into pod- and GPU-seconds over a window, summed per
//! group of orgs, and printed as a table. No I/O here, so it is unit tested.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Which orgs a pod belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    Dormant,
    Active,
}

impl Group {
    pub fn label(self) -> &'static str {
        match self {
            Group::Dormant => "dormant",
            Group::Active => "active",
        }
    }
}

/// One pod started by the redeploy, in seconds since the redeploy began.
#[derive(Debug, Clone, PartialEq)]
pub struct PodLife {
    pub group: Group,
    /// GPUs the pod requests (the `nvidia.com/gpu` limit of its containers).
    pub gpus: u32,
    /// When it was bound to a node, i.e. started holding its GPUs; `None`: never scheduled.
    pub scheduled: Option<f64>,
    /// When it became Ready.
    pub ready: Option<f64>,
    /// When it was deleted or disappeared (Knative's autoscaler scaled its revision down);
    /// `None`: still there at the end.
    pub end: Option<f64>,
}

impl PodLife {
    /// Seconds within `[0, window]` during which the pod was bound to a node.
    pub fn held(&self, window: f64) -> f64 {
        self.held_until(window, self.end)
    }

    fn held_until(&self, window: f64, end: Option<f64>) -> f64 {
        let Some(start) = self.scheduled else {
            return 0.0;
        };
        let start = start.clamp(0.0, window);
        let end = end.unwrap_or(window).clamp(start, window);
        end - start
    }

    /// Whether the pod still held its node when the window closed.
    pub fn held_at_end(&self, window: f64) -> bool {
        self.scheduled.is_some_and(|s| s <= window) && self.end.is_none_or(|e| e > window)
    }
}

/// What one run measured for one group of orgs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub orgs: usize,
    pub services: usize,
    pub revisions: usize,
    pub pods_started: usize,
    pub gpu_pods_started: usize,
    pub pods_scheduled: usize,
    /// Seconds from the redeploy to each pod's scheduling.
    pub scheduled_after: Vec<f64>,
    pub pod_seconds: f64,
    pub gpu_seconds: f64,
    /// Pods still holding a node, and the GPUs they hold, when the window closed.
    pub pods_at_end: usize,
    pub gpus_at_end: u32,
}

impl Figures {
    /// Adds the pods' lifetimes over `window` seconds.
    pub fn add_pods(&mut self, pods: &[&PodLife], window: f64) {
        for p in pods {
            self.pods_started += 1;
            self.gpu_pods_started += usize::from(p.gpus > 0);
            self.pods_scheduled += usize::from(p.scheduled.is_some());
            self.scheduled_after.extend(p.scheduled);
            self.pod_seconds += p.held(window);
            self.gpu_seconds += f64::from(p.gpus) * p.held(window);
            if p.held_at_end(window) {
                self.pods_at_end += 1;
                self.gpus_at_end += p.gpus;
            }
        }
    }
}

/// Sums pod lifetimes per group.
pub fn by_group(
    pods: &[PodLife],
    window: f64,
    base: &BTreeMap<Group, Figures>,
) -> BTreeMap<Group, Figures> {
    let mut out = base.clone();
    for group in [Group::Dormant, Group::Active] {
        let mine: Vec<&PodLife> = pods.iter().filter(|p| p.group == group).collect();
        out.entry(group).or_default().add_pods(&mine, window);
    }
    out
}

/// The comparison table: one column per (run, group), one row per figure.
pub fn table(runs: &[(&str, &BTreeMap<Group, Figures>)], window: f64) -> String {
    let mut header = vec!["".to_string()];
    let mut columns: Vec<&Figures> = Vec::new();
    for (name, groups) in runs {
        for (group, figures) in groups.iter() {
            header.push(format!("{name}, {} orgs", group.label()));
            columns.push(figures);
        }
    }
    type Row = (String, Box<dyn Fn(&Figures) -> String>);
    let rows: Vec<Row> = vec![
        ("orgs".into(), Box::new(|f| f.orgs.to_string())),
        (
            "services redeployed".into(),
            Box::new(|f| f.services.to_string()),
        ),
        (
            "revisions created".into(),
            Box::new(|f| f.revisions.to_string()),
        ),
        (
            "pods started".into(),
            Box::new(|f| f.pods_started.to_string()),
        ),
        (
            "  of which with a GPU".into(),
            Box::new(|f| f.gpu_pods_started.to_string()),
        ),
        (
            "seconds to pod scheduled, median / max".into(),
            Box::new(|f| latency(&f.scheduled_after)),
        ),
        (
            format!("pod-seconds held in {window:.0} s (measured)"),
            Box::new(|f| format!("{:.0}", f.pod_seconds)),
        ),
        (
            format!("GPU-seconds held in {window:.0} s (measured)"),
            Box::new(|f| format!("{:.0}", f.gpu_seconds)),
        ),
        (
            format!("pods / GPUs still held at {window:.0} s (measured)"),
            Box::new(|f| format!("{} / {}", f.pods_at_end, f.gpus_at_end)),
        ),
    ];
    let mut cells: Vec<Vec<String>> = vec![header];
    for (name, value) in &rows {
        let mut line = vec![name.clone()];
        line.extend(columns.iter().map(|f| value(f)));
        cells.push(line);
    }
    markdown(&cells)
}

/// `median / max` of the values, `-` when there are none.
fn latency(values: &[f64]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match (sorted.get(sorted.len() / 2), sorted.last()) {
        (Some(median), Some(max)) => format!("{median:.1} / {max:.1}"),
        _ => "-".into(),
    }
}

/// A Markdown table with padded columns, first column left-aligned, the others right-aligned.
fn markdown(cells: &[Vec<String>]) -> String {
    let width = |i: usize| {
        cells
            .iter()
            .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..cells.first().map_or(0, Vec::len)).map(width).collect();
    let mut out = String::new();
    for (n, row) in cells.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        let _ = writeln!(out, "| {} |", line.join(" | "));
        if n == 0 {
            let rule: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    if i == 0 {
                        "-".repeat(*w)
                    } else {
                        format!("{}:", "-".repeat(w.saturating_sub(1)))
                    }
                })
                .collect();
            let _ = writeln!(out, "| {} |", rule.join(" | "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(gpus: u32, scheduled: Option<f64>, ready: Option<f64>, end: Option<f64>) -> PodLife {
        PodLife {
            group: Group::Dormant,
            gpus,
            scheduled,
            ready,
            end,
        }
    }

    #[test]
    fn held_is_clipped_to_the_window() {
        assert_eq!(pod(1, Some(10.0), Some(12.0), None).held(300.0), 290.0);
        assert_eq!(
            pod(1, Some(10.0), Some(12.0), Some(100.0)).held(300.0),
            90.0
        );
        assert_eq!(pod(1, Some(-5.0), None, Some(20.0)).held(300.0), 20.0);
        assert_eq!(pod(1, Some(310.0), None, None).held(300.0), 0.0);
        assert_eq!(pod(1, None, None, None).held(300.0), 0.0);
        assert_eq!(pod(1, Some(50.0), None, Some(40.0)).held(300.0), 0.0);
    }

    #[test]
    fn held_at_end_only_when_scheduled_and_not_gone_by_then() {
        assert!(pod(1, Some(10.0), Some(12.0), None).held_at_end(300.0));
        assert!(pod(1, Some(10.0), Some(12.0), Some(301.0)).held_at_end(300.0));
        // Scaled down by Knative within the window.
        assert!(!pod(1, Some(10.0), Some(12.0), Some(92.0)).held_at_end(300.0));
        assert!(!pod(1, None, None, None).held_at_end(300.0));
        assert!(!pod(1, Some(310.0), None, None).held_at_end(300.0));
    }

    #[test]
    fn sums_per_group_and_renders_a_table() {
        let mut a = pod(1, Some(0.0), Some(1.0), None);
        a.group = Group::Active;
        let pods = vec![
            a,
            pod(0, Some(0.0), Some(1.0), None),
            pod(1, None, None, None),
        ];
        let base = BTreeMap::from([
            (
                Group::Dormant,
                Figures {
                    orgs: 5,
                    services: 10,
                    revisions: 10,
                    ..Figures::default()
                },
            ),
            (
                Group::Active,
                Figures {
                    orgs: 1,
                    services: 2,
                    revisions: 2,
                    ..Figures::default()
                },
            ),
        ]);
        let figures = by_group(&pods, 100.0, &base);
        let d = &figures[&Group::Dormant];
        assert_eq!(
            (d.pods_started, d.gpu_pods_started, d.pods_scheduled),
            (2, 1, 1)
        );
        assert_eq!((d.pod_seconds, d.gpu_seconds), (100.0, 0.0));
        let a = &figures[&Group::Active];
        assert_eq!(
            (a.pods_started, a.gpu_seconds, a.pods_at_end, a.gpus_at_end),
            (1, 100.0, 1, 1)
        );
        let text = table(&[("without s2z", &figures)], 100.0);
        assert!(text.contains("| without s2z, dormant orgs |"), "{text}");
        assert!(text.contains(" 0.0 / 0.0 |"), "{text}");
        assert!(
            text.lines().any(|l| l.starts_with("| pods started ")
                && l.contains(" 2 |")
                && l.ends_with(" 1 |")),
            "{text}"
        );
    }
}
