//! The waypoint's request metrics with Istio's names and labels (`istio_requests_total`,
//! `istio_request_duration_milliseconds`), reported as `reporter="waypoint"` like Istio's own waypoint.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use mesh_core::metrics::{BareCounter, HboneMetrics, TcpMetrics};
use mesh_core::metrics::{Reporter, ResponseFlags, SecurityPolicy};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Protocol {
    http,
    grpc,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: Protocol,
    pub response_code: u16,
    pub response_flags: ResponseFlags,
    pub connection_security_policy: SecurityPolicy,
}

/// Istio's default buckets for request durations.
fn duration_histogram() -> Histogram {
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
    ])
}

/// A request refused by an AuthorizationPolicy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenyLabels {
    pub policy: String,
    pub reason: &'static str,
}

/// Envoy's cluster label: Istio's cluster name `outbound|<port>|<subset>|<host>`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster_name: String,
}

/// Circuit breakers and outlier detection per cluster, under Envoy's stat names (what Istio's waypoint exposes
/// and its dashboards read).
#[derive(Clone, Default)]
pub struct ClusterMetrics {
    /// Requests refused because `http2MaxRequests` or `http1MaxPendingRequests` was reached.
    pub pending_overflow: Family<ClusterLabels, BareCounter>,
    /// Retries not made because `maxRetries` was reached.
    pub retry_overflow: Family<ClusterLabels, BareCounter>,
    pub ejections_enforced: Family<ClusterLabels, BareCounter>,
    /// Refreshed from the clusters every second.
    pub rq_active: Family<ClusterLabels, Gauge>,
    pub ejections_active: Family<ClusterLabels, Gauge>,
}

impl ClusterMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let envoy = registry.sub_registry_with_prefix("envoy_cluster");
        envoy.register(
            "upstream_rq_pending_overflow",
            "Requests that overflowed the cluster's request or pending-request limit (503, UO)",
            m.pending_overflow.clone(),
        );
        envoy.register(
            "upstream_rq_retry_overflow",
            "Retries not attempted because the cluster's maxRetries was reached",
            m.retry_overflow.clone(),
        );
        envoy.register(
            "outlier_detection_ejections_enforced_total",
            "Hosts ejected by outlier detection",
            m.ejections_enforced.clone(),
        );
        envoy.register(
            "upstream_rq_active",
            "Requests in flight to the cluster",
            m.rq_active.clone(),
        );
        envoy.register(
            "outlier_detection_ejections_active",
            "Hosts currently ejected",
            m.ejections_active.clone(),
        );
        m
    }

    pub fn label(cluster: &crate::cluster::Cluster) -> ClusterLabels {
        ClusterLabels {
            cluster_name: cluster.key.to_string(),
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    pub clusters: ClusterMetrics,
    pub tcp: TcpMetrics,
    pub denied: Family<DenyLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub hbone: HboneMetrics,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            clusters: ClusterMetrics::register(registry),
            // Opaque (non-HTTP) traffic, as Istio's waypoint reports it.
            tcp: TcpMetrics::register(registry),
            denied: Family::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            hbone: HboneMetrics::register(registry),
        };
        registry.register(
            "mesh_authorization_denied_requests",
            "Requests refused (403) by an AuthorizationPolicy, by policy and reason",
            m.denied.clone(),
        );
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register("requests", "Requests handled", m.requests.clone());
        istio.register(
            "request_duration_milliseconds",
            "Request duration",
            m.duration.clone(),
        );
        m
    }
}
