//! Compiles the project's `.proto` files with `protox` (a pure-Rust protobuf
//! compiler, so no system `protoc` is needed) and generates prost messages
//! plus tonic clients and servers with `tonic-prost-build`.

use std::path::{Path, PathBuf};

/// The `.proto` files, relative to the `proto/` include directory.
const PROTOS: &[&str] = &[
    "istio/workload/workload.proto",
    "istio/workload/zds.proto",
    "istio/security/authorization.proto",
    "istio/v1/auth/ca.proto",
    "envoy/config/core/v3/base.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "envoy/service/discovery/v3/ads.proto",
    "google/rpc/status.proto",
    "mesh/l7/v1/l7.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let include = root.join("proto");

    println!("cargo:rerun-if-changed=build.rs");
    rerun_if_changed_dir(&include)?;

    let files: Vec<PathBuf> = PROTOS.iter().map(|p| include.join(p)).collect();
    // Well-known types (google/protobuf/*.proto) are bundled with protox.
    let fds = protox::compile(&files, [&include])?;

    // Implement `prost::Name` for every message, with the type URL domain used
    // by xDS (`type.googleapis.com/<package>.<Message>`), so resources can be
    // packed into / unpacked from `google.protobuf.Any` without hand-written
    // URLs.
    let mut config = tonic_prost_build::Config::new();
    config
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com")
        // Ordered maps encode deterministically, so an unchanged resource keeps its version (a hash of its bytes).
        .btree_map(["."]);

    // google.protobuf.* maps to prost_types by default.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(fds, config)?;
    Ok(())
}

/// Rebuild whenever any file under `dir` is added, removed or changed.
fn rerun_if_changed_dir(dir: &Path) -> std::io::Result<()> {
    println!("cargo:rerun-if-changed={}", dir.display());
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rerun_if_changed_dir(&path)?;
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    Ok(())
}
