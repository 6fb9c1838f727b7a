//! `mesh-primitives`: the small things every part of the mesh parses or computes the same way. Each has one
//! implementation here, so a value the control plane accepts is read identically by ztunnel and the waypoint.
//!
//! - [`duration`]: Go/Istio duration syntax (`30s`, `1h30m`) for API objects and for our own config files.
//! - [`cidr`]: `ipBlocks`-style addresses and prefixes.
//! - [`identity`]: SPIFFE identities (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`).
//! - [`names`]: the cluster domain and the names Istio derives from it.
//! - [`backoff`]: exponential backoff with jitter, for every retry loop.
//! - [`yaml`]: one set of YAML rules for API objects and config files.

pub mod backoff;
pub mod cidr;
pub mod duration;
pub mod identity;
pub mod names;
pub mod suggest;
pub mod yaml;

/// `<version> (commit <git commit>)` of the calling package, for `#[command(version = mesh_primitives::version!())]`:
/// every binary's `--version` says its own name (clap's), version and the commit it was built from. The package
/// needs a build script that includes `core/build/git_commit.rs`, which sets `MESH_GIT_COMMIT`.
#[macro_export]
macro_rules! version {
    () => {
        concat!(
            env!("CARGO_PKG_VERSION"),
            " (commit ",
            env!("MESH_GIT_COMMIT"),
            ")"
        )
    };
}
