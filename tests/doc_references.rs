//! Repository checks on the documentation: every file a document, comment, template or script
//! cites exists, every `#section` it names is a heading of that Markdown file, and README.md
//! stays short enough to read on a first visit (CONTRIBUTING.md, "Documentation rules").
//!
//! What counts as a citation:
//! - a Markdown link `[text](target)` to anything but a URL: in Markdown resolved from the
//!   citing file's folder, as a renderer does; in other files as the paths below;
//! - a path that starts with one of the repository's top-level folders (`docs/x.md`,
//!   `src/server/wire.rs`, `tests/integration/support/`), and a bare Markdown file name
//!   (`protocols.md`): resolved from the citing file's folder or any folder above it, up to
//!   the repository root. A folder and a name without an extension (`deploy/NAME`) is too
//!   ambiguous to check.
//!
//! A path followed by `<`, `*`, `{`, `$` or `…` is a pattern (`fuzz/work/<target>`), not a
//! citation. Paths that only exist once a tool has run (build output, virtualenvs, fuzzing
//! scratch folders) are listed in [`GENERATED`].

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Component, Path, PathBuf};

/// The longest README.md may grow: its first screens are what a newcomer reads.
const README_MAX_LINES: usize = 250;

/// What is scanned: folders (recursively) and single files, relative to the root.
const SCANNED: &[&str] = &[
    "src",
    "tests",
    "benches",
    "bench",
    "fuzz",
    "helm",
    "deploy",
    "docs",
    "scripts",
    ".ci",
    "README.md",
    "CONTRIBUTING.md",
    "Dockerfile",
    "Cargo.toml",
    "deny.toml",
];

/// Folders never scanned: build output, virtualenvs, caches, and fuzzing data (binary).
const SKIPPED_DIRS: &[&str] = &[
    ".git",
    "target",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    "node_modules",
    "fuzz/corpus",
    "fuzz/work",
    "fuzz/artifacts",
    "fuzz/logs",
    "fuzz/coverage",
    ".ci/.cache",
    ".ci/.venv-deploy",
    ".ci/.venv-lint",
];

/// Files never scanned: this one, whose tests cite missing files on purpose.
const SKIPPED_FILES: &[&str] = &["tests/doc_references.rs"];

/// Extensions of the text files scanned; files without an extension are scanned too
/// (`Dockerfile`, the scripts in `.ci/` and `scripts/`).
const TEXT_EXTENSIONS: &[&str] = &["rs", "md", "toml", "yaml", "yml", "tpl", "txt", "sh", "py", "json", "lua", "dict"];

/// Top-level folders whose mentions are citations.
const CITED_FOLDERS: &[&str] =
    &["src/", "tests/", "docs/", "deploy/", "helm/", "bench/", "benches/", "fuzz/", "scripts/", ".ci/", "examples/"];

/// Paths that tools create: citing them is fine although a fresh clone lacks them.
const GENERATED: &[&str] = &[
    "bench/Cargo.lock",
    "bench/target",
    "fuzz/target",
    "fuzz/work",
    "fuzz/logs",
    "fuzz/artifacts",
    "fuzz/coverage",
    ".ci/.cache",
    ".ci/.venv-deploy",
    ".ci/.venv-lint",
];

fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_cited_file_and_section_exists() {
    let root = repository_root();
    let problems = check_references(&root);
    assert!(
        problems.is_empty(),
        "{} citation(s) of files or sections that do not exist:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_readme_stays_short() {
    let readme = fs::read_to_string(repository_root().join("README.md")).expect("README.md is readable");
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines; keep it within {README_MAX_LINES} and move details to docs/"
    );
}

/// Every problem found under `root`, as `file:line: what`.
fn check_references(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in SCANNED {
        collect(root, &root.join(entry), &mut files);
    }
    let mut anchors = Anchors::default();
    let mut problems = Vec::new();
    for file in &files {
        let Ok(text) = fs::read_to_string(file) else { continue };
        let relative = file.strip_prefix(root).unwrap_or(file).to_string_lossy().replace('\\', "/");
        for citation in citations(&text, file.extension().is_some_and(|e| e == "md")) {
            if let Some(problem) = check(root, file, &citation, &mut anchors) {
                problems.push(format!("{relative}:{}: {problem}", citation.line));
            }
        }
    }
    problems.sort();
    problems
}

/// Collects the text files under `path` (or `path` itself), skipping [`SKIPPED_DIRS`].
fn collect(root: &Path, path: &Path, files: &mut Vec<PathBuf>) {
    let relative = path.strip_prefix(root).unwrap_or(path).to_string_lossy().replace('\\', "/");
    if path.is_dir() {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if SKIPPED_DIRS.iter().any(|s| *s == relative || *s == name) {
            return;
        }
        let Ok(entries) = fs::read_dir(path) else { return };
        let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        children.sort();
        for child in children {
            collect(root, &child, files);
        }
    } else if path.is_file() && !SKIPPED_FILES.contains(&relative.as_str()) {
        let scanned = match path.extension() {
            Some(extension) => TEXT_EXTENSIONS.iter().any(|e| *e == extension.to_string_lossy()),
            None => true,
        };
        if scanned {
            files.push(path.to_path_buf());
        }
    }
}

/// One reference found in a file.
#[derive(Debug, PartialEq)]
struct Citation {
    line: usize,
    kind: Kind,
    /// The path as written, without its `#section`.
    path: String,
    /// The section after `#`, if any.
    section: Option<String>,
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum Kind {
    /// `[text](target)`.
    Link,
    /// `docs/x.md`, `src/server/wire.rs`.
    FolderPath,
    /// `protocols.md`.
    MarkdownName,
}

/// Every citation in `text`. In Markdown, fenced code blocks are skipped for links (code is
/// not rendered as links) but not for paths (a command in a code block cites its script).
fn citations(text: &str, markdown: bool) -> Vec<Citation> {
    let mut found = Vec::new();
    let mut in_fence = false;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if markdown && line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if !(markdown && in_fence) {
            links(line, markdown, number, &mut found);
        }
        mentions(line, number, &mut found);
    }
    found
}

/// Markdown links in one line. Outside Markdown only targets that look like file paths count:
/// rustdoc's intra-doc links (`[Foo](crate::x)`) name items, not files.
fn links(line: &str, markdown: bool, number: usize, found: &mut Vec<Citation>) {
    let mut rest = line;
    while let Some(start) = rest.find("](") {
        let after = &rest[start + 2..];
        let end = after.find(')').unwrap_or(after.len());
        let target = after[..end].trim();
        rest = &after[end.min(after.len())..];
        if target.is_empty()
            || target.contains("://")
            || target.starts_with("mailto:")
            || target.contains(char::is_whitespace)
            || target.contains("::")
        {
            continue;
        }
        let (path, section) = split_section(target);
        let looks_like_a_file = path.contains('/') || path.rsplit_once('.').is_some_and(|(_, ext)| ext.len() <= 4);
        if !markdown && !looks_like_a_file {
            continue;
        }
        if path.is_empty() && !markdown {
            continue;
        }
        found.push(Citation { line: number, kind: Kind::Link, path: path.to_owned(), section });
    }
}

/// Paths under the top-level folders, and bare Markdown file names, in one line.
fn mentions(line: &str, number: usize, found: &mut Vec<Citation>) {
    let path_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'/' | b'-');
    let bytes = line.as_bytes();
    let mut resume = 0;
    for (i, _) in line.char_indices() {
        if i < resume {
            continue;
        }
        // Inside a word or a path, after `$` (a shell variable), or the target of a Markdown
        // link, which `links` reports.
        if i > 0 && (path_char(bytes[i - 1]) || bytes[i - 1] == b'$' || line[..i].ends_with("](")) {
            continue;
        }
        let tail = &line[i..];
        let mut start_of_folder = 0;
        while tail[start_of_folder..].starts_with("../") {
            start_of_folder += 3;
        }
        let cited_folder = CITED_FOLDERS.iter().any(|f| tail[start_of_folder..].starts_with(f));
        // Path characters are ASCII, so `end` is a character boundary.
        let end = tail.bytes().position(|c| !(path_char(c) || c == b'#')).unwrap_or(tail.len());
        if end == 0 {
            continue;
        }
        resume = i + end;
        let token = tail[..end].trim_end_matches(['.', '-', '#', ',']);
        let pattern_follows =
            tail[token.len()..].trim_start_matches(['.', '-', '#', '/', ',']).starts_with(['<', '*', '{', '$', '…']);
        // The text of a Markdown link (`[protocols.md](docs/protocols.md)`): the target counts.
        let link_text = tail[token.len()..].trim_start_matches('`').starts_with("](");
        if pattern_follows || link_text || token.is_empty() {
            continue;
        }
        let (path, section) = split_section(token);
        if cited_folder {
            // One folder and a name without an extension is too ambiguous to check: kubectl
            // writes `deploy/NAME` for a Deployment, cargo's layout has `src/bin`.
            let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
            if path.trim_start_matches("../").matches('/').count() < 2 && !path.ends_with('/') && !last.contains('.') {
                continue;
            }
            let path = path.trim_end_matches('/').to_owned();
            found.push(Citation { line: number, kind: Kind::FolderPath, path, section });
        } else if path.ends_with(".md") && !path.contains('/') && path.len() > 3 {
            found.push(Citation { line: number, kind: Kind::MarkdownName, path: path.to_owned(), section });
        }
    }
}

fn split_section(target: &str) -> (&str, Option<String>) {
    match target.split_once('#') {
        Some((path, section)) if !section.is_empty() => (path, Some(section.to_owned())),
        Some((path, _)) => (path, None),
        None => (target, None),
    }
}

/// Whether `citation` (found in `file`) resolves; the problem if not.
fn check(root: &Path, file: &Path, citation: &Citation, anchors: &mut Anchors) -> Option<String> {
    let folder = file.parent().unwrap_or(root);
    // The citing file's folder and every folder above it, up to the root: a file in
    // `fuzz/fuzz_targets/` may cite `examples/seeds.rs` of its own crate.
    let from_here_up =
        || folder.ancestors().take_while(|a| a.starts_with(root)).map(|a| a.join(&citation.path)).collect::<Vec<_>>();
    let candidates: Vec<PathBuf> = if citation.path.is_empty() {
        vec![file.to_path_buf()]
    } else {
        match citation.kind {
            Kind::Link if file.extension().is_some_and(|e| e == "md") => vec![folder.join(&citation.path)],
            Kind::Link | Kind::MarkdownName | Kind::FolderPath => from_here_up(),
        }
    };
    let generated = |path: &Path| {
        let relative = normalise(path.strip_prefix(root).unwrap_or(path));
        GENERATED.iter().any(|g| relative == *g || relative.starts_with(&format!("{g}/")))
    };
    let Some(target) = candidates.iter().find(|c| c.exists()) else {
        if candidates.iter().any(|c| generated(c)) {
            return None;
        }
        return Some(format!("`{}` does not exist", citation.path));
    };
    let section = citation.section.as_deref()?;
    if target.extension().is_none_or(|e| e != "md") {
        return None;
    }
    if anchors.of(target).contains(section) {
        None
    } else {
        let shown = if citation.path.is_empty() { String::new() } else { citation.path.clone() };
        Some(format!(
            "`{shown}#{section}`: no such section in {}",
            normalise(target.strip_prefix(root).unwrap_or(target))
        ))
    }
}

/// `a/./b/../c` as `a/c`, with forward slashes.
fn normalise(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

/// The section anchors of Markdown files, read once each.
#[derive(Default)]
struct Anchors(HashMap<PathBuf, BTreeSet<String>>);

impl Anchors {
    fn of(&mut self, file: &Path) -> &BTreeSet<String> {
        self.0.entry(file.to_path_buf()).or_insert_with(|| headings(&fs::read_to_string(file).unwrap_or_default()))
    }
}

/// The anchors GitHub gives the headings of a Markdown text: the heading's text in lower
/// case, without anything but letters, digits, `_`, `-` and spaces, spaces turned into `-`;
/// a repeated anchor gets `-1`, `-2`, … appended.
fn headings(text: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let hashes = line.bytes().take_while(|b| *b == b'#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let slug = slug(line[hashes..].trim());
        let count = seen.entry(slug.clone()).or_insert(0);
        let anchor = if *count == 0 { slug.clone() } else { format!("{slug}-{count}") };
        *count += 1;
        anchors.insert(anchor);
    }
    anchors
}

fn slug(heading: &str) -> String {
    // A link in a heading shows its text only.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|c| open + c) else { break };
        let Some(end) = rest[close..].find(')').map(|e| close + e) else { break };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..close]);
        rest = &rest[end + 1..];
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn anchors_follow_githubs_rules() {
    let text = "# Title\n## `client_secret`\n## Development mode (`--dev`)\n\
                ## Apps hard-wired to 169.254.169.254 (privileged, opt-in)\n\
                ```sh\n# not a heading\n```\n## Title\n#nospace\n## [Linked](x.md) text\n";
    let anchors: Vec<String> = headings(text).into_iter().collect();
    assert_eq!(
        anchors,
        [
            "apps-hard-wired-to-169254169254-privileged-opt-in",
            "client_secret",
            "development-mode---dev",
            "linked-text",
            "title",
            "title-1",
        ]
    );
}

#[test]
fn citations_are_found_in_prose_code_and_links() {
    let found = citations(
        "see [the guide](../docs/guide.md#setup) and docs/x.md#part, protocols.md 2.5\n\
         `fuzz/work/<target>` and deploy/*.yaml are patterns; [Foo](crate::foo) is an item\n\
         ```sh\nbash bench/load.sh   # [not](a-link.md)\n```\n",
        true,
    );
    let summary: Vec<(usize, Kind, &str, Option<&str>)> =
        found.iter().map(|c| (c.line, c.kind, c.path.as_str(), c.section.as_deref())).collect();
    assert_eq!(
        summary,
        [
            (1, Kind::Link, "../docs/guide.md", Some("setup")),
            (1, Kind::FolderPath, "docs/x.md", Some("part")),
            (1, Kind::MarkdownName, "protocols.md", None),
            (4, Kind::FolderPath, "bench/load.sh", None),
        ]
    );
    let rust = citations("/// A [`Thing`](crate::thing), see [`tokens`] and design.md section 4.\n", false);
    assert_eq!(rust.len(), 1);
    assert_eq!((rust[0].kind, rust[0].path.as_str()), (Kind::MarkdownName, "design.md"));
}

#[test]
fn missing_files_and_sections_are_reported_and_existing_ones_are_not() {
    let root = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = root.path().join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    };
    write("docs/guide.md", "# Guide\n## Setup\nSee [the API](api.md#errors) and [home](../README.md).\n");
    write("docs/api.md", "# API\n## Status codes\n");
    write("README.md", "[Guide](docs/guide.md#setup) [gone](docs/gone.md)\n");
    write("src/lib.rs", "//! Follows docs/guide.md#setup and docs/guide.md#nothing (design.md section 5).\n");
    write("scripts/build", "cp Cargo.lock bench/Cargo.lock   # generated, fine\n");
    let problems = check_references(root.path());
    assert_eq!(
        problems,
        [
            "README.md:1: `docs/gone.md` does not exist",
            "docs/guide.md:3: `api.md#errors`: no such section in docs/api.md",
            "src/lib.rs:1: `design.md` does not exist",
            "src/lib.rs:1: `docs/guide.md#nothing`: no such section in docs/guide.md",
        ]
    );
}
