//! Cross-object checks over a whole [`ConfigSet`], in the spirit of `istioctl analyze`. Nothing here rejects
//! config: each object is valid on its own; these are references that lead nowhere or rules that will not
//! do what their author expects.

use std::collections::BTreeMap;

use super::waypoint::waypoint_address;
use super::{
    resolve_host, ConfigSet, Destination, Diagnostic, Gateway, Kind, ObjectKey, ObjectMeta,
    Severity, LABEL_GATEWAY_NAME, LABEL_USE_WAYPOINT, LABEL_USE_WAYPOINT_NAMESPACE,
};

mod routing;

/// Run every check; diagnostics carry the file of the object they are about.
pub fn analyze(set: &ConfigSet) -> Vec<Diagnostic> {
    let mut a = Analysis {
        set,
        out: Vec::new(),
    };
    a.destination_rules();
    a.virtual_services();
    a.traffic_splits();
    a.waypoints();
    a.authorization_policies();
    a.routes();
    a.routing_conflicts();
    a.unsupported_by_waypoint();
    a.out
}

struct Analysis<'a> {
    set: &'a ConfigSet,
    out: Vec<Diagnostic>,
}

impl Analysis<'_> {
    fn push(
        &mut self,
        severity: Severity,
        kind: Kind,
        meta: &ObjectMeta,
        path: String,
        reason: String,
    ) {
        let key = ObjectKey::new(kind, &meta.namespace, &meta.name);
        let file = self.set.source(&key).map(|p| p.to_path_buf());
        self.out
            .push(Diagnostic::new(severity, &key, path, reason).in_file(file));
    }

    /// `Some(false)` when `host` names a cluster Service that does not exist; `None` for hosts outside the
    /// cluster (FQDNs, wildcards), which this model cannot check.
    fn service_missing(&self, host: &str, ns: &str) -> Option<(String, String)> {
        let (name, namespace) = resolve_host(host, ns);
        (!namespace.is_empty() && self.set.service(&namespace, &name).is_none())
            .then_some((name, namespace))
    }

    /// `name.namespace` is not a Service name in Istio's eyes (a short name or `name.namespace.svc[.cluster.local]`
    /// is): Istio takes it for an external host, so it silently routes nowhere. Say so when that Service exists.
    fn partial_name(&mut self, kind: Kind, meta: &ObjectMeta, path: String, host: &str) {
        let Some((name, ns)) = host.split_once('.') else {
            return;
        };
        if ns.contains('.') || host.contains('*') || self.set.service(ns, name).is_none() {
            return;
        }
        let reason = format!(
            "host {host:?} does not name Service {name} in namespace {ns} (Istio reads it as an external host): write {name}.{ns}.svc.cluster.local"
        );
        self.push(Severity::Warning, kind, meta, path, reason);
    }

    fn destination_rules(&mut self) {
        for dr in self.set.destination_rules() {
            let ns = &dr.metadata.namespace;
            self.partial_name(
                Kind::DestinationRule,
                &dr.metadata,
                "spec.host".into(),
                &dr.spec.host,
            );
            if let Some((name, namespace)) = self.service_missing(&dr.spec.host, ns) {
                let reason = format!(
                    "host {:?}: no Service {name} in namespace {namespace}",
                    dr.spec.host
                );
                self.push(
                    Severity::Warning,
                    Kind::DestinationRule,
                    &dr.metadata,
                    "spec.host".into(),
                    reason,
                );
                continue;
            }
            let (name, namespace) = resolve_host(&dr.spec.host, ns);
            let Some(svc) = self.set.service(&namespace, &name) else {
                continue;
            };
            for (i, subset) in dr.spec.subsets.iter().enumerate() {
                let mut selector: BTreeMap<String, String> = svc.spec.selector.clone();
                selector.extend(subset.labels.clone());
                if subset.labels.is_empty() || selector.is_empty() {
                    continue;
                }
                let (pods, entries) = self.set.selected_workloads(&namespace, &selector);
                if pods.is_empty() && entries.is_empty() {
                    let reason = format!(
                        "subset {:?} selects no Pod or WorkloadEntry of Service {name} in namespace {namespace}",
                        subset.name
                    );
                    self.push(
                        Severity::Warning,
                        Kind::DestinationRule,
                        &dr.metadata,
                        format!("spec.subsets[{i}].labels"),
                        reason,
                    );
                }
            }
        }
    }

    /// Does some DestinationRule for the same host define `subset`?
    fn subset_defined(&self, host: &str, ns: &str, subset: &str) -> bool {
        let target = resolve_host(host, ns);
        self.set.destination_rules().any(|dr| {
            let same_host = if target.1.is_empty() {
                dr.spec.host == host
            } else {
                resolve_host(&dr.spec.host, &dr.metadata.namespace) == target
            };
            same_host && dr.spec.subset(subset).is_some()
        })
    }

    fn check_destination(&mut self, meta: &ObjectMeta, path: String, d: &Destination) {
        let ns = &meta.namespace;
        self.partial_name(Kind::VirtualService, meta, format!("{path}.host"), &d.host);
        if let Some((name, namespace)) = self.service_missing(&d.host, ns) {
            let reason = format!(
                "host {:?}: no Service {name} in namespace {namespace}",
                d.host
            );
            self.push(
                Severity::Warning,
                Kind::VirtualService,
                meta,
                format!("{path}.host"),
                reason,
            );
        }
        if let Some(subset) = &d.subset {
            if !self.subset_defined(&d.host, ns, subset) {
                let reason = format!(
                    "subset {subset:?} is not defined by any DestinationRule for host {:?}",
                    d.host
                );
                self.push(
                    Severity::Error,
                    Kind::VirtualService,
                    meta,
                    format!("{path}.subset"),
                    reason,
                );
            }
        }
    }

    fn check_weights(&mut self, meta: &ObjectMeta, path: String, weights: &[Option<u32>]) {
        if weights.len() < 2 {
            return; // a single destination gets everything, whatever its weight
        }
        let total: u64 = weights.iter().map(|w| u64::from(w.unwrap_or(0))).sum();
        if total != 100 {
            let reason = format!("route weights add up to {total}, not 100; Istio normalizes them");
            self.push(Severity::Warning, Kind::VirtualService, meta, path, reason);
        }
    }

    fn virtual_services(&mut self) {
        for vs in self.set.virtual_services() {
            let meta = &vs.metadata;
            for (i, host) in vs.spec.hosts.iter().enumerate() {
                self.partial_name(Kind::VirtualService, meta, format!("spec.hosts[{i}]"), host);
                if let Some((name, namespace)) = self.service_missing(host, &meta.namespace) {
                    let reason =
                        format!("host {host:?}: no Service {name} in namespace {namespace}");
                    self.push(
                        Severity::Warning,
                        Kind::VirtualService,
                        meta,
                        format!("spec.hosts[{i}]"),
                        reason,
                    );
                }
            }
            for (i, r) in vs.spec.http.iter().enumerate() {
                for (j, d) in r.route.iter().enumerate() {
                    self.check_destination(
                        meta,
                        format!("spec.http[{i}].route[{j}].destination"),
                        &d.destination,
                    );
                }
                if let Some(m) = &r.mirror {
                    self.check_destination(meta, format!("spec.http[{i}].mirror"), m);
                }
                let weights: Vec<_> = r.route.iter().map(|d| d.weight).collect();
                self.check_weights(meta, format!("spec.http[{i}].route"), &weights);
            }
            for (i, r) in vs.spec.tcp.iter().enumerate() {
                for (j, d) in r.route.iter().enumerate() {
                    self.check_destination(
                        meta,
                        format!("spec.tcp[{i}].route[{j}].destination"),
                        &d.destination,
                    );
                }
                let weights: Vec<_> = r.route.iter().map(|d| d.weight).collect();
                self.check_weights(meta, format!("spec.tcp[{i}].route"), &weights);
            }
        }
    }

    fn traffic_splits(&mut self) {
        for ts in self.set.traffic_splits() {
            let meta = &ts.metadata;
            let refs = std::iter::once(("spec.service".to_string(), &ts.spec.service));
            let refs = refs.chain(
                ts.spec
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (format!("spec.backends[{i}].service"), &b.service)),
            );
            for (path, svc) in refs {
                if let Some((name, namespace)) = self.service_missing(svc, &meta.namespace) {
                    let reason = format!("no Service {name} in namespace {namespace}");
                    self.push(Severity::Warning, Kind::TrafficSplit, meta, path, reason);
                }
            }
        }
    }

    /// `istio.io/use-waypoint` on a Namespace, Service, Pod or WorkloadEntry must name a waypoint Gateway.
    fn waypoints(&mut self) {
        let set = self.set;
        let labelled = set
            .namespaces()
            .map(|n| {
                (
                    Kind::Namespace,
                    &n.metadata,
                    n.metadata.name.as_str(),
                    &n.metadata.labels,
                )
            })
            .chain(set.services().map(|s| {
                (
                    Kind::Service,
                    &s.metadata,
                    s.metadata.namespace.as_str(),
                    &s.metadata.labels,
                )
            }))
            .chain(set.pods().map(|p| {
                (
                    Kind::Pod,
                    &p.metadata,
                    p.metadata.namespace.as_str(),
                    &p.metadata.labels,
                )
            }))
            .chain(set.workload_entries().map(|w| {
                (
                    Kind::WorkloadEntry,
                    &w.metadata,
                    w.metadata.namespace.as_str(),
                    &w.metadata.labels,
                )
            }));
        for (kind, meta, own_ns, labels) in labelled {
            let Some(waypoint) = labels.get(LABEL_USE_WAYPOINT).filter(|w| *w != "none") else {
                continue;
            };
            let ns = labels
                .get(LABEL_USE_WAYPOINT_NAMESPACE)
                .map_or(own_ns, String::as_str);
            let path = format!("metadata.labels.{LABEL_USE_WAYPOINT}");
            match set.gateway(ns, waypoint) {
                None => {
                    let reason =
                        format!("waypoint {waypoint:?}: no Gateway {waypoint} in namespace {ns}");
                    self.push(Severity::Warning, kind, meta, path, reason);
                }
                Some(gw) if !gw.is_waypoint() => {
                    let reason = format!(
                        "Gateway {ns}/{waypoint} is not a waypoint (gatewayClassName {:?}, expected \"istio-waypoint\")",
                        gw.spec.gateway_class_name
                    );
                    self.push(Severity::Warning, kind, meta, path, reason);
                }
                Some(gw) => {
                    if let Some(reason) = self.waypoint_unusable(kind, gw) {
                        self.push(Severity::Warning, kind, meta, path, reason);
                    }
                }
            }
        }
    }

    /// Why traffic will not reach an existing waypoint yet: it has no address, or (named by a Service) it does not
    /// take Service traffic.
    fn waypoint_unusable(&self, kind: Kind, gw: &Gateway) -> Option<String> {
        let (ns, name) = (&gw.metadata.namespace, &gw.metadata.name);
        if waypoint_address(self.set, ns, name).is_none() {
            return Some(format!(
                "waypoint Gateway {ns}/{name} has no address yet (no Service with a cluster IP or Pod with an IP labelled {LABEL_GATEWAY_NAME}: {name}): traffic bypasses it"
            ));
        }
        (kind == Kind::Service && !gw.serves_services()).then(|| {
            format!(
                "waypoint Gateway {ns}/{name} is for {:?} traffic, not services (label istio.io/waypoint-for): the Service's traffic bypasses it",
                gw.waypoint_for()
            )
        })
    }

    fn authorization_policies(&mut self) {
        for ap in self.set.authorization_policies() {
            let meta = &ap.metadata;
            let refs: Vec<_> = ap.spec.all_target_refs().collect();
            if refs.is_empty() {
                // Bound by selector (or namespace-wide): enforced by ztunnel, which sees no HTTP.
                for path in ap.spec.l7_attributes() {
                    let reason = "L7 rule enforced by ztunnel fails closed: bind the policy to a waypoint with targetRefs";
                    self.push(
                        Severity::Warning,
                        Kind::AuthorizationPolicy,
                        meta,
                        path,
                        reason.to_string(),
                    );
                }
            }
            let refs = ap
                .spec
                .target_ref
                .iter()
                .map(|r| ("spec.targetRef".to_string(), r));
            let refs = refs.chain(
                ap.spec
                    .target_refs
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
            );
            for (path, r) in refs {
                let exists = match r.kind.as_str() {
                    "Gateway" => self.set.gateway(&meta.namespace, &r.name).is_some(),
                    "Service" => self.set.service(&meta.namespace, &r.name).is_some(),
                    _ => true, // GatewayClass, ServiceEntry: not modeled
                };
                if !exists {
                    let reason =
                        format!("no {} {} in namespace {}", r.kind, r.name, meta.namespace);
                    self.push(
                        Severity::Warning,
                        Kind::AuthorizationPolicy,
                        meta,
                        format!("{path}.name"),
                        reason,
                    );
                }
            }
        }
    }

    /// HTTPRoute/GRPCRoute parents and backends that do not exist.
    fn routes(&mut self) {
        let set = self.set;
        let http = set.http_routes().map(|r| {
            let backends = r.spec.rules.iter().enumerate().flat_map(|(i, rule)| {
                rule.backend_refs
                    .iter()
                    .enumerate()
                    .map(move |(j, b)| (format!("spec.rules[{i}].backendRefs[{j}]"), b))
            });
            (
                Kind::HttpRoute,
                &r.metadata,
                &r.spec.parent_refs,
                backends.collect::<Vec<_>>(),
            )
        });
        let grpc = set.grpc_routes().map(|r| {
            let backends = r.spec.rules.iter().enumerate().flat_map(|(i, rule)| {
                rule.backend_refs
                    .iter()
                    .enumerate()
                    .map(move |(j, b)| (format!("spec.rules[{i}].backendRefs[{j}]"), b))
            });
            (
                Kind::GrpcRoute,
                &r.metadata,
                &r.spec.parent_refs,
                backends.collect::<Vec<_>>(),
            )
        });
        for (kind, meta, parents, backends) in http.chain(grpc) {
            for (i, p) in parents.iter().enumerate() {
                let ns = p.namespace.as_deref().unwrap_or(&meta.namespace);
                let exists = match p.kind.as_str() {
                    "Gateway" => set.gateway(ns, &p.name).is_some(),
                    "Service" => set.service(ns, &p.name).is_some(),
                    _ => true,
                };
                if !exists {
                    let reason = format!("no {} {} in namespace {ns}", p.kind, p.name);
                    self.push(
                        Severity::Warning,
                        kind,
                        meta,
                        format!("spec.parentRefs[{i}].name"),
                        reason,
                    );
                }
            }
            for (path, b) in backends {
                let ns = b.namespace.as_deref().unwrap_or(&meta.namespace);
                if b.kind == "Service" && b.group.is_empty() && set.service(ns, &b.name).is_none() {
                    let reason = format!("no Service {} in namespace {ns}", b.name);
                    self.push(
                        Severity::Warning,
                        kind,
                        meta,
                        format!("{path}.name"),
                        reason,
                    );
                }
            }
        }
    }
}
