//! ztunnel's metrics, with Istio's names and labels so existing dashboards work: the shared L4 set
//! ([`TcpMetrics`]) plus ztunnel's authorization denials.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use mesh_core::metrics::{HboneMetrics, TcpMetrics};

/// How a connection reached the pod.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Transport {
    hbone,
    plaintext,
}

/// A connection refused or closed by authorization policy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenyLabels {
    pub policy: String,
    pub reason: &'static str,
    pub transport: Transport,
    /// At admission, or an established connection closed by a policy change.
    pub established: bool,
}

#[derive(Clone)]
pub struct Metrics {
    pub denied: Family<DenyLabels, Counter>,
    pub tcp: TcpMetrics,
    pub hbone: HboneMetrics,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let denied = Family::default();
        registry.register(
            "mesh_authorization_denied_connections",
            "Connections refused or closed by authorization policy (STRICT mTLS included), by policy and reason",
            denied.clone(),
        );
        Self {
            denied,
            tcp: TcpMetrics::register(registry),
            hbone: HboneMetrics::register(registry),
        }
    }
}
