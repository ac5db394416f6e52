//! Writes the CRD YAML generated from the Rust types.
//!
//! `crdgen`            writes crds/<kind>.yaml (the committed copies)
//! `crdgen --stdout`   prints all of them as one multi-document stream,
//!                     e.g. `crdgen --stdout | kubectl apply -f -`
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let stdout = std::env::args().any(|a| a == "--stdout");
    let dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds"));
    for (file, crd) in fleetward_operator::crd::all() {
        let yaml = fleetward_operator::crd::to_yaml(&crd);
        if stdout {
            print!("---\n{yaml}");
        } else {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(file), yaml)?;
            eprintln!("wrote {}", dir.join(file).display());
        }
    }
    Ok(())
}
