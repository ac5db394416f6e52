//! Writes the CRD YAML generated from the Rust types, and the book's CRD
//! reference rendered from that YAML's OpenAPI schema.
//!
//! `crdgen [DIR] [--docs-dir DOCS]`  writes DIR/<kind>.yaml (default: crds/,
//!                     the committed copies) and DOCS/<kind>.md (default:
//!                     docs/src/reference/, one table per spec and status)
//! `crdgen --stdout`   prints all the CRDs as one multi-document stream,
//!                     e.g. `crdgen --stdout | kubectl apply -f -`
use std::path::PathBuf;

mod reference;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let stdout = args.iter().any(|a| a == "--stdout");
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let docs_at = args.iter().position(|a| a == "--docs-dir");
    let docs = docs_at
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../docs/src/reference"));
    let dir = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with("--") && docs_at.is_none_or(|d| *i != d + 1))
        .map(|(_, a)| PathBuf::from(a))
        .unwrap_or_else(|| manifest.join("../crds"));
    for (file, crd) in fleetward_operator::crd::all() {
        let yaml = fleetward_operator::crd::to_yaml(&crd);
        if stdout {
            print!("---\n{yaml}");
            continue;
        }
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(file), yaml)?;
        eprintln!("wrote {}", dir.join(file).display());
        let page = docs.join(reference::page_name(file));
        std::fs::create_dir_all(&docs)?;
        std::fs::write(&page, reference::render(&crd))?;
        eprintln!("wrote {}", page.display());
    }
    Ok(())
}
