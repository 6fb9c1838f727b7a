//! `networking.istio.io` DestinationRule: traffic policy (load balancing, connection pool, outlier detection,
//! per-port settings) and subsets, field for field as Istio names them, with Istio's validation rules.

use std::collections::{BTreeMap, BTreeSet};

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::istio::PortSelector;
use super::meta::{MeshDuration, ObjectMeta};
use super::validate::{check_dns_label, check_host, Findings};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DestinationRule {
    pub metadata: ObjectMeta,
    pub spec: DestinationRuleSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, CustomResource)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "DestinationRule",
    doc = "Istio traffic policy and subsets for a host",
    plural = "destinationrules",
    namespaced,
    root = "DestinationRuleResource"
)]
#[serde(default, rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    pub host: String,
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Vec<Subset>,
    pub export_to: Vec<String>,
}

impl DestinationRuleSpec {
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub port_level_settings: Vec<PortTrafficPolicy>,
}

/// A policy for one destination port, overriding the rule-wide one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    pub port: Option<PortSelector>,
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct LoadBalancerSettings {
    pub simple: Option<SimpleLb>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    #[default]
    Unspecified,
    LeastConn,
    Random,
    Passthrough,
    RoundRobin,
    LeastRequest,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ConnectionPoolSettings {
    pub tcp: Option<TcpSettings>,
    pub http: Option<HttpSettings>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct TcpSettings {
    pub max_connections: Option<u32>,
    pub connect_timeout: Option<MeshDuration>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpSettings {
    #[serde(rename = "http1MaxPendingRequests")]
    pub http1_max_pending_requests: Option<u32>,
    #[serde(rename = "http2MaxRequests")]
    pub http2_max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
    pub idle_timeout: Option<MeshDuration>,
    #[serde(rename = "h2UpgradePolicy")]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    #[default]
    Default,
    DoNotUpgrade,
    Upgrade,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct OutlierDetection {
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub interval: Option<MeshDuration>,
    pub base_ejection_time: Option<MeshDuration>,
    pub max_ejection_percent: Option<u32>,
    pub min_health_percent: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct Subset {
    pub name: String,
    /// Added to the Service's selector to pick the subset's workloads.
    pub labels: BTreeMap<String, String>,
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Istio rejects these durations below 1ms: zero would mean "never" or "eject forever".
fn at_least_1ms(f: &mut Findings, path: String, d: Option<MeshDuration>) {
    if d.is_some_and(|d| d.0 < std::time::Duration::from_millis(1)) {
        f.error(path, "must be at least 1ms");
    }
}

fn validate_pool_and_outlier(
    f: &mut Findings,
    path: &str,
    pool: &Option<ConnectionPoolSettings>,
    od: &Option<OutlierDetection>,
) {
    if let Some(p) = pool {
        if let Some(tcp) = &p.tcp {
            at_least_1ms(
                f,
                format!("{path}.connectionPool.tcp.connectTimeout"),
                tcp.connect_timeout,
            );
        }
        if let Some(http) = &p.http {
            at_least_1ms(
                f,
                format!("{path}.connectionPool.http.idleTimeout"),
                http.idle_timeout,
            );
        }
    }
    if let Some(o) = od {
        let p = format!("{path}.outlierDetection");
        at_least_1ms(f, format!("{p}.interval"), o.interval);
        at_least_1ms(f, format!("{p}.baseEjectionTime"), o.base_ejection_time);
        for (field, v) in [
            ("maxEjectionPercent", o.max_ejection_percent),
            ("minHealthPercent", o.min_health_percent),
        ] {
            if v.is_some_and(|v| v > 100) {
                f.error(format!("{p}.{field}"), "must be between 0 and 100");
            }
        }
    }
}

fn validate_traffic_policy(f: &mut Findings, path: &str, tp: &TrafficPolicy) {
    validate_pool_and_outlier(f, path, &tp.connection_pool, &tp.outlier_detection);
    let mut seen = BTreeSet::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let pp = format!("{path}.portLevelSettings[{i}]");
        match pl.port {
            None => f.error(format!("{pp}.port"), "required"),
            Some(p) => {
                f.port(format!("{pp}.port.number"), p.number);
                if !seen.insert(p.number) {
                    f.error(
                        format!("{pp}.port.number"),
                        "duplicate port in portLevelSettings",
                    );
                }
            }
        }
        validate_pool_and_outlier(f, &pp, &pl.connection_pool, &pl.outlier_detection);
    }
}

impl DestinationRule {
    pub(crate) fn validate(&self, f: &mut Findings) {
        let s = &self.spec;
        f.required("spec.host", &s.host);
        if !s.host.is_empty() {
            f.check("spec.host", check_host(&s.host));
        }
        if let Some(tp) = &s.traffic_policy {
            validate_traffic_policy(f, "spec.trafficPolicy", tp);
        }
        let mut names = BTreeMap::new();
        for (i, sub) in s.subsets.iter().enumerate() {
            let path = format!("spec.subsets[{i}]");
            if sub.name.is_empty() {
                f.error(format!("{path}.name"), "required");
            } else {
                f.check(format!("{path}.name"), check_dns_label(&sub.name));
                if let Some(first) = names.insert(sub.name.as_str(), i) {
                    f.error(
                        format!("{path}.name"),
                        format!("duplicate of spec.subsets[{first}].name"),
                    );
                }
            }
            f.labels(&format!("{path}.labels"), &sub.labels);
            if let Some(tp) = &sub.traffic_policy {
                validate_traffic_policy(f, &format!("{path}.trafficPolicy"), tp);
            }
        }
    }
}
