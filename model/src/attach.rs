//! Which routing objects apply to which Service. The waypoint translation and `analyze` both read this, so the
//! object that wins a conflict is the same in what is served and in what the user is warned about.
//!
//! Every list is in `namespace/name` order (the [`ConfigSet`] order), which stands in for Kubernetes creation
//! time: where Istio lets the oldest object win, the lexically first one wins here.

use std::collections::BTreeMap;

use super::{
    resolve_host, ConfigSet, DestinationRule, GrpcRoute, HttpRoute, ParentReference, Service,
    TrafficSplit, VirtualService,
};

/// A Service, as `(namespace, name)`.
pub type ServiceRef = (String, String);

/// A Gateway API route attached to a Service through one of its `parentRefs`.
#[derive(Debug, Clone, Copy)]
pub struct RouteAttachment<'a, R> {
    pub route: &'a R,
    /// The Service port the parent reference names (`port`, or the port called `sectionName`); `None` for all
    /// ports.
    pub port: Option<u32>,
}

/// Everything that routes or shapes the traffic of one Service.
#[derive(Debug, Default)]
pub struct Attached<'a> {
    pub virtual_services: Vec<&'a VirtualService>,
    pub destination_rules: Vec<&'a DestinationRule>,
    pub traffic_splits: Vec<&'a TrafficSplit>,
    pub http_routes: Vec<RouteAttachment<'a, HttpRoute>>,
    pub grpc_routes: Vec<RouteAttachment<'a, GrpcRoute>>,
}

/// Where a Service's routes come from, in Istio's precedence: Gateway API routes over VirtualServices (Istio's
/// GAMMA guidance: do not mix them; when both exist the routes win), VirtualServices over SMI TrafficSplits (a
/// TrafficSplit is the simpler, older API), and among several of one kind the lexically first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Routing<'a> {
    GatewayApi,
    VirtualService(&'a VirtualService),
    TrafficSplit(&'a TrafficSplit),
    None,
}

impl<'a> Attached<'a> {
    pub fn routing(&self) -> Routing<'a> {
        if !self.http_routes.is_empty() || !self.grpc_routes.is_empty() {
            Routing::GatewayApi
        } else if let Some(vs) = self.virtual_services.first() {
            Routing::VirtualService(vs)
        } else if let Some(ts) = self.traffic_splits.first() {
            Routing::TrafficSplit(ts)
        } else {
            Routing::None
        }
    }

    /// The DestinationRule that applies (the lexically first of several).
    pub fn destination_rule(&self) -> Option<&'a DestinationRule> {
        self.destination_rules.first().copied()
    }
}

/// The existing Service `host` names when written in an object of namespace `ns`.
fn service_of<'a>(set: &'a ConfigSet, host: &str, ns: &str) -> Option<&'a Service> {
    let (name, namespace) = resolve_host(host, ns);
    if namespace.is_empty() {
        return None; // not a cluster Service name (external host or wildcard)
    }
    set.service(&namespace, &name)
}

fn key(s: &Service) -> ServiceRef {
    (s.metadata.namespace.clone(), s.metadata.name.clone())
}

/// The Service a `parentRef` names and the port it restricts the route to, if it names an existing Service.
fn parent_service(
    set: &ConfigSet,
    route_ns: &str,
    p: &ParentReference,
) -> Option<(ServiceRef, Option<u32>)> {
    if !p.is_service() {
        return None;
    }
    let ns = p.namespace.as_deref().unwrap_or(route_ns);
    let svc = set.service(ns, &p.name)?;
    let section_port = p.section_name.as_deref().and_then(|section| {
        svc.spec
            .ports
            .iter()
            .find(|sp| sp.name.as_deref() == Some(section))
            .map(|sp| sp.port)
    });
    Some((key(svc), p.port.or(section_port)))
}

/// Each (Service, port) a route's parentRefs name, once.
fn route_parents(
    set: &ConfigSet,
    ns: &str,
    parents: &[ParentReference],
) -> Vec<(ServiceRef, Option<u32>)> {
    let mut out = Vec::new();
    for p in parents {
        if let Some(found) = parent_service(set, ns, p) {
            if !out.contains(&found) {
                out.push(found);
            }
        }
    }
    out
}

/// Every Service with at least one routing object, and those objects.
pub fn attachments(set: &ConfigSet) -> BTreeMap<ServiceRef, Attached<'_>> {
    let mut out: BTreeMap<ServiceRef, Attached<'_>> = BTreeMap::new();
    for vs in set.virtual_services().filter(|vs| vs.applies_to_mesh()) {
        let mut named = Vec::new();
        for host in &vs.spec.hosts {
            if let Some(svc) = service_of(set, host, &vs.metadata.namespace) {
                // `order` and `order.shop.svc.cluster.local` in one VirtualService name the Service once.
                if !named.contains(&key(svc)) {
                    named.push(key(svc));
                }
            }
        }
        for k in named {
            out.entry(k).or_default().virtual_services.push(vs);
        }
    }
    for dr in set.destination_rules() {
        if let Some(svc) = service_of(set, &dr.spec.host, &dr.metadata.namespace) {
            out.entry(key(svc)).or_default().destination_rules.push(dr);
        }
    }
    for ts in set.traffic_splits() {
        if let Some(svc) = service_of(set, &ts.spec.service, &ts.metadata.namespace) {
            out.entry(key(svc)).or_default().traffic_splits.push(ts);
        }
    }
    for r in set.http_routes() {
        for (k, port) in route_parents(set, &r.metadata.namespace, &r.spec.parent_refs) {
            let attachment = RouteAttachment { route: r, port };
            out.entry(k).or_default().http_routes.push(attachment);
        }
    }
    for r in set.grpc_routes() {
        for (k, port) in route_parents(set, &r.metadata.namespace, &r.spec.parent_refs) {
            let attachment = RouteAttachment { route: r, port };
            out.entry(k).or_default().grpc_routes.push(attachment);
        }
    }
    out
}
