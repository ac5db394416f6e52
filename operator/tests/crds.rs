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
