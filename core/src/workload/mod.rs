//! The mesh's workloads and services as the data plane sees them (Istio's workload API): one immutable
//! [`state::Snapshot`] fed by a local file or by delta xDS ([`xds`]), shared by ztunnel and the waypoint.

use std::net::IpAddr;

pub mod authz;
pub mod state;
pub mod xds;

/// An address as the protos carry it: 4 or 16 raw bytes.
pub fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}
