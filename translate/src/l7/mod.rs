//! Mesh routing APIs → the waypoint's own xDS type, `mesh.l7.v1.L7Service`: one resource per Service that a
//! VirtualService, DestinationRule, SMI TrafficSplit, HTTPRoute or GRPCRoute applies to, named
//! `<namespace>/<fqdn>` like the workload API's service keys.
//!
//! The waypoint is meant to apply the result without knowing any of those APIs, so everything is resolved here:
//! relative hosts become `<namespace>/<fqdn>` keys, every Istio (and Envoy-as-Istio-configures-it) default is
//! written out, and Gateway API rules are ranked by Gateway API precedence so that the first matching route wins.
//!
//! Which object wins when several apply to one Service is decided in [`mesh_model::attach`], which `analyze`
//! shares, so what is served and what the user is warned about agree.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use mesh_proto::mesh::l7::v1 as pb;

use crate::octets;
use mesh_model::attach::{attachments, Attached, Routing};
use mesh_model::{
    self as model, resolve_host, ConfigSet, MeshDuration, ObjectMeta, Pod, WorkloadEntry,
};
use mesh_model::{hostname, service_key};

mod authorization;
mod destination_rule;
mod gateway_api;
mod traffic_split;
mod virtual_service;

#[cfg(test)]
mod tests;

/// Every Service with routing config or waypoint authorization policy, keyed `<namespace>/<fqdn>`. Services
/// without any get no resource: the waypoint sends their traffic to themselves with its defaults.
pub fn translate(set: &ConfigSet) -> BTreeMap<String, pb::L7Service> {
    let mut out: BTreeMap<String, pb::L7Service> = attachments(set)
        .iter()
        .map(|((ns, name), attached)| (service_key(name, ns), service(set, ns, name, attached)))
        .collect();
    for svc in set.services() {
        let policies = authorization::policies_for(set, svc);
        if policies.is_empty() {
            continue;
        }
        let (ns, name) = (&svc.metadata.namespace, &svc.metadata.name);
        out.entry(service_key(name, ns))
            .or_insert_with(|| pb::L7Service {
                namespace: ns.clone(),
                hostname: hostname(name, ns),
                policy: Some(destination_rule::default_policy()),
                ..Default::default()
            })
            .authorization = policies;
    }
    out
}

fn service(set: &ConfigSet, ns: &str, name: &str, a: &Attached<'_>) -> pb::L7Service {
    let mut sources = Vec::new();
    let routes = match a.routing() {
        Routing::GatewayApi => gateway_api::routes(ns, a, &mut sources),
        Routing::VirtualService(vs) => {
            sources.push(object_name("VirtualService", &vs.metadata));
            virtual_service::routes(set, vs)
        }
        Routing::TrafficSplit(ts) => {
            sources.push(object_name("TrafficSplit", &ts.metadata));
            traffic_split::routes(ts)
        }
        Routing::None => Vec::new(),
    };
    let (policy, subsets) = match (a.destination_rule(), set.service(ns, name)) {
        (Some(dr), Some(svc)) => {
            sources.push(object_name("DestinationRule", &dr.metadata));
            destination_rule::translate(set, svc, dr)
        }
        _ => (destination_rule::default_policy(), Vec::new()),
    };
    pb::L7Service {
        namespace: ns.to_string(),
        hostname: hostname(name, ns),
        routes,
        policy: Some(policy),
        subsets,
        sources,
        authorization: Vec::new(),
    }
}

/// Sorted raw IPs (as the protos carry them) of Pods and WorkloadEntries.
fn addresses<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    entries: impl IntoIterator<Item = &'a WorkloadEntry>,
) -> Vec<Vec<u8>> {
    let pod_ips = pods.into_iter().flat_map(Pod::ips);
    let entry_ips = entries.into_iter().filter_map(WorkloadEntry::ip);
    let ips: BTreeSet<IpAddr> = pod_ips.chain(entry_ips).collect();
    ips.iter().map(octets).collect()
}

/// `Kind namespace/name`: how routes and `sources` name the object they came from.
fn object_name(kind: &str, meta: &ObjectMeta) -> String {
    format!("{kind} {}/{}", meta.namespace, meta.name)
}

/// The `<namespace>/<fqdn>` key of the Service `host` names when written in namespace `ns`. A host that is not a
/// cluster Service name (an external host) has no namespace: `/api.example.com`.
fn destination_key(host: &str, ns: &str) -> String {
    match resolve_host(host, ns) {
        (_, namespace) if namespace.is_empty() => format!("/{host}"),
        (name, namespace) => service_key(&name, &namespace),
    }
}

/// Whole milliseconds, as the proto carries durations. A non-zero duration below 1ms becomes 1ms rather than 0,
/// which would mean "not set".
fn millis(d: MeshDuration) -> u64 {
    match d.get().as_millis() {
        0 if !d.get().is_zero() => 1,
        ms => u64::try_from(ms).unwrap_or(u64::MAX),
    }
}

fn opt_millis(d: Option<MeshDuration>) -> u64 {
    d.map_or(0, millis)
}

/// What Istio retries when a route says nothing (`pilot/pkg/networking/core/route/retry`): 2 more attempts on
/// connection failures, refused or cancelled streams, gRPC `unavailable` and HTTP 503.
const DEFAULT_RETRY_ON: [&str; 6] = [
    "connect-failure",
    "refused-stream",
    "unavailable",
    "cancelled",
    "retriable-status-codes",
    "503",
];

fn default_retry() -> pb::Retry {
    pb::Retry {
        attempts: 2,
        per_try_timeout_ms: 0,
        retry_on: DEFAULT_RETRY_ON.iter().map(ToString::to_string).collect(),
    }
}

fn exact(s: &str) -> pb::StringMatch {
    kind(pb::string_match::Kind::Exact(s.to_string()))
}

fn prefix(s: &str) -> pb::StringMatch {
    kind(pb::string_match::Kind::Prefix(s.to_string()))
}

fn regex(s: &str) -> pb::StringMatch {
    kind(pb::string_match::Kind::Regex(s.to_string()))
}

fn kind(k: pb::string_match::Kind) -> pb::StringMatch {
    pb::StringMatch { kind: Some(k) }
}

/// An Istio StringMatch; `None` for the empty match (`{}`), which only asks for presence.
fn string_match(m: &model::StringMatch) -> Option<pb::StringMatch> {
    m.kind().map(|k| match k {
        model::StringMatchKind::Exact(s) => exact(s),
        model::StringMatchKind::Prefix(s) => prefix(s),
        model::StringMatchKind::Regex(s) => regex(s),
    })
}

/// Header operations with lower-case names: HTTP/2 requires them, and HTTP/1 names are case-insensitive.
fn header_ops<'a>(
    set: impl IntoIterator<Item = (&'a str, &'a str)>,
    add: impl IntoIterator<Item = (&'a str, &'a str)>,
    remove: impl IntoIterator<Item = &'a str>,
) -> pb::HeaderOps {
    pb::HeaderOps {
        set: lower_keys(set),
        add: lower_keys(add),
        remove: remove.into_iter().map(str::to_ascii_lowercase).collect(),
    }
}

fn lower_keys<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect()
}
