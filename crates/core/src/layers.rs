//! The crate layering, checked: every crate of the workspace depends only on crates of lower
//! layers (docs/architecture.md). A new crate must be given its layer here.

/// The layers, bottom first.
const LAYERS: &[&[&str]] = &[
    &["ims-core"],
    &["ims-store", "ims-artifacts", "ims-http", "ims-rootfs"],
    &["ims-s3", "ims-client"],
    &["ims-jobs", "ims-server"],
    &["ims-kubernetes"],
    &["ims"],
];

fn layer(name: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&name))
}

/// What is wrong with `deps` (crate → the workspace crates it depends on): crates without a
/// layer, and dependencies that do not go strictly downward.
fn violations(deps: &[(String, Vec<String>)]) -> Vec<String> {
    let mut out = vec![];
    for (krate, on) in deps {
        let Some(mine) = layer(krate) else {
            out.push(format!("{krate} has no layer"));
            continue;
        };
        for d in on.iter().filter(|d| *d != krate) {
            match layer(d) {
                Some(theirs) if theirs < mine => {}
                Some(_) => out.push(format!("{krate} depends on {d}, which is not below it")),
                None => out.push(format!("{krate} depends on {d}, which has no layer")),
            }
        }
    }
    out
}

/// Every crate of `crates/*` with the workspace crates it depends on (normal, build and dev
/// dependencies; a crate's dev-dependency on itself aside).
fn workspace_graph() -> Vec<(String, Vec<String>)> {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut graph = vec![];
    for entry in std::fs::read_dir(&crates).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest).unwrap();
        let t: toml::Table = toml::from_str(&text).unwrap();
        let name = t["package"]["name"].as_str().unwrap().to_string();
        let mut on = vec![];
        for section in ["dependencies", "build-dependencies", "dev-dependencies"] {
            let Some(deps) = t.get(section).and_then(|d| d.as_table()) else {
                continue;
            };
            for (key, spec) in deps {
                let package = spec.get("package").and_then(|p| p.as_str()).unwrap_or(key);
                if package == "ims" || package.starts_with("ims-") {
                    on.push(package.to_string());
                }
            }
        }
        graph.push((name, on));
    }
    graph.sort();
    graph
}

#[test]
fn no_crate_depends_upward() {
    let graph = workspace_graph();
    assert_eq!(
        graph.len(),
        LAYERS.iter().map(|l| l.len()).sum::<usize>(),
        "{graph:?}"
    );
    let bad = violations(&graph);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn upward_and_sideways_dependencies_are_found() {
    let g = |k: &str, on: &[&str]| (k.to_string(), on.iter().map(|s| s.to_string()).collect());
    assert!(violations(&[g("ims-client", &["ims-core", "ims-artifacts"])]).is_empty());
    assert_eq!(
        violations(&[
            g("ims-core", &["ims-store"]),
            g("ims-server", &["ims-jobs"]),
            g("ims-new", &[]),
            g("ims-store", &["ims-store", "ims-extra"]),
        ]),
        [
            "ims-core depends on ims-store, which is not below it",
            "ims-server depends on ims-jobs, which is not below it",
            "ims-new has no layer",
            "ims-store depends on ims-extra, which has no layer",
        ]
    );
}
