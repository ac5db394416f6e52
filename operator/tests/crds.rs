//! The committed CRD YAML is what the Rust types generate.

use fleetward_operator::crd;

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let mut expected = Vec::new();
    for (file, def) in crd::all() {
        let want = crd::to_yaml(&def);
        let have = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            have == want,
            "crds/{file} differs from the Rust types; regenerate with `cargo run -p fleetward-operator --bin crdgen`"
        );
        expected.push(file.to_string());
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    expected.sort();
    assert_eq!(present, expected, "crds/ holds files crdgen does not generate");
}

/// The book's CRD reference (`docs/src/reference/<kind>.md`) is what crdgen
/// renders from the same types: run it into a scratch directory and compare.
#[test]
fn committed_crd_reference_matches_the_rust_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let committed = root.join("docs/src/reference");
    let scratch = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_crdgen"))
        .arg(scratch.path().join("crds"))
        .arg("--docs-dir")
        .arg(scratch.path().join("reference"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "crdgen failed: {status}");
    let mut generated: Vec<String> = std::fs::read_dir(scratch.path().join("reference"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    generated.sort();
    assert_eq!(generated.len(), crd::all().len(), "one reference page per kind");
    for page in &generated {
        let want = std::fs::read_to_string(scratch.path().join("reference").join(page)).unwrap();
        let have = std::fs::read_to_string(committed.join(page)).unwrap_or_default();
        assert!(
            have == want,
            "docs/src/reference/{page} differs from the Rust types; regenerate with `cargo run -p fleetward-operator --bin crdgen`"
        );
    }
    // A page crdgen once generated for a kind that is gone is stale too.
    let header = want_header(&generated, &scratch.path().join("reference"));
    let mut marked: Vec<String> = std::fs::read_dir(&committed)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.starts_with(&header)))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    marked.sort();
    assert_eq!(
        marked, generated,
        "docs/src/reference holds generated pages crdgen no longer generates"
    );
}

/// The generated pages' first line, as crdgen writes it.
fn want_header(pages: &[String], dir: &std::path::Path) -> String {
    let first = std::fs::read_to_string(dir.join(&pages[0])).unwrap();
    first.lines().next().unwrap().to_string()
}

/// Names that do not collide in a real cluster: short names other projects
/// do not take (`gw` is Istio's Gateway, `dv` KubeVirt's DataVolume, `tf`
/// Flux's Terraform), all in the `fleetward` category (`kubectl get
/// fleetward`), and a description of each kind for `kubectl explain`
/// rather than kube-rs's placeholder.
#[test]
fn kinds_have_unique_short_names_a_category_and_a_description() {
    let taken = ["gw", "gtw", "dv", "dev", "tf", "sf", "feed", "tariff"];
    for (file, def) in crd::all() {
        let names = &def.spec.names;
        let short = names.short_names.clone().unwrap_or_default();
        assert!(!short.is_empty(), "{file}: a short name");
        for s in &short {
            assert!(
                s.starts_with("fw") && !taken.contains(&s.as_str()),
                "{file}: short name {s}"
            );
        }
        assert_eq!(
            names.categories.as_deref(),
            Some(&["fleetward".to_string()][..]),
            "{file}"
        );
        let schema = def.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref());
        let description = schema.and_then(|s| s.description.clone()).unwrap_or_default();
        assert!(
            description.len() > 40 && !description.contains("Auto-generated"),
            "{file}: description {description:?}"
        );
    }
}
