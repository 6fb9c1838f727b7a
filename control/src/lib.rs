//! The control plane: owns identity (a CA) and configuration, and pushes it to every ztunnel and waypoint.
//!
//! - [`model`]: the Kubernetes and mesh objects a user applies, loaded from a directory of YAML and validated
//!   (an invalid object keeps its last good version); `model::analyze` adds `istioctl analyze`-style checks.
//! - [`translate`]: objects → xDS resources (Istio's workload API for ztunnel); [`l7`]: routing objects → the
//!   waypoint's `mesh.l7.v1.L7Service`.
//! - [`xds`]: the delta ADS server; [`ca`]: the certificate authority's gRPC service and who may ask it for what.
//! - [`kube`]: Kubernetes mode: kube-rs watchers feeding the same model.
//! - [`crds`]: the mesh kinds' CustomResourceDefinitions, derived from the model's Spec types (`meshctl crds`).
//! - [`server`]: the process: config watching, snapshot publishing, gRPC with TLS, monitoring.

pub mod authz;
pub mod ca;
pub mod config;
pub mod crds;
pub mod deploy;
pub mod kube;
pub mod l7;
pub mod model;
pub mod server;
pub mod token_review;
pub mod translate;
pub mod xds;
