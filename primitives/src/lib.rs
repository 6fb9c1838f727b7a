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
