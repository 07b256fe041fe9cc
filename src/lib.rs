//! tokenrelay: a sidecar that serves Azure managed-identity token endpoints to the other
//! containers of a pod (or to a laptop), backed by a cached upstream credential chain.
//!
//! # Layout
//!
//! - [`cli`]: the command line (clap); [`app`] runs its subcommands.
//! - [`config`]: figment layering and validation into a typed [`config::Config`].
//! - [`server`]: the HTTP surface (both managed-identity flavours, health, dev discovery).
//! - [`broker`]: identities, the token cache, refresh and prefetch. Knows nothing of HTTP.
//! - [`credential`]: how tokens are obtained upstream. Knows nothing of caching.
//! - [`inbound`]: validation of the user tokens callers forward (signature, issuer, audience).
//! - [`store`]: the optional persistent cache (encrypted file, key in a file or the keyring).
//! - [`shared`]: the optional shared token cache on Valkey/Redis (encrypted entries, leases).
//! - [`dev_issuer`]: the development issuer's key, signing and discovery documents.
//! - [`token`], [`secret`], [`clock`], [`telemetry`], [`trust`], [`aadsts`], [`id`],
//!   [`backoff`]: small shared pieces.
//!
//! Dependencies point one way, down this list of layers (a module uses only modules of lower
//! layers; `tests::dependencies_point_one_way` checks it on every `crate::` path in `src/`):
//!
//! 1. `app`
//! 2. `server`, `cli`
//! 3. `broker`, `inbound`
//! 4. `credential`, `shared`
//! 5. `store`
//! 6. `dev_issuer`, `telemetry`
//! 7. `config`
//! 8. `token`, `trust`
//! 9. `secret`, `clock`, `aadsts`, `id`, `backoff`
//!
//! One deliberate exception, which the check cannot see because it is a value and not a
//! path: the broker's cache entry carries the server's pre-rendered body members, opaque to
//! the broker (docs/architecture.md#dependency-direction).

// Proving the token path's boxed future `Send` walks tokio's and mio's socket types, which on
// Windows nest deeper than the default limit of 128 allows.
#![recursion_limit = "256"]

pub mod aadsts;
pub mod app;
pub mod backoff;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credential;
pub mod dev_issuer;
pub mod id;
pub mod inbound;
pub mod secret;
pub mod server;
pub mod shared;
pub mod store;
pub mod telemetry;
pub mod token;
pub mod trust;

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// The layer of every top-level module, top first: a module may use only modules of a
    /// later (lower) layer, which rules out every cycle. `app` wires everything; `server`
    /// talks to the broker; the broker calls credentials and the store, neither of which
    /// calls back; configuration and the shared pieces sit at the bottom.
    const LAYERS: &[&[&str]] = &[
        &["app"],
        &["server", "cli"],
        &["broker", "inbound"],
        &["credential", "shared"],
        &["store"],
        &["dev_issuer", "telemetry"],
        &["config"],
        &["token", "trust"],
        &["secret", "clock", "aadsts", "id", "backoff"],
    ];

    fn layer(module: &str) -> Option<usize> {
        LAYERS.iter().position(|layer| layer.contains(&module))
    }

    /// The top-level modules named by `crate::` paths in `code` (comments skipped), with
    /// `use crate::{a, b::c}` groups opened.
    fn referenced(code: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for line in code.lines().filter(|line| !line.trim_start().starts_with("//")) {
            let mut rest = line;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                if let Some(group) = rest.strip_prefix('{') {
                    let mut depth = 0usize;
                    let mut start = true;
                    for (i, c) in group.char_indices() {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => break,
                            '}' => depth -= 1,
                            ',' if depth == 0 => start = true,
                            c if start && (c.is_ascii_alphabetic() || c == '_') => {
                                let name: String =
                                    group[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                                found.insert(name);
                                start = false;
                            }
                            _ => {}
                        }
                    }
                } else {
                    let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    found.insert(name);
                }
            }
        }
        found
    }

    /// Every top-level module's `crate::` dependencies, read from the files under `src/`.
    fn dependencies(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
        fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, files);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        let mut files = Vec::new();
        walk(src, &mut files);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in files {
            let relative = file.strip_prefix(src).unwrap();
            let first = relative.components().next().unwrap().as_os_str().to_string_lossy();
            let module = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
            if module == "lib" || module == "main" {
                continue;
            }
            let code = std::fs::read_to_string(&file).unwrap();
            let used: Vec<String> = referenced(&code).into_iter().filter(|used| *used != module).collect();
            graph.entry(module).or_default().extend(used);
        }
        graph
    }

    #[test]
    fn the_reference_parser_sees_paths_and_groups() {
        let code = "use crate::broker::Broker;\n// crate::app in a comment\nlet x = crate::clock::now();\n\
                    use crate::{config::{self, Config}, secret::Secret};";
        let found: Vec<String> = referenced(code).into_iter().collect();
        assert_eq!(found, ["broker", "clock", "config", "secret"]);
    }

    #[test]
    fn dependencies_point_one_way() {
        let graph = dependencies(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
        assert!(graph.contains_key("server") && graph.contains_key("broker"), "{graph:?}");
        let mut wrong = Vec::new();
        for (module, used) in &graph {
            let Some(from) = layer(module) else {
                wrong.push(format!("{module} is not in LAYERS: give it a layer"));
                continue;
            };
            for target in used {
                match layer(target) {
                    Some(to) if to > from => {}
                    Some(_) => wrong.push(format!("{module} uses {target}, which is not below it")),
                    None => wrong.push(format!("{module} uses {target}, which is not in LAYERS")),
                }
            }
        }
        assert!(wrong.is_empty(), "dependencies against the layering of src/lib.rs:\n{}", wrong.join("\n"));
    }
}
