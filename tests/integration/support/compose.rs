//! Reading a compose file without Docker: the subset of YAML `examples/docker-compose.yml` is
//! written in (block mappings and sequences, double-quoted and plain scalars, flow sequences
//! of scalars, `|` block scalars, whole-line comments), and compose's `${VAR:?message}` /
//! `${VAR:-default}` interpolation. Anything outside the subset panics, so the example cannot
//! drift into YAML this reader would misread.

use std::collections::HashMap;

#[derive(Debug, Clone)]
pub enum Node {
    Scalar(String),
    Map(Vec<(String, Node)>),
    List(Vec<Node>),
}

impl Node {
    /// The value at `path` (mapping keys), panicking with the path when absent.
    pub fn at(&self, path: &[&str]) -> &Node {
        path.iter().fold(self, |node, key| match node {
            Node::Map(pairs) => {
                &pairs
                    .iter()
                    .find(|(k, _)| k == key)
                    .unwrap_or_else(|| panic!("no {key:?} in the compose file ({path:?})"))
                    .1
            }
            other => panic!("{key:?}: not a mapping: {other:?}"),
        })
    }

    pub fn scalar(&self) -> &str {
        match self {
            Node::Scalar(text) => text,
            other => panic!("not a scalar: {other:?}"),
        }
    }

    pub fn scalars(&self) -> Vec<String> {
        match self {
            Node::List(items) => items.iter().map(|item| item.scalar().to_owned()).collect(),
            other => panic!("not a list: {other:?}"),
        }
    }

    /// A mapping of scalars (`environment:`), interpolated with `variables`.
    pub fn environment(&self, variables: &HashMap<&str, String>) -> Vec<(String, String)> {
        match self {
            Node::Map(pairs) => pairs.iter().map(|(k, v)| (k.clone(), interpolate(v.scalar(), variables))).collect(),
            other => panic!("not a mapping: {other:?}"),
        }
    }
}

/// Parses the compose file's text.
pub fn parse(text: &str) -> Node {
    let lines: Vec<&str> = text.lines().collect();
    let mut at = 0;
    let node = block(&lines, &mut at, 0);
    assert!(next(&lines, at).is_none(), "unparsed line {}: {:?}", at + 1, lines[at]);
    node
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// The index of the next line that is neither blank nor a comment.
fn next(lines: &[&str], mut at: usize) -> Option<usize> {
    while at < lines.len() {
        let text = lines[at].trim();
        if !text.is_empty() && !text.starts_with('#') {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// The block starting at the next line, whose indentation must be at least `min`.
fn block(lines: &[&str], at: &mut usize, min: usize) -> Node {
    let Some(first) = next(lines, *at) else { return Node::Map(Vec::new()) };
    let level = indent(lines[first]);
    if level < min {
        return Node::Map(Vec::new());
    }
    if lines[first].trim_start().starts_with("- ") { list(lines, at, level) } else { map(lines, at, level) }
}

fn map(lines: &[&str], at: &mut usize, level: usize) -> Node {
    let mut pairs = Vec::new();
    while let Some(line) = next(lines, *at) {
        if indent(lines[line]) < level {
            break;
        }
        assert_eq!(indent(lines[line]), level, "line {}: unexpected indentation", line + 1);
        let text = lines[line].trim();
        *at = line + 1;
        let (key, rest) = pair(text, line);
        let value = match rest {
            "" => block(lines, at, level + 1),
            "|" => literal(lines, at, level),
            rest => scalar(rest),
        };
        pairs.push((key, value));
    }
    Node::Map(pairs)
}

fn list(lines: &[&str], at: &mut usize, level: usize) -> Node {
    let mut items = Vec::new();
    while let Some(line) = next(lines, *at) {
        if indent(lines[line]) != level || !lines[line].trim_start().starts_with("- ") {
            break;
        }
        let item = &lines[line].trim_start()[2..];
        *at = line + 1;
        if item.starts_with('"') || !item.contains(": ") {
            items.push(scalar(item));
            continue;
        }
        // A mapping item: its first pair on the dash's line, the rest indented under it.
        let (key, rest) = pair(item, line);
        let mut pairs = vec![(key, scalar(rest))];
        if let Node::Map(more) = block(lines, at, level + 2) {
            pairs.extend(more);
        }
        items.push(Node::Map(pairs));
    }
    Node::List(items)
}

fn pair(text: &str, line: usize) -> (String, &str) {
    let (key, rest) = match text.split_once(": ") {
        Some((key, rest)) => (key, rest.trim()),
        None => (text.strip_suffix(':').unwrap_or_else(|| panic!("line {}: not `key: value`", line + 1)), ""),
    };
    assert!(!key.contains(['"', '\'', '{', '[']), "line {}: keys are plain", line + 1);
    (key.to_owned(), rest)
}

/// A `|` block scalar: the lines indented deeper than `level`, blank lines kept.
fn literal(lines: &[&str], at: &mut usize, level: usize) -> Node {
    let mut text = String::new();
    let mut own = None;
    while *at < lines.len() {
        let line = lines[*at];
        if !line.trim().is_empty() {
            if indent(line) <= level {
                break;
            }
            let own = *own.get_or_insert(indent(line));
            text.push_str(&line[own.min(indent(line))..]);
        }
        text.push('\n');
        *at += 1;
    }
    Node::Scalar(text.trim_end().to_owned() + "\n")
}

fn scalar(text: &str) -> Node {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix('[') {
        let inner = inner.strip_suffix(']').expect("a flow sequence on one line");
        return Node::List(inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(scalar).collect());
    }
    if let Some(inner) = text.strip_prefix('"') {
        let inner = inner.strip_suffix('"').expect("a double-quoted scalar on one line");
        assert!(!inner.contains('\\'), "no escapes in the example");
        return Node::Scalar(inner.to_owned());
    }
    assert!(!text.starts_with(['\'', '{', '&', '*', '!', '>']), "outside the subset: {text}");
    Node::Scalar(text.to_owned())
}

/// Compose's interpolation: `${VAR}`, `${VAR:?message}` (required) and `${VAR:-default}`.
pub fn interpolate(text: &str, variables: &HashMap<&str, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        // The expression ends at the brace that closes it (a message may hold `$(…)`).
        let mut depth = 1;
        let end = after
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .expect("a closed ${…}")
            .0;
        let expression = &after[..end];
        let (name, fallback) = match expression.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (expression.split_once(":?").map_or(expression, |(name, _)| name), None),
        };
        match (variables.get(name), fallback) {
            (Some(value), _) => out.push_str(value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => panic!("compose would refuse to start: {name} is not set"),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}
