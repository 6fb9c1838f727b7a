//! ztunnel's metrics, with Istio's names and labels so existing dashboards work.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use mesh_core::metrics::HboneMetrics;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Reporter {
    source,
    destination,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SecurityPolicy {
    mutual_tls,
    none,
}

/// Istio's response flags that apply at L4.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ResponseFlags {
    None,
    /// Upstream connection failure.
    UF,
    /// No healthy upstream.
    UH,
}

impl EncodeLabelValue for ResponseFlags {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        e.write_str(match self {
            ResponseFlags::None => "-",
            ResponseFlags::UF => "UF",
            ResponseFlags::UH => "UH",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub request_protocol: &'static str,
    pub response_flags: ResponseFlags,
    pub connection_security_policy: SecurityPolicy,
}

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

#[derive(Clone, Default)]
pub struct Metrics {
    pub denied: Family<DenyLabels, Counter>,
    pub opened: Family<ConnectionLabels, Counter>,
    pub closed: Family<ConnectionLabels, Counter>,
    pub sent_bytes: Family<ConnectionLabels, Counter>,
    pub received_bytes: Family<ConnectionLabels, Counter>,
    pub hbone: HboneMetrics,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let istio = registry.sub_registry_with_prefix("istio");
        let m = Self::default();
        istio.register(
            "tcp_connections_opened",
            "TCP connections opened",
            m.opened.clone(),
        );
        istio.register(
            "tcp_connections_closed",
            "TCP connections closed",
            m.closed.clone(),
        );
        istio.register(
            "tcp_sent_bytes",
            "Bytes sent to the client (response direction)",
            m.sent_bytes.clone(),
        );
        istio.register(
            "tcp_received_bytes",
            "Bytes received from the client (request direction)",
            m.received_bytes.clone(),
        );
        registry.register(
            "mesh_authorization_denied_connections",
            "Connections refused or closed by authorization policy (STRICT mTLS included), by policy and reason",
            m.denied.clone(),
        );
        let hbone = HboneMetrics::register(registry);
        Self { hbone, ..m }
    }

    /// Counts a finished connection: `received` flowed client to server, `sent` server to client.
    pub fn record(&self, labels: &ConnectionLabels, received: u64, sent: u64) {
        self.closed.get_or_create(labels).inc();
        self.received_bytes.get_or_create(labels).inc_by(received);
        self.sent_bytes.get_or_create(labels).inc_by(sent);
    }
}
