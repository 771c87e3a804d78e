//! Writes the demo TUF repository (demo/registry/): churn version 1 of the fixture model as
//! a signed release (model.onnx + bundle.json with golden samples), signed with the demo
//! keys of registry-sync's test repository builder (Ed25519 from fixed, public seeds: for
//! demos only). Deterministic: the same checkout writes the same bytes.
//!
//!   cargo run -p edgeinferd --example demo_registry -- demo/registry

#[path = "../tests/registry_support/release.rs"]
mod release;

use edgeinfer_registry::tuf::testrepo::Repo;

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "demo/registry".into());
    let out = std::path::Path::new(&out);
    let mut repo = Repo::new();
    release::publish_release(&mut repo, "churn", "1", 1, &release::churn_model());
    let _ = std::fs::remove_dir_all(out.join("targets"));
    repo.write_to(out);
    println!(
        "wrote {} (root: {}/metadata/1.root.json)",
        out.display(),
        out.display()
    );
}
