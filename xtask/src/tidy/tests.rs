//! Tests of tidy's readers: `cargo tree`'s output, the code map's rule and the history words.

use super::*;

fn files(paths: &[&str]) -> Vec<String> {
    paths.iter().map(|p| (*p).to_owned()).collect()
}

const ARCHITECTURE: &str = "\
# Architecture

| crate | may depend on |
| --- | --- |
| `pool-core` | tokio |
| `pool-redis` | `pool-core`, fred |

## Code map

### `crates/pool-core`
`lib.rs` is the module list. `pool.rs`: the engine
(`pool/tests.rs` holds its tests). Tests: `tests/it/core.rs`.

### `tests/` (`pool-harness`)
`src/lib.rs`, `it/main.rs`, and `gone.rs`.

## Architecture invariants

- `stray.rs` is outside the code map.
";

#[test]
fn the_code_map_names_files_by_name_or_trailing_path_in_their_section() {
    let sections = code_map_sections(ARCHITECTURE);
    let dirs: Vec<&str> = sections.iter().map(|(dir, _)| dir.as_str()).collect();
    assert_eq!(dirs, ["crates/pool-core", "tests"]);
    assert_eq!(sections[0].1, ["lib.rs", "pool.rs", "pool/tests.rs", "tests/it/core.rs"]);

    let tree = files(&[
        "crates/pool-core/src/lib.rs",
        "crates/pool-core/src/pool.rs",
        "crates/pool-core/src/pool/tests.rs",
        "crates/pool-core/src/stats.rs",
        "crates/pool-core/src/stats/tests.rs",
        "crates/pool-core/src/orphan/tests.rs",
        "crates/pool-core/src/tests.rs",
        "crates/pool-redis/src/lib.rs",
        "tests/src/lib.rs",
        "tests/it/main.rs",
        "tests/it/core.rs",
        "tests/it/lib.rs",
    ]);
    assert_eq!(
        code_map(ARCHITECTURE, &tree),
        [
            // Its module is there, but not named: its tests beside it still need no name.
            "ARCHITECTURE.md's code map does not name crates/pool-core/src/stats.rs",
            // Tests of no module are a module like any other.
            "ARCHITECTURE.md's code map does not name crates/pool-core/src/orphan/tests.rs",
            "ARCHITECTURE.md's code map has no section for crates/pool-redis/src/lib.rs",
            // `src/lib.rs` is not a trailing part of `tests/it/lib.rs`.
            "ARCHITECTURE.md's code map does not name tests/it/lib.rs",
            "ARCHITECTURE.md's code map names `gone.rs` under `tests`, which is no file",
        ]
    );
}

#[test]
fn a_name_is_the_whole_path_or_a_trailing_part_from_a_slash() {
    let cases = [
        ("pool.rs", "crates/pool-core/src/pool.rs", true),
        ("pool/tests.rs", "crates/pool-core/src/pool/tests.rs", true),
        ("ool.rs", "crates/pool-core/src/pool.rs", false),
        ("tests.rs", "crates/pool-core/src/pool/tests.rs", true),
        ("it/main.rs", "tests/it/main.rs", true),
        ("tests/it/main.rs", "tests/it/main.rs", true),
    ];
    for (name, path, expected) in cases {
        assert_eq!(names(name, path), expected, "{name} names {path}");
    }
}

#[test]
fn mapped_directories_match_one_crate_component() {
    assert!(is_mapped("crates/pool-core/src/pool.rs"));
    assert!(is_mapped("tests/it/dashboard/webdriver.rs"));
    assert!(is_mapped("xtask/src/tidy.rs"));
    assert!(is_mapped("harness/src/proxy.rs"));
    assert!(is_mapped("soak/src/load.rs"));
    assert!(!is_mapped("crates/pool-core/examples/demo.rs"));
    assert!(!is_mapped("benches/benches/x.rs"));
}

#[test]
fn the_dependency_table_and_cargo_tree_are_read() {
    assert_eq!(table_crates(ARCHITECTURE), BTreeSet::from(["pool-core", "pool-redis"]));
    let tree = parse_tree(
        "0pool-core v0.1.0 (/work/main/crates/pool-core)\n\
         1quanta v0.13.0\n\
         2libc v0.2.191\n\
         1tokio v1.54.1\n\
         2libc v0.2.191\n\
         2tokio-macros v2.7.2 (proc-macro)\n",
    );
    assert_eq!(direct(&tree).collect::<Vec<_>>(), ["quanta", "tokio"]);
    assert_eq!(
        reaching(&tree, &["libc", "tokio-macros", "fred"]),
        [
            ("libc", "pool-core → quanta → libc".to_owned()),
            ("tokio-macros", "pool-core → tokio → tokio-macros".to_owned())
        ]
    );
}

#[test]
fn history_words_are_found_as_words() {
    let cases: [(&str, &[&str]); 10] = [
        ("/// Connections checked out (the seed's `active`).", &["the seed", "seed's"]),
        ("/// As the seed says.", &["the seed"]),
        ("/// Issue 28: a long hold.", &["issue 28"]),
        ("/// Case 1 of issue #28, and issues 3", &["issue #28", "issues 3"]),
        ("/// See (#21).", &["#21"]),
        ("/// The issue's figure is 10.", &["the issue"]),
        ("/// `random()`'s seed (`setseed`).", &[]),
        ("/// Across five seeds; the seedling.", &[]),
        ("/// Each recommendation's `issue`, and the tissue 3.", &[]),
        ("/// `#[derive(Debug)]` and # Errors", &[]),
    ];
    for (line, expected) in cases {
        assert_eq!(history_in(line), expected, "{line}");
    }
}

#[test]
fn publishing_needs_the_registrys_fields_and_versions_on_path_dependencies() {
    let complete = serde_json::json!({
        "name": "pool-core", "publish": null, "description": "d", "license": "MIT",
        "repository": "r", "readme": "Cargo.toml", "documentation": "https://docs.rs/pool-core",
        "keywords": ["pool"], "categories": ["database"],
        "manifest_path": concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        "targets": [{ "kind": ["lib"] }],
        "dependencies": [
            { "name": "pool-x", "req": "^0.1.0", "kind": null, "path": "/x" },
            { "name": "pool-core", "req": "*", "kind": "dev", "path": "." },
            { "name": "tokio", "req": "^1", "kind": null },
        ],
    });
    let metadata = serde_json::json!({ "packages": [
        complete,
        {
            "name": "pool-admin", "publish": null, "description": "", "license": "MIT",
            "repository": "r", "readme": "NOPE.md", "documentation": null, "keywords": [],
            "categories": ["database"], "manifest_path": "/w/crates/pool-admin/Cargo.toml",
            "targets": [{ "kind": ["lib"] }],
            "dependencies": [
                { "name": "pool-core", "req": "*", "kind": null, "path": "/c" },
                { "name": "pool-harness", "req": "^0.1.0", "kind": "dev", "path": "/h" },
            ],
        },
        { "name": "pool-examples", "publish": null, "targets": [], "dependencies": [] },
        { "name": "xtask", "publish": [], "targets": [], "dependencies": [] },
    ]});
    assert_eq!(
        publishing(&metadata),
        [
            "pool-admin has no `description` in its manifest",
            "pool-admin has no `documentation` in its manifest",
            "pool-admin has no `keywords` in its manifest",
            "pool-admin's readme NOPE.md is no file",
            "pool-admin depends on pool-core by path alone: give it a version requirement",
            "pool-admin's dev-dependency pool-harness is never published: name it by path alone, so that packaging leaves it out",
            "pool-examples may be published; set `publish = false`",
        ]
    );
}
