//! `mesh-control`: the control plane process. It owns identity (a CA) and configuration, and pushes config to
//! every ztunnel and waypoint. What it serves is decided elsewhere: the objects and their validation live in
//! `mesh-model`, and their translation to xDS resources in `mesh-translate`; this crate does the I/O.
//!
//! - [`server`]: the process: config watching (files or Kubernetes), snapshot publishing, gRPC with TLS,
//!   monitoring.
//! - [`xds`]: the delta ADS server; [`ca`]: the certificate authority's gRPC service and who may ask it for what;
//!   [`token_review`]: Kubernetes-mode authentication of callers; [`ca_secret`]: Kubernetes mode's one root for
//!   all replicas, in a Secret.
//! - [`kube`]: Kubernetes mode: kube-rs watchers feeding the same model; [`deploy`]: each waypoint Gateway's
//!   ServiceAccount, Deployment and Service, and [`root_cert`]: the mesh root in every namespace, both
//!   server-side applied by the replica that holds the [`leader`] Lease.
//! - [`config`]: the process's typed config.

pub mod ca;
pub mod ca_secret;
pub mod config;
pub mod deploy;
pub mod kube;
pub mod leader;
pub mod mesh_view;
pub mod root_cert;
pub mod server;
pub mod serving;
pub mod token_review;
pub mod xds;
