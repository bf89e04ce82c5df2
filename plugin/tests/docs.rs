//! The docs are checked against what they describe, so they cannot drift silently:
//!
//! - every `kubectl s2z ...` command line shown in a fenced code block of README.md and
//!   docs/**/*.md parses with the plugin's own parser ([`Cli`]); a line whose documented output
//!   is clap's usage error (it shows `Usage: kubectl s2z ...`) must fail to parse, with exactly
//!   that error text. Inline code spans such as `kubectl s2z sweep --dry-run` are checked too,
//!   unless they only name a command (`kubectl s2z wake`) or are a synopsis (`[ORG...]`, `a|b`);
//! - every relative markdown link, `[text](path)`, `[text](path#anchor)` or `[text](#anchor)`,
//!   leads to a file or folder that exists, and its anchor to a heading of that file (GitHub's
//!   slugs: lowercase, spaces to `-`, punctuation other than `-` and `_` dropped, `-1`, `-2`
//!   for repeated headings).
//!
//! Commands that are kubectl's own (`kubectl get ...`) are not checked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use clap::error::ErrorKind;
use kubectl_s2z::Cli;

/// The repository root: the plugin crate's parent folder.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the plugin crate lives in a folder of the repository")
        .to_path_buf()
}

/// README.md and every `.md` file under docs/, sorted.
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let root = root();
    let mut files = vec![root.join("README.md")];
    walk(&root.join("docs"), &mut files);
    files.sort();
    files
}

/// A markdown file, split into the lines of its fenced code blocks and the lines of prose.
struct Doc {
    /// Shown in failures: the path relative to the repository root.
    name: String,
    path: PathBuf,
    /// Fenced code blocks: each a list of (1-based line number, line).
    blocks: Vec<Vec<(usize, String)>>,
    /// Prose: (1-based line number, line), with inline code spans removed.
    prose: Vec<(usize, String)>,
    /// Prose as written, inline code spans included.
    prose_with_code: Vec<(usize, String)>,
}

fn read_doc(path: &Path) -> Doc {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let name = path
        .strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string();
    let mut blocks = Vec::new();
    let mut prose = Vec::new();
    let mut prose_with_code = Vec::new();
    // The open fence: its character and length; a closing fence is at least as long.
    let mut fence: Option<(char, usize)> = None;
    let mut block = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = line.trim_start();
        let marker = trimmed.chars().next().filter(|c| *c == '`' || *c == '~');
        let run = marker.map_or(0, |c| trimmed.chars().take_while(|x| *x == c).count());
        match fence {
            Some((c, len)) => {
                if marker == Some(c) && run >= len && trimmed[run..].trim().is_empty() {
                    fence = None;
                    blocks.push(std::mem::take(&mut block));
                } else {
                    block.push((number, line.to_string()));
                }
            }
            None if run >= 3 => fence = marker.map(|c| (c, run)),
            None => {
                prose.push((number, without_code_spans(line)));
                prose_with_code.push((number, line.to_string()));
            }
        }
    }
    if fence.is_some() {
        blocks.push(block);
    }
    Doc {
        name,
        path: path.to_path_buf(),
        blocks,
        prose,
        prose_with_code,
    }
}

/// The line with its inline code spans (`` `...` ``) removed: links inside them are not links.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let run = rest[start..].chars().take_while(|c| *c == '`').count();
        let ticks = &rest[start..start + run];
        match rest[start + run..].find(ticks) {
            Some(end) => rest = &rest[start + run + end + run..],
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// Command lines
// ---------------------------------------------------------------------------------------------

/// The `kubectl s2z` command on a code line, if it shows one: without the shell prompt (`$ `),
/// leading `NAME=value` environment assignments, and anything after an unquoted `|`, `;`, `&`,
/// `>` or a `#` comment. A command substitution, `$(...)`, stands for one argument.
fn command_of(line: &str) -> Option<String> {
    let mut rest = line.trim_start();
    rest = rest.strip_prefix("$ ").unwrap_or(rest).trim_start();
    // `KUBECONFIG=restricted.kubeconfig kubectl s2z status`
    loop {
        let word = rest.split_whitespace().next()?;
        let is_assignment = word.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        });
        if !is_assignment {
            break;
        }
        rest = rest[word.len()..].trim_start();
    }
    if rest != "kubectl s2z" && !rest.starts_with("kubectl s2z ") {
        return None;
    }
    // Copy up to the first shell operator or comment outside quotes.
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '$' && chars.peek() == Some(&'(') => {
                // Skip to the matching `)`.
                let mut depth = 0;
                for c in chars.by_ref() {
                    match c {
                        '(' => depth += 1,
                        ')' if depth == 1 => break,
                        ')' => depth -= 1,
                        _ => {}
                    }
                }
                out.push_str("SUBSTITUTED");
                previous = ')';
                continue;
            }
            None if matches!(c, '|' | ';' | '&' | '>') => break,
            None if c == '#' && previous.is_whitespace() => break,
            None => {}
        }
        out.push(c);
        previous = c;
    }
    Some(out.trim_end().to_string())
}

/// The inline code spans of a prose line that show a `kubectl s2z` invocation: with at least one
/// argument after the subcommand's name (a bare `kubectl s2z wake` names the command, it does not
/// run it), and not a synopsis (`[ORG...]`, `--dormant|--active`, `set ...`).
fn inline_commands(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        let run = rest[start..].chars().take_while(|c| *c == '`').count();
        let ticks = &rest[start..start + run];
        let Some(end) = rest[start + run..].find(ticks) else {
            break;
        };
        let span = rest[start + run..start + run + end].trim();
        rest = &rest[start + run + end + run..];
        let Some(words) = span
            .strip_prefix("kubectl s2z ")
            .filter(|_| !span.contains(['[', '|', '<']) && !span.contains("..."))
            .and_then(|args| shell_words::split(args).ok())
        else {
            continue;
        };
        // Skip the subcommand path (`settings set`); keep the span if anything is left.
        let mut command = <Cli as clap::CommandFactory>::command();
        let mut words = words.iter().peekable();
        while let Some(sub) = words
            .peek()
            .and_then(|w| command.find_subcommand(w.as_str()).cloned())
        {
            command = sub;
            words.next();
        }
        if words.peek().is_some() {
            out.push(span.to_string());
        }
    }
    out
}

/// Whether an output line ends the output of the command above it: the next prompt, or the
/// exit-code line the docs print after each command.
fn ends_output(line: &str) -> bool {
    let line = line.trim();
    line.starts_with("$ ")
        || line.starts_with("[exit ")
        || line.starts_with("exit=")
        || line.starts_with("(exit ")
}

/// One documented command line and what the docs show it printing.
struct Shown {
    line: usize,
    command: String,
    /// The lines the docs show below it, up to the next prompt or exit-code line.
    output: Vec<String>,
}

fn commands(doc: &Doc) -> Vec<Shown> {
    let mut shown = Vec::new();
    for (number, line) in &doc.prose_with_code {
        for command in inline_commands(line) {
            shown.push(Shown {
                line: *number,
                command,
                output: Vec::new(),
            });
        }
    }
    for block in &doc.blocks {
        for (i, (number, line)) in block.iter().enumerate() {
            let Some(command) = command_of(line) else {
                continue;
            };
            let output = block[i + 1..]
                .iter()
                .map(|(_, l)| l.clone())
                .take_while(|l| !ends_output(l))
                .collect();
            shown.push(Shown {
                line: *number,
                command,
                output,
            });
        }
    }
    shown
}

/// Checks one command line; the problem, if any.
fn check_command(shown: &Shown) -> Option<String> {
    let words = match shell_words::split(&shown.command) {
        Ok(words) => words,
        Err(e) => return Some(format!("`{}`: cannot split it: {e}", shown.command)),
    };
    // "kubectl s2z" is the binary kubectl-s2z.
    let argv = std::iter::once("kubectl-s2z".to_string()).chain(words.into_iter().skip(2));
    let result = Cli::try_parse_from(argv);
    let usage_error_shown = shown
        .output
        .iter()
        .any(|l| l.trim_start().starts_with("Usage: kubectl s2z"));
    match result {
        Ok(_) if usage_error_shown => Some(format!(
            "`{}` parses, but the docs show it failing with a usage error",
            shown.command
        )),
        Ok(_) => None,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => None,
        Err(e) if usage_error_shown => {
            let actual = e.render().to_string();
            let documented = shown.output.join("\n");
            (actual.trim() != documented.trim()).then(|| {
                format!(
                    "`{}`: the documented usage error differs from clap's.\n--- documented\n{}\n--- clap\n{}",
                    shown.command,
                    documented.trim(),
                    actual.trim()
                )
            })
        }
        Err(e) => Some(format!(
            "`{}` does not parse:\n{}",
            shown.command,
            e.render().to_string().trim_end()
        )),
    }
}

#[test]
fn every_documented_command_parses() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in markdown_files() {
        let doc = read_doc(&path);
        for shown in commands(&doc) {
            checked += 1;
            if let Some(problem) = check_command(&shown) {
                problems.push(format!("{}:{}: {problem}", doc.name, shown.line));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {checked} documented `kubectl s2z` command lines are wrong (the CLI is the truth: fix the docs):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
    // The docs show dozens; finding none means this test no longer sees them.
    assert!(
        checked >= 30,
        "only {checked} `kubectl s2z` command lines found"
    );
}

// ---------------------------------------------------------------------------------------------
// Links
// ---------------------------------------------------------------------------------------------

/// GitHub's anchor for a heading's text.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// `[text](target)` becomes `text`, as in a heading's rendered text.
fn link_texts(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some((label, _, after)) = next_link(rest) {
        // The label starts just after its `[`.
        out.push_str(&rest[..label.0 - 1]);
        out.push_str(&rest[label.0..label.1]);
        rest = &rest[after..];
    }
    out.push_str(rest);
    out
}

/// The next `[label](target)` in `text`: the byte ranges of the label and the target, and the
/// offset just after the link.
#[allow(clippy::type_complexity)]
fn next_link(text: &str) -> Option<((usize, usize), (usize, usize), usize)> {
    let mut from = 0;
    while let Some(open) = text[from..].find('[').map(|i| from + i) {
        // The matching `]`, allowing nested brackets in the label.
        let mut depth = 0;
        let mut close = None;
        for (i, c) in text[open..].char_indices() {
            match c {
                '[' => depth += 1,
                ']' => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(open + i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let close = close?;
        if text[close + 1..].starts_with('(') {
            let start = close + 2;
            let mut depth = 1;
            for (i, c) in text[start..].char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            let end = start + i;
                            return Some(((open + 1, close), (start, end), end + 1));
                        }
                    }
                    _ => {}
                }
            }
            return None;
        }
        from = open + 1;
    }
    None
}

/// The anchors of a markdown file's headings (outside code blocks).
fn anchors(doc: &Doc) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, line) in &doc.prose_with_code {
        // Code spans stay: their backticks are dropped as punctuation.
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let text = line[hashes..].trim().trim_end_matches('#').trim();
        let base = slug(&link_texts(text));
        let count = seen.entry(base.clone()).or_insert(0);
        out.push(if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    out
}

/// The relative link targets of a doc: (line, target), inline links and reference definitions.
fn links(doc: &Doc) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (number, line) in &doc.prose {
        let mut rest = line.as_str();
        while let Some((_, target, after)) = next_link(rest) {
            out.push((*number, rest[target.0..target.1].to_string()));
            rest = &rest[after..];
        }
        // `[label]: target`
        let trimmed = line.trim_start();
        if trimmed.starts_with('[')
            && let Some((_, target)) = trimmed.split_once("]: ")
        {
            out.push((*number, target.to_string()));
        }
    }
    out.into_iter()
        .map(|(n, target)| {
            // Drop an optional title: `(path "title")`, and `<...>` around the path.
            let target = target.split_whitespace().next().unwrap_or("").to_string();
            let target = target
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string();
            (n, target)
        })
        .filter(|(_, target)| {
            !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:")
        })
        .collect()
}

#[test]
fn every_relative_link_resolves() {
    let docs: Vec<Doc> = markdown_files().iter().map(|p| read_doc(p)).collect();
    let mut anchor_cache: HashMap<PathBuf, Vec<String>> = HashMap::new();
    let mut problems = Vec::new();
    let mut checked = 0;
    for doc in &docs {
        for (line, target) in links(doc) {
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                doc.path.clone()
            } else {
                doc.path
                    .parent()
                    .expect("a file has a folder")
                    .join(path.trim_end_matches('/'))
            };
            if !file.exists() {
                problems.push(format!(
                    "{}:{line}: link `{target}`: no such file {}",
                    doc.name,
                    file.strip_prefix(root()).unwrap_or(&file).display()
                ));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if file.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let known = anchor_cache
                .entry(file.clone())
                .or_insert_with(|| anchors(&read_doc(&file)));
            if !known.iter().any(|a| a == anchor) {
                problems.push(format!(
                    "{}:{line}: link `{target}`: no heading with anchor #{anchor} in {} (its anchors: {})",
                    doc.name,
                    file.strip_prefix(root()).unwrap_or(&file).display(),
                    known.join(", ")
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {checked} relative links are broken:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(checked >= 20, "only {checked} relative links found");
}

#[test]
fn the_helpers_do_what_they_say() {
    assert_eq!(
        command_of("$ kubectl s2z defrag n1 -o json --yes | jq ..."),
        Some("kubectl s2z defrag n1 -o json --yes".into())
    );
    assert_eq!(
        command_of("KUBECONFIG=r.kubeconfig kubectl s2z status   # as a viewer"),
        Some("kubectl s2z status".into())
    );
    assert_eq!(
        command_of("kubectl s2z status -l 'tier in (a,b)'"),
        Some("kubectl s2z status -l 'tier in (a,b)'".into())
    );
    assert_eq!(
        command_of("kubectl s2z wake $(kubectl get orgs -o name | cut -d/ -f2)   # every org"),
        Some("kubectl s2z wake SUBSTITUTED".into())
    );
    assert_eq!(command_of("$ kubectl get orgs"), None);
    assert_eq!(
        inline_commands(
            "`kubectl s2z wake` or `kubectl s2z wake --all`, `kubectl s2z settings set`, \
             `kubectl s2z status [ORG...]`, `kubectl s2z defrag NODE --yes`"
        ),
        vec!["kubectl s2z wake --all", "kubectl s2z defrag NODE --yes"]
    );
    assert_eq!(command_of("kubectl-s2z completion bash"), None);
    assert_eq!(
        slug("Metrics (prefix `s2z_webhook_`)"),
        "metrics-prefix-s2z_webhook_"
    );
    assert_eq!(
        slug("Real Knative Serving (`up --knative`)"),
        "real-knative-serving-up---knative"
    );
    assert_eq!(slug("What `make demo` shows"), "what-make-demo-shows");
    assert_eq!(
        link_texts("See [the plane](local-plane.md#x) now"),
        "See the plane now"
    );
    assert_eq!(without_code_spans("a `[x](y)` b [c](d)"), "a  b [c](d)");
}
