//! `mesh-translate`: the config model → the xDS resources proxies consume. Pure functions, no I/O: the control
//! plane calls [`translate_with`] on every config change and serves what it returns.
//!
//! - [`workloads`]: Pods, WorkloadEntries and Services → Istio's workload API (`istio.workload.Address`), for
//!   ztunnel; it also records which identities each node's pods run as ([`NodeIdentities`]), for the CA.
//! - [`authz`]: PeerAuthentication and AuthorizationPolicy → `istio.security.Authorization`, for ztunnel.
//! - [`l7`]: VirtualService, DestinationRule, TrafficSplit, HTTPRoute and GRPCRoute → `mesh.l7.v1.L7Service`,
//!   for the waypoint.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use mesh_primitives::identity::Identity;

pub mod authz;
pub mod l7;
pub mod workloads;

pub use workloads::{translate, translate_with, Translated, DEFAULT_ROOT_NAMESPACE, HBONE_PORT};

/// One resource as served: its version is a hash of its bytes, so an unchanged resource keeps its version.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub version: u64,
    pub body: prost_types::Any,
}

impl Resource {
    pub fn new<M: prost::Name>(msg: &M) -> Self {
        let body =
            prost_types::Any::from_msg(msg).expect("encoding a message into Any cannot fail");
        Self {
            version: fnv1a(&body.value),
            body,
        }
    }

    /// The version as xDS carries it (16 hex digits).
    pub fn version_text(&self) -> String {
        format!("{:016x}", self.version)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Which identities each node's pods run as, from the current config: a node proxy may ask the CA for these only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeIdentities(pub BTreeMap<String, BTreeSet<Identity>>);

/// An address as the protos carry it: 4 or 16 raw bytes.
pub(crate) fn octets(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}
