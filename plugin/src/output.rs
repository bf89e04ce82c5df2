//! Rendering: kubectl-style tables (comfy-table, no borders, upper-case headers), JSON and YAML
//! documents, ages the way kubectl prints them, optional colour, and errors as the plugin
//! reports them.

use std::io::Write;
use std::time::Duration;

use comfy_table::{Attribute, Cell as TableCell, Color, ContentArrangement, Table, presets};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::options::Format;

/// `apiVersion` of every document the plugin prints.
pub const API_VERSION: &str = "s2z.dev/v1alpha1";

/// How a piece of text is highlighted when colour is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Healthy, warm: green.
    Good,
    /// Asleep on purpose: blue.
    Calm,
    /// Needs a look: yellow.
    Warn,
    /// Failure: red.
    Bad,
    /// Secondary: dim.
    Dim,
    /// Emphasis: bold.
    Bold,
}

impl Style {
    fn ansi(self) -> &'static str {
        match self {
            Style::Good => "32",
            Style::Calm => "34",
            Style::Warn => "33",
            Style::Bad => "31",
            Style::Dim => "2",
            Style::Bold => "1",
        }
    }

    fn apply(self, cell: TableCell) -> TableCell {
        match self {
            Style::Good => cell.fg(Color::Green),
            Style::Calm => cell.fg(Color::Blue),
            Style::Warn => cell.fg(Color::Yellow),
            Style::Bad => cell.fg(Color::Red),
            Style::Dim => cell.add_attribute(Attribute::Dim),
            Style::Bold => cell.add_attribute(Attribute::Bold),
        }
    }
}

/// `text` in `style` when `color` is on, else unchanged.
pub fn paint(text: &str, style: Style, color: bool) -> String {
    if color {
        format!("\x1b[{}m{text}\x1b[0m", style.ansi())
    } else {
        text.to_string()
    }
}

/// One table cell: its text and, optionally, how to highlight it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// The text.
    pub text: String,
    /// Highlight when colour is on.
    pub style: Option<Style>,
}

impl Cell {
    /// A plain cell.
    pub fn plain(text: impl Into<String>) -> Self {
        Cell {
            text: text.into(),
            style: None,
        }
    }

    /// A highlighted cell.
    pub fn styled(text: impl Into<String>, style: Style) -> Self {
        Cell {
            text: text.into(),
            style: Some(style),
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Cell::plain(text)
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Cell::plain(text)
    }
}

/// Renders rows under `headers` the way `kubectl get` does: no borders, columns three spaces
/// apart, no trailing blanks. Ends with a newline.
pub fn table(headers: &[&str], rows: Vec<Vec<Cell>>, color: bool) -> String {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    if color {
        table.enforce_styling();
    } else {
        table.force_no_tty();
    }
    table.set_header(headers.iter().map(|h| TableCell::new(h.to_uppercase())));
    for row in rows {
        table.add_row(row.into_iter().map(|cell| {
            let plain = TableCell::new(&cell.text);
            match (color, cell.style) {
                (true, Some(style)) => style.apply(plain),
                _ => plain,
            }
        }));
    }
    let last = headers.len().saturating_sub(1);
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 3 }));
    }
    let mut text = String::new();
    for line in table.lines() {
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// The document as JSON (pretty, with a final newline) or YAML.
pub fn document<T: Serialize>(format: Format, value: &T) -> Result<String> {
    let rendered = match format {
        Format::Yaml => serde_yaml::to_string(value).map_err(|e| e.to_string()),
        _ => serde_json::to_string_pretty(value)
            .map(|json| json + "\n")
            .map_err(|e| e.to_string()),
    };
    rendered.map_err(|why| Error::Api {
        what: "render the output".into(),
        why,
    })
}

/// A duration the way kubectl prints ages (`k8s.io/apimachinery/pkg/util/duration`):
/// `45s`, `5m30s`, `42m`, `3h20m`, `30h`, `3d5h`, `45d`, `2y30d`.
pub fn age(d: Duration) -> String {
    let seconds = d.as_secs();
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        let dy = days % 365;
        return if dy == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{dy}d")
        };
    }
    format!("{years}y")
}

/// The signed distance between two instants as a kubectl age; negative distances count as 0.
pub fn age_between(
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> String {
    age((to - from).to_std().unwrap_or_default())
}

/// A setting's duration, exact and short: `1d`, `2h`, `1h30m`, `90s` → `1m30s`, `0s`.
pub fn exact_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if d.subsec_nanos() > 0 {
        return humantime::format_duration(d).to_string();
    }
    if secs == 0 {
        return "0s".into();
    }
    let mut text = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            text.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    text
}

/// Prints an error the way the plugin promises: no usage text, `error: failed to ...`, then a
/// hint. Broken pipes print nothing.
pub fn report(error: &Error, color: bool) {
    if error.is_broken_pipe() {
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{} {error}", paint("error:", Style::Bad, color));
    if let Some(hint) = error.hint() {
        let _ = writeln!(err, "{} {hint}", paint("hint:", Style::Dim, color));
    }
}

/// Words for a count: `1 org`, `3 orgs`.
pub fn plural(count: usize, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_match_kubectl() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (119, "119s"),
            (120, "2m"),
            (330, "5m30s"),
            (600, "10m"),
            (2 * 3600 + 59 * 60, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 20 * 60, "3h20m"),
            (30 * 3600, "30h"),
            (3 * 86_400 + 5 * 3600, "3d5h"),
            (7 * 86_400, "7d"),
            (45 * 86_400, "45d"),
            (2 * 365 * 86_400 + 30 * 86_400, "2y30d"),
            (9 * 365 * 86_400, "9y"),
        ];
        for (secs, want) in cases {
            assert_eq!(age(Duration::from_secs(secs)), want, "{secs}s");
        }
    }

    #[test]
    fn exact_durations_are_short_and_lossless() {
        assert_eq!(exact_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(exact_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(exact_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(exact_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(exact_duration(Duration::from_secs(0)), "0s");
        assert_eq!(exact_duration(Duration::from_secs(86_400 + 1)), "1d1s");
    }

    #[test]
    fn tables_look_like_kubectl_get() {
        let text = table(
            &["name", "state"],
            vec![
                vec!["acme".into(), Cell::styled("Active", Style::Good)],
                vec!["a-much-longer-org".into(), "Dormant".into()],
            ],
            false,
        );
        assert_eq!(
            text,
            "NAME                STATE\nacme                Active\na-much-longer-org   Dormant\n"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let coloured = table(
            &["state"],
            vec![vec![Cell::styled("Active", Style::Good)]],
            true,
        );
        assert!(coloured.contains("\x1b["), "{coloured:?}");
        let plain = table(
            &["state"],
            vec![vec![Cell::styled("Active", Style::Good)]],
            false,
        );
        assert!(!plain.contains('\x1b'));
        assert_eq!(paint("x", Style::Bad, false), "x");
        assert_eq!(paint("x", Style::Bad, true), "\x1b[31mx\x1b[0m");
    }

    #[test]
    fn documents_end_with_a_newline() -> Result<()> {
        let json = document(Format::Json, &serde_json::json!({"a": 1}))?;
        assert_eq!(json, "{\n  \"a\": 1\n}\n");
        let yaml = document(Format::Yaml, &serde_json::json!({"a": 1}))?;
        assert_eq!(yaml, "a: 1\n");
        Ok(())
    }
}
