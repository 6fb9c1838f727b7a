//! The mesh's workloads and services as the data plane sees them (Istio's workload API): one immutable
//! [`state::Snapshot`] fed by a local file or by delta xDS ([`xds`]), shared by ztunnel and the waypoint.

pub mod authz;
pub mod state;
pub mod xds;
