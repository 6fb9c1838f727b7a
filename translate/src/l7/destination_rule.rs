//! Istio DestinationRule → the host's traffic policy and subsets, with Istio's defaults written out.
//!
//! Merging follows Istio's `MergeSubsetTrafficPolicy` (pilot `networking/core/cluster_traffic_policy.go`), one
//! block at a time (`loadBalancer`, `connectionPool`, `outlierDetection`), not field by field:
//! - a `portLevelSettings` entry replaces the whole policy for its port: blocks it leaves out take their
//!   defaults, not the destination-level values (Istio's documented "port-level settings are not inherited");
//! - a subset's policy replaces each block it sets; when the subset has its own entry for a port, every block of
//!   that entry replaces the destination's, set or not.

use std::collections::BTreeSet;
use std::time::Duration;

use mesh_proto::mesh::l7::v1 as pb;

use super::{addresses, millis};
use mesh_model::{
    ConfigSet, ConnectionPoolSettings, DestinationRule, H2UpgradePolicy, LoadBalancerSettings,
    MeshDuration, OutlierDetection, Service, SimpleLb, Subset, TrafficPolicy,
};

/// Istio's (Envoy's, as Istio configures it) values for what a policy leaves unset.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

/// The blocks of a traffic policy that apply to one port.
#[derive(Debug, Clone, Copy, Default)]
struct Blocks<'a> {
    load_balancer: Option<&'a LoadBalancerSettings>,
    pool: Option<&'a ConnectionPoolSettings>,
    outlier: Option<&'a OutlierDetection>,
}

/// The policy and subsets `dr` gives Service `svc`.
pub(super) fn translate(
    set: &ConfigSet,
    svc: &Service,
    dr: &DestinationRule,
) -> (pb::TrafficPolicy, Vec<pb::Subset>) {
    let top = dr.spec.traffic_policy.as_ref();
    let subsets = dr
        .spec
        .subsets
        .iter()
        .map(|s| pb::Subset {
            name: s.name.clone(),
            labels: s.labels.clone().into_iter().collect(),
            policy: Some(policy(top, s.traffic_policy.as_ref())),
            addresses: subset_addresses(set, svc, s),
        })
        .collect();
    (policy(top, None), subsets)
}

/// The subset's members: the Service's workloads that also carry the subset's labels. The workload API only
/// carries a few labels, so the waypoint cannot work this out itself. A Service without a selector has no
/// workloads the config knows of.
fn subset_addresses(set: &ConfigSet, svc: &Service, subset: &Subset) -> Vec<Vec<u8>> {
    if svc.selector().is_empty() {
        return Vec::new();
    }
    let mut selector = svc.selector().clone();
    selector.extend(subset.labels.clone());
    let (pods, entries) = set.selected_workloads(&svc.metadata.namespace, &selector);
    addresses(pods, entries)
}

/// The policy of a Service without a DestinationRule: every default.
pub(super) fn default_policy() -> pb::TrafficPolicy {
    policy(None, None)
}

/// The merged policy of `subset` (or of the host, when `None`) over `top`, with one port-level entry for every
/// port either of them has settings for.
fn policy(top: Option<&TrafficPolicy>, subset: Option<&TrafficPolicy>) -> pb::TrafficPolicy {
    let ports: BTreeSet<u32> = [top, subset]
        .into_iter()
        .flatten()
        .flat_map(|tp| &tp.port_level_settings)
        .filter_map(|p| p.port.map(|p| p.number))
        .collect();
    let mut out = to_proto(merged(top, subset, None));
    out.port_level = ports
        .into_iter()
        .map(|port| pb::PortPolicy {
            port,
            policy: Some(to_proto(merged(top, subset, Some(port)))),
        })
        .collect();
    out
}

/// `tp` as it applies to `port`; `true` when a port-level entry replaced it.
fn for_port(tp: Option<&TrafficPolicy>, port: Option<u32>) -> (Blocks<'_>, bool) {
    let Some(tp) = tp else {
        return (Blocks::default(), false);
    };
    let entry = tp
        .port_level_settings
        .iter()
        .find(|p| port.is_some() && p.port.map(|p| p.number) == port);
    match entry {
        Some(p) => (
            Blocks {
                load_balancer: p.load_balancer.as_ref(),
                pool: p.connection_pool.as_ref(),
                outlier: p.outlier_detection.as_ref(),
            },
            true,
        ),
        None => (
            Blocks {
                load_balancer: tp.load_balancer.as_ref(),
                pool: tp.connection_pool.as_ref(),
                outlier: tp.outlier_detection.as_ref(),
            },
            false,
        ),
    }
}

fn merged<'a>(
    top: Option<&'a TrafficPolicy>,
    subset: Option<&'a TrafficPolicy>,
    port: Option<u32>,
) -> Blocks<'a> {
    let (base, _) = for_port(top, port);
    if subset.is_none() {
        return base;
    }
    let (over, whole) = for_port(subset, port);
    Blocks {
        load_balancer: if whole {
            over.load_balancer
        } else {
            over.load_balancer.or(base.load_balancer)
        },
        pool: if whole {
            over.pool
        } else {
            over.pool.or(base.pool)
        },
        outlier: if whole {
            over.outlier
        } else {
            over.outlier.or(base.outlier)
        },
    }
}

fn to_proto(b: Blocks<'_>) -> pb::TrafficPolicy {
    pb::TrafficPolicy {
        load_balancer: load_balancer(b.load_balancer) as i32,
        connection_pool: Some(pool(b.pool)),
        outlier_detection: b.outlier.map(outlier),
        port_level: Vec::new(),
    }
}

/// Istio's default is LEAST_REQUEST (since 1.14; `UNSPECIFIED` means the same). LEAST_CONN is its deprecated
/// alias. PASSTHROUGH (connect to the address the client dialled) has no meaning behind a Service VIP at a
/// waypoint, so it falls back to the default; `analyze` says so.
fn load_balancer(lb: Option<&LoadBalancerSettings>) -> pb::LoadBalancer {
    match lb.and_then(|lb| lb.simple).unwrap_or_default() {
        SimpleLb::RoundRobin => pb::LoadBalancer::RoundRobin,
        SimpleLb::Random => pb::LoadBalancer::Random,
        SimpleLb::LeastRequest
        | SimpleLb::LeastConn
        | SimpleLb::Unspecified
        | SimpleLb::Passthrough => pb::LoadBalancer::LeastRequest,
    }
}

fn or_default(d: Option<MeshDuration>, default: Duration) -> u64 {
    millis(d.unwrap_or(MeshDuration(default)))
}

/// Limits left unset stay 0, which the proto defines as unlimited (Istio's default of 2^32-1).
fn pool(p: Option<&ConnectionPoolSettings>) -> pb::ConnectionPool {
    let tcp = p.and_then(|p| p.tcp.as_ref());
    let http = p.and_then(|p| p.http.as_ref());
    let h2 = match http.and_then(|h| h.h2_upgrade_policy).unwrap_or_default() {
        H2UpgradePolicy::Default => pb::H2Upgrade::H2Default,
        H2UpgradePolicy::DoNotUpgrade => pb::H2Upgrade::H2DoNotUpgrade,
        H2UpgradePolicy::Upgrade => pb::H2Upgrade::H2Upgrade,
    };
    pb::ConnectionPool {
        max_connections: tcp.and_then(|t| t.max_connections).unwrap_or(0),
        connect_timeout_ms: or_default(
            tcp.and_then(|t| t.connect_timeout),
            DEFAULT_CONNECT_TIMEOUT,
        ),
        http1_max_pending_requests: http.and_then(|h| h.http1_max_pending_requests).unwrap_or(0),
        http2_max_requests: http.and_then(|h| h.http2_max_requests).unwrap_or(0),
        max_requests_per_connection: http
            .and_then(|h| h.max_requests_per_connection)
            .unwrap_or(0),
        max_retries: http.and_then(|h| h.max_retries).unwrap_or(0),
        idle_timeout_ms: or_default(http.and_then(|h| h.idle_timeout), DEFAULT_IDLE_TIMEOUT),
        h2_upgrade_policy: h2 as i32,
    }
}

/// Present only when the block is: Envoy's detector is off otherwise. `consecutive5xxErrors: 0` disables the 5xx
/// detector; an unset `consecutiveGatewayErrors` leaves the gateway-error detector off.
fn outlier(o: &OutlierDetection) -> pb::OutlierDetection {
    pb::OutlierDetection {
        consecutive_5xx_errors: o.consecutive_5xx_errors.unwrap_or(DEFAULT_CONSECUTIVE_5XX),
        consecutive_gateway_errors: o.consecutive_gateway_errors.unwrap_or(0),
        interval_ms: or_default(o.interval, DEFAULT_INTERVAL),
        base_ejection_time_ms: or_default(o.base_ejection_time, DEFAULT_BASE_EJECTION),
        max_ejection_percent: o
            .max_ejection_percent
            .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT),
    }
}
