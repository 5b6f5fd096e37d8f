//! `cargo xtask tidy`: the checks that keep `docs/ARCHITECTURE.md` and the public docs true,
//! run by CI. It reads `cargo tree`, `cargo metadata` and the sources and builds nothing.
//!
//! - Layers: each crate's dependencies follow ARCHITECTURE.md's "which crate may depend on
//!   which" table and its invariants ([`layers`], [`PEERS`], [`HTTP_SERVER`],
//!   [`BINARY`], [`NOT_IN_XTASK`]), and a build with some features only leaves out what they
//!   leave out ([`subsets`]: pool-admin with one backend builds no driver of the other).
//! - Code map: every source file is named in ARCHITECTURE.md's code map, and every file the
//!   code map names exists ([`code_map`]).
//! - Words: rustdoc comments and the Markdown docs speak to a user of the crates, not of the
//!   project's history: its original brief or its issues ([`history_words`]).
//! - Publishing: the crates that may be published carry what a registry shows and needs, and
//!   the others may not be published ([`publishing`]).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};

/// The directories whose `.rs` files the code map must name.
const MAPPED: [&str; 8] = [
    "crates/*/src",
    "harness/src",
    "tests/it",
    "benches/src",
    "soak/src",
    "examples/src",
    "examples/examples",
    "xtask/src",
];

/// The top-level directories that hold the workspace's sources.
const TOPS: [&str; 7] = ["crates", "harness", "tests", "benches", "soak", "examples", "xtask"];

/// pool-core's runtime crates, which every crate above it may use too.
const RUNTIME: &[&str] = &["tokio", "thiserror", "tracing", "async-trait", "fastrand"];
/// What PostgreSQL brings: our backend, its driver's crates, and the peers' driver.
const POSTGRES: &[&str] =
    &["pool-postgres", "sqlx", "sqlx-core", "sqlx-postgres", "tokio-postgres"];
/// What Redis brings: our backend, its client, and the peers' client.
const REDIS: &[&str] = &["pool-redis", "fred", "redis"];
/// The exporters: our metrics crate and the libraries it exports through.
const EXPORTERS: &[&str] = &["pool-metrics", "prometheus", "opentelemetry", "opentelemetry_sdk"];
/// HTTP, server or client.
const HTTP: &[&str] = &["axum", "hyper", "hyper-util", "reqwest"];
/// The HTTP server stack, which only pool-admin may name as a dependency.
const HTTP_SERVER: &[&str] = &["axum", "hyper", "hyper-util"];
/// What `xtask` never builds: the drivers and HTTP, which the tasks that need them (`soak`,
/// `bench`, `demo`) run as other packages through cargo.
const NOT_IN_XTASK: &[&str] = &["sqlx", "fred", "axum", "hyper", "reqwest"];
/// What the `pool-admin` binary adds to the library: its command line, `monitor`'s HTTP client
/// and the log formatter; a service that embeds the router builds none of them.
const BINARY: &[&str] = &["clap", "reqwest", "tracing-subscriber"];
/// The pools `pool-bench` measures ours against, and their drivers: nowhere else.
const PEERS: &[&str] = &[
    "deadpool",
    "deadpool-postgres",
    "deadpool-redis",
    "bb8",
    "bb8-postgres",
    "bb8-redis",
    "tokio-postgres",
    "redis",
];

/// Runs every check and prints each violation; fails when there is any.
pub(crate) fn run() -> Result<ExitCode> {
    let root = crate::workspace_root();
    let architecture = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md"))
        .context("reading docs/ARCHITECTURE.md")?;
    let metadata = metadata()?;
    let mut problems = check_layers(&architecture, &members(&metadata)?)?;
    problems.extend(publishing(&metadata));
    let sources = rust_files(root)?;
    problems.extend(code_map(&architecture, &sources));
    problems.extend(history_words(root, &sources)?);
    if problems.is_empty() {
        println!(
            "tidy: the layers, the code map, the docs' words and the manifests' publishing fields are in order"
        );
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &problems {
        eprintln!("tidy: {problem}");
    }
    eprintln!("tidy: {} problem(s)", problems.len());
    Ok(ExitCode::FAILURE)
}

/// A row of ARCHITECTURE.md's dependency table, with its invariants, as `cargo tree` checks it.
#[derive(Debug)]
struct Layer {
    name: &'static str,
    /// Its direct normal dependencies, every feature on, are among these.
    may_use: Vec<&'static str>,
    /// Those of `may_use` that only a feature brings (absent with `--no-default-features`).
    behind_features: &'static [&'static str],
    /// Packages nowhere in its normal dependency tree, every feature on.
    never: Vec<&'static str>,
}

/// The table and the invariants, one [`Layer`] per crate under `crates/`.
fn layers() -> Vec<Layer> {
    let all = |lists: &[&[&'static str]]| lists.concat();
    let upper: &[&str] = &["pool-optimizer", "pool-admin"];
    vec![
        Layer {
            name: "pool-core",
            may_use: all(&[RUNTIME, &["quanta", "tracing-subscriber", "serde"]]),
            behind_features: &["tracing-subscriber", "serde"],
            never: all(&[POSTGRES, REDIS, EXPORTERS, HTTP, upper]),
        },
        Layer {
            name: "pool-postgres",
            may_use: all(&[
                RUNTIME,
                &[
                    "pool-core",
                    "sqlx",
                    "sqlx-core",
                    "sqlx-postgres",
                    "futures-core",
                    "rustls",
                    "serde",
                ],
            ]),
            behind_features: &["serde"],
            never: all(&[REDIS, EXPORTERS, HTTP, upper]),
        },
        Layer {
            name: "pool-redis",
            may_use: all(&[
                RUNTIME,
                &["pool-core", "fred", "url", "rustls", "rustls-native-certs", "socket2", "serde"],
            ]),
            behind_features: &["serde"],
            never: all(&[POSTGRES, EXPORTERS, HTTP, upper]),
        },
        Layer {
            name: "pool-metrics",
            may_use: all(&[RUNTIME, &["pool-core", "prometheus", "opentelemetry", "thread_local"]]),
            behind_features: &["prometheus", "opentelemetry", "thread_local"],
            never: all(&[POSTGRES, REDIS, HTTP, upper]),
        },
        Layer {
            name: "pool-optimizer",
            may_use: all(&[RUNTIME, &["pool-core"]]),
            behind_features: &[],
            never: all(&[POSTGRES, REDIS, EXPORTERS, HTTP, &["pool-admin"]]),
        },
        Layer {
            name: "pool-admin",
            may_use: all(&[
                RUNTIME,
                &["pool-core", "pool-postgres", "pool-redis", "pool-metrics", "pool-optimizer"],
                HTTP_SERVER,
                &["figment", "subtle", "getrandom", "serde", "serde_json", "utoipa"],
            ]),
            behind_features: &["pool-postgres", "pool-redis"],
            never: all(&[BINARY, &["pool-admin-cli"]]),
        },
        Layer {
            name: "pool-admin-cli",
            may_use: all(&[
                RUNTIME,
                &["pool-admin", "pool-postgres", "pool-redis"],
                BINARY,
                &["serde_json"],
            ]),
            behind_features: &[],
            never: Vec::new(),
        },
    ]
}

/// A build of one package with some of its features only (`--no-default-features --features
/// F`), and the packages its normal dependency tree must not reach.
#[derive(Debug)]
struct Subset {
    package: &'static str,
    /// The features on, comma-separated; empty for none.
    features: &'static str,
    never: Vec<&'static str>,
}

/// pool-admin's backend features: with one backend a service builds none of the other's
/// driver, and never the binary's crates; nor does the Redis-only example's build.
fn subsets() -> Vec<Subset> {
    let all = |lists: &[&[&'static str]]| lists.concat();
    vec![
        Subset { package: "pool-admin", features: "", never: all(&[POSTGRES, REDIS, BINARY]) },
        Subset { package: "pool-admin", features: "postgres", never: all(&[REDIS, BINARY]) },
        Subset { package: "pool-admin", features: "redis", never: all(&[POSTGRES, BINARY]) },
        Subset { package: "pool-examples", features: "redis", never: all(&[POSTGRES, BINARY]) },
    ]
}

/// Checks the dependency table's crates against `crates/`, each layer's tree against its row,
/// the builds with some features only ([`subsets`]), and every workspace member against the
/// invariants on peers and on HTTP servers.
fn check_layers(architecture: &str, members: &[(String, String)]) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let rules = layers();
    let in_crates: BTreeSet<&str> = members
        .iter()
        .filter(|(_, dir)| dir.starts_with("crates/"))
        .map(|(name, _)| name.as_str())
        .collect();
    let table = table_crates(architecture);
    let ruled: BTreeSet<&str> = rules.iter().map(|l| l.name).collect();
    for name in in_crates.difference(&table) {
        problems.push(format!("ARCHITECTURE.md's dependency table has no row for {name}"));
    }
    for name in table.difference(&in_crates) {
        problems.push(format!(
            "ARCHITECTURE.md's dependency table names {name}, which is no crate under crates/"
        ));
    }
    for name in in_crates.difference(&ruled) {
        problems.push(format!("tidy has no layer for {name}: add its table row to `layers`"));
    }

    for layer in &rules {
        let tree = cargo_tree(layer.name, &["-e", "normal", "--all-features"])?;
        for dep in direct(&tree) {
            if !layer.may_use.contains(&dep) {
                problems.push(format!(
                    "{} depends on {dep}, which ARCHITECTURE.md's table does not allow",
                    layer.name
                ));
            }
        }
        for (dep, chain) in reaching(&tree, &layer.never) {
            problems.push(format!(
                "{} reaches {dep} ({chain}), which ARCHITECTURE.md's invariants keep out of it",
                layer.name
            ));
        }
        if !layer.behind_features.is_empty() {
            let bare = cargo_tree(layer.name, &["-e", "normal", "--no-default-features"])?;
            for dep in direct(&bare).filter(|d| layer.behind_features.contains(d)) {
                problems.push(format!(
                    "{} depends on {dep} with no feature on; ARCHITECTURE.md puts it behind one",
                    layer.name
                ));
            }
        }
    }

    for subset in subsets() {
        let mut args = vec!["-e", "normal", "--no-default-features"];
        if !subset.features.is_empty() {
            args.extend(["--features", subset.features]);
        }
        let tree = cargo_tree(subset.package, &args)?;
        let with = if subset.features.is_empty() { "no feature" } else { subset.features };
        for (dep, chain) in reaching(&tree, &subset.never) {
            problems.push(format!(
                "{} with {with} on reaches {dep} ({chain}), which that build leaves out",
                subset.package
            ));
        }
    }

    let xtask = cargo_tree("xtask", &["-e", "normal,build", "--all-features"])?;
    for (dep, chain) in reaching(&xtask, NOT_IN_XTASK) {
        problems.push(format!(
            "xtask reaches {dep} ({chain}); ARCHITECTURE.md keeps the task runner free of the \
             drivers and HTTP"
        ));
    }

    for (member, _) in members {
        let tree = cargo_tree(member, &["-e", "normal,build,dev", "--all-features"])?;
        if member != "pool-bench" {
            for (dep, chain) in reaching(&tree, PEERS) {
                problems.push(format!(
                    "{member} reaches the peer {dep} ({chain}); peers belong to pool-bench only"
                ));
            }
        }
        if member != "pool-admin" {
            for dep in direct(&tree).filter(|d| HTTP_SERVER.contains(d)) {
                problems.push(format!(
                    "{member} depends on {dep}; pool-admin is the only crate with an HTTP server"
                ));
            }
        }
    }
    Ok(problems)
}

/// `cargo metadata --no-deps`: the workspace's packages as their manifests say.
fn metadata() -> Result<serde_json::Value> {
    let out = crate::cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The workspace's members: package name and directory relative to the workspace root.
fn members(metadata: &serde_json::Value) -> Result<Vec<(String, String)>> {
    let root = crate::workspace_root();
    let packages = metadata["packages"].as_array().context("cargo metadata: no packages")?;
    packages
        .iter()
        .map(|p| {
            let name = p["name"].as_str().context("a package without a name")?;
            let manifest = Path::new(p["manifest_path"].as_str().context("no manifest_path")?);
            let dir = manifest.parent().and_then(|d| d.strip_prefix(root).ok());
            let dir = dir.with_context(|| format!("{name} lives outside the workspace"))?;
            Ok((name.to_owned(), dir.to_string_lossy().into_owned()))
        })
        .collect()
}

/// One package's dependency tree, `(depth, name)` per line as `cargo tree` prints it.
fn cargo_tree(package: &str, args: &[&str]) -> Result<Vec<(usize, String)>> {
    let mut cmd = crate::cargo();
    cmd.args(["tree", "--quiet", "-p", package, "--prefix", "depth", "--format", "{p}"]).args(args);
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(parse_tree(&String::from_utf8_lossy(&out.stdout)))
}

/// Reads `cargo tree --prefix depth --format {p}`: each line is a depth, then a package's name,
/// a space and the rest.
fn parse_tree(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .filter_map(|line| {
            let digits = line.find(|c: char| !c.is_ascii_digit())?;
            let depth = line[..digits].parse().ok()?;
            let name = line[digits..].split(' ').next()?;
            Some((depth, name.to_owned()))
        })
        .collect()
}

/// The root's direct dependencies in a tree.
fn direct(tree: &[(usize, String)]) -> impl Iterator<Item = &str> {
    tree.iter().filter(|(depth, _)| *depth == 1).map(|(_, name)| name.as_str())
}

/// Each of `names` found in a tree (below its root), once, with the first chain that leads
/// from the root to it (`pool-core → quanta → x`).
fn reaching<'t>(tree: &'t [(usize, String)], names: &[&str]) -> Vec<(&'t str, String)> {
    let mut found: Vec<(&str, String)> = Vec::new();
    let mut chain: Vec<&str> = Vec::new();
    for (depth, name) in tree {
        chain.truncate(*depth);
        chain.push(name);
        if *depth > 0 && names.contains(&name.as_str()) && found.iter().all(|(n, _)| n != name) {
            found.push((name, chain.join(" → ")));
        }
    }
    found
}

/// The members that are never published: the harness, the tests, the benchmarks, the soak
/// run, the examples and the task runner.
const UNPUBLISHED: &[&str] =
    &["pool-harness", "pool-tests", "pool-bench", "pool-soak", "pool-examples", "xtask"];

/// What `cargo publish` and a registry's page need, checked from `cargo metadata`: the
/// [`UNPUBLISHED`] members say `publish = false`; every other member may be published and has a
/// description, a license, a repository, a readme, keywords and categories (and a
/// documentation link, unless it has no library), and every path dependency it is published
/// with has a version requirement. A dev-dependency on an unpublished member has no version, so
/// that packaging leaves it out.
fn publishing(metadata: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    let packages = metadata["packages"].as_array().map(Vec::as_slice).unwrap_or_default();
    for p in packages {
        let name = p["name"].as_str().unwrap_or("(unnamed)");
        // `null`: any registry; `[]`: `publish = false`.
        let publishable = p["publish"].is_null();
        if UNPUBLISHED.contains(&name) {
            if publishable {
                problems.push(format!("{name} may be published; set `publish = false`"));
            }
            continue;
        }
        if !publishable {
            problems.push(format!(
                "{name} is a library or the binary and may not be published; set `publish = true` \
                 (or add it to tidy's UNPUBLISHED)"
            ));
            continue;
        }
        let has_lib = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "lib")));
        let mut needed = vec!["description", "license", "repository", "readme"];
        if has_lib {
            needed.push("documentation");
        }
        for field in needed {
            if p[field].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{name} has no `{field}` in its manifest"));
            }
        }
        for field in ["keywords", "categories"] {
            if p[field].as_array().is_none_or(Vec::is_empty) {
                problems.push(format!("{name} has no `{field}` in its manifest"));
            }
        }
        if let (Some(readme), Some(manifest)) = (p["readme"].as_str(), p["manifest_path"].as_str())
            && !Path::new(manifest).with_file_name(readme).exists()
        {
            problems.push(format!("{name}'s readme {readme} is no file"));
        }
        for dep in p["dependencies"].as_array().into_iter().flatten() {
            if dep["path"].is_null() {
                continue;
            }
            let dep_name = dep["name"].as_str().unwrap_or("(unnamed)");
            let versioned = dep["req"].as_str().is_some_and(|r| r != "*");
            match (dep["kind"].as_str(), versioned) {
                (Some("dev"), true) if UNPUBLISHED.contains(&dep_name) => problems.push(format!(
                    "{name}'s dev-dependency {dep_name} is never published: name it by path \
                     alone, so that packaging leaves it out"
                )),
                (Some("dev"), _) | (_, true) => {}
                (_, false) => problems.push(format!(
                    "{name} depends on {dep_name} by path alone: give it a version requirement"
                )),
            }
        }
    }
    problems
}

/// The crates in the first column of ARCHITECTURE.md's dependency table (rows that open with
/// a crate in backticks).
fn table_crates(architecture: &str) -> BTreeSet<&str> {
    architecture.lines().filter_map(|line| line.strip_prefix("| `")?.split('`').next()).collect()
}

/// Every `.rs` file under the [`TOPS`] directories, as a path
/// from the workspace root with `/` separators, sorted.
fn rust_files(root: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for top in TOPS {
        walk(root, &root.join(top), &mut |path| {
            if path.ends_with(".rs") {
                files.push(path.to_owned());
            }
        })?;
    }
    files.sort();
    Ok(files)
}

/// Calls `found` with the path (from `root`) of every file under `dir`, skipping `target`
/// and hidden directories.
fn walk(root: &Path, dir: &Path, found: &mut impl FnMut(&str)) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, found)?;
        } else if let Ok(relative) = path.strip_prefix(root) {
            found(&relative.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

/// Whether `path` lies in one of the [`MAPPED`] directories (`*` matching one component).
fn is_mapped(path: &str) -> bool {
    MAPPED.iter().any(|pattern| {
        let mut parts = path.split('/');
        pattern.split('/').all(|p| parts.next().is_some_and(|part| p == "*" || p == part))
    })
}

/// The code map's sections: each `###` heading's directory (its first name in backticks,
/// without a trailing `/`) and the `.rs` names written in backticks below it.
fn code_map_sections(architecture: &str) -> Vec<(String, Vec<String>)> {
    let mut sections: Vec<(String, String)> = Vec::new();
    let mut in_map = false;
    for line in architecture.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            in_map = heading.trim() == "Code map";
            continue;
        }
        if !in_map {
            continue;
        }
        if let Some(heading) = line.strip_prefix("### ") {
            let dir = heading.split('`').nth(1).unwrap_or_default().trim_end_matches('/');
            sections.push((dir.to_owned(), String::new()));
        } else if let Some((_, text)) = sections.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    sections
        .into_iter()
        .map(|(dir, text)| {
            let names = text
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|code| code.ends_with(".rs") && !code.contains(char::is_whitespace))
                .map(str::to_owned)
                .collect();
            (dir, names)
        })
        .collect()
}

/// Whether `name`, written in the code map, names the file at `path`: the whole path, or a
/// trailing part of it that starts at a `/` (`pool.rs`, `pool/tests.rs`, `it/main.rs`).
fn names(name: &str, path: &str) -> bool {
    path == name || path.strip_suffix(name).is_some_and(|head| head.ends_with('/'))
}

/// A module's unit tests, `<module>/tests.rs` beside `<module>.rs` (or `src/tests.rs` beside
/// `lib.rs` or `main.rs`), which the code map need not name.
fn is_unit_tests(path: &str, files: &[String]) -> bool {
    let Some(dir) = path.strip_suffix("/tests.rs") else { return false };
    let beside = |file: String| files.contains(&file);
    if dir.ends_with("/src") {
        beside(format!("{dir}/lib.rs")) || beside(format!("{dir}/main.rs"))
    } else {
        beside(format!("{dir}.rs"))
    }
}

/// Checks that each mapped file is named in its directory's section of the code map (or by
/// its whole path anywhere in it), and that each name in the code map is a file.
fn code_map(architecture: &str, files: &[String]) -> Vec<String> {
    let sections = code_map_sections(architecture);
    let mut problems = Vec::new();
    let in_dir = |path: &str, dir: &str| path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'));
    for path in files.iter().filter(|p| is_mapped(p)) {
        if is_unit_tests(path, files) {
            continue;
        }
        let mut section = sections.iter().filter(|(dir, _)| in_dir(path, dir)).peekable();
        if section.peek().is_none() {
            problems.push(format!("ARCHITECTURE.md's code map has no section for {path}"));
            continue;
        }
        let named_here = section.any(|(_, list)| list.iter().any(|n| names(n, path)));
        let named_whole = sections.iter().any(|(_, list)| list.iter().any(|n| n == path));
        if !named_here && !named_whole {
            problems.push(format!("ARCHITECTURE.md's code map does not name {path}"));
        }
    }
    for (dir, list) in &sections {
        for name in list {
            let here = files.iter().any(|p| in_dir(p, dir) && names(name, p));
            if !here && !files.contains(name) {
                problems.push(format!(
                    "ARCHITECTURE.md's code map names `{name}` under `{dir}`, which is no file"
                ));
            }
        }
    }
    problems
}

/// Phrases that point at the project's history rather than at the crates: its original brief
/// (which its first documents called a seed) and its issues, referred to as such.
const HISTORY: &[&str] = &[
    "the seed",
    "seed's",
    "seed’s",
    "the issue",
    "this issue",
    "that issue",
    "later issue",
    "earlier issue",
    "previous issue",
    "next issue",
];

/// The history phrases in one line of docs: each of [`HISTORY`] as whole words, the word
/// `issue` followed by a number (with or without `#`), and `#` and a number after a space or
/// `(`.
fn history_in(line: &str) -> Vec<String> {
    let lower = line.to_lowercase();
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut found = Vec::new();
    for phrase in HISTORY {
        for (at, _) in lower.match_indices(phrase) {
            let before = lower[..at].chars().next_back();
            let after = lower[at + phrase.len()..].chars().next();
            if !word(before) && !word(after) {
                found.push((*phrase).to_owned());
            }
        }
    }
    let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    for (at, _) in lower.match_indices("issue") {
        let tail = &lower[at + "issue".len()..];
        let rest = tail.trim_start_matches('s').trim_start_matches(' ').trim_start_matches('#');
        let number = digits(rest);
        if number > 0 && !word(lower[..at].chars().next_back()) {
            let end = at + "issue".len() + (tail.len() - rest.len()) + number;
            found.push(lower[at..end].to_owned());
        }
    }
    for (at, _) in lower.match_indices('#') {
        let number = digits(&lower[at + 1..]);
        let before = &lower[..at];
        let after_issue = before.trim_end().ends_with("issue") || before.ends_with("issues ");
        let alone = before.chars().next_back().is_none_or(|c| c == ' ' || c == '(');
        if number > 0 && alone && !after_issue {
            found.push(lower[at..=at + number].to_owned());
        }
    }
    found
}

/// Checks rustdoc comments (`///`, `//!`) in `sources`, every `README.md` and the Markdown
/// under `docs/` for [`history_in`].
fn history_words(root: &Path, sources: &[String]) -> Result<Vec<String>> {
    let mut docs: Vec<String> = Vec::new();
    for top in TOPS.into_iter().chain(["docs"]) {
        walk(root, &root.join(top), &mut |path| {
            let markdown = path.ends_with(".md") && (top == "docs" || path.ends_with("README.md"));
            if markdown {
                docs.push(path.to_owned());
            }
        })?;
    }
    docs.push("README.md".to_owned());
    docs.sort();
    let mut problems = Vec::new();
    for path in sources.iter().chain(&docs) {
        let text =
            std::fs::read_to_string(root.join(path)).with_context(|| format!("reading {path}"))?;
        let rust = path.ends_with(".rs");
        for (n, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if rust && !(trimmed.starts_with("///") || trimmed.starts_with("//!")) {
                continue;
            }
            let phrases = history_in(line);
            if !phrases.is_empty() {
                problems.push(format!(
                    "{path}:{}: speaks of the project's history (\"{}\"); say it in the \
                     crate's own terms",
                    n + 1,
                    phrases.join("\", \"")
                ));
            }
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests;
