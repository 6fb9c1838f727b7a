//! Routing config the waypoint will not apply as written: objects that lose to another one for the same Service
//! (see [`crate::attach`] for who wins), and fields the waypoint cannot carry out.

use super::Analysis;
use crate::attach::{attachments, Attached, Routing};
use crate::{
    resolve_host, DestinationRule, Kind, ObjectMeta, PathModifierType, Severity, SimpleLb,
    TrafficPolicy, VirtualService,
};

/// `Kind namespace/name`, for messages.
fn named(kind: Kind, meta: &ObjectMeta) -> String {
    format!("{kind} {}/{}", meta.namespace, meta.name)
}

/// The path of the first `spec.hosts` entry of `vs` naming Service `namespace/name`.
fn host_path(vs: &VirtualService, namespace: &str, name: &str) -> String {
    let wanted = (name.to_string(), namespace.to_string());
    vs.spec
        .hosts
        .iter()
        .position(|h| resolve_host(h, &vs.metadata.namespace) == wanted)
        .map_or_else(|| "spec.hosts".to_string(), |i| format!("spec.hosts[{i}]"))
}

impl Analysis<'_> {
    /// Objects that apply to a Service but are overridden by another one.
    pub(super) fn routing_conflicts(&mut self) {
        for ((ns, name), a) in attachments(self.set) {
            let service = format!("Service {ns}/{name}");
            self.virtual_services_overridden(&ns, &name, &service, &a);
            self.traffic_splits_overridden(&service, &a);
            if let Some((winner, losers)) = a.destination_rules.split_first() {
                for dr in losers {
                    self.destination_rule_overridden(dr, winner, &service);
                }
            }
        }
    }

    fn virtual_services_overridden(
        &mut self,
        ns: &str,
        name: &str,
        service: &str,
        a: &Attached<'_>,
    ) {
        let winner = match a.routing() {
            Routing::VirtualService(vs) => Some(vs),
            _ => None,
        };
        for vs in &a.virtual_services {
            let reason = match winner {
                Some(w) if std::ptr::eq(w, *vs) => continue,
                Some(w) => format!(
                    "{service} is also a host of {}, which applies instead (of several VirtualServices for one host, the first by namespace/name wins)",
                    named(Kind::VirtualService, &w.metadata)
                ),
                None => format!(
                    "{service} has HTTPRoute/GRPCRoute routes, which take precedence: this VirtualService is ignored for it"
                ),
            };
            let path = host_path(vs, ns, name);
            self.push(
                Severity::Warning,
                Kind::VirtualService,
                &vs.metadata,
                path,
                reason,
            );
        }
    }

    fn traffic_splits_overridden(&mut self, service: &str, a: &Attached<'_>) {
        let routing = a.routing();
        for ts in &a.traffic_splits {
            let by = match routing {
                Routing::TrafficSplit(w) if std::ptr::eq(w, *ts) => continue,
                Routing::TrafficSplit(w) => named(Kind::TrafficSplit, &w.metadata),
                Routing::VirtualService(vs) => named(Kind::VirtualService, &vs.metadata),
                Routing::GatewayApi | Routing::None => "HTTPRoute/GRPCRoute routes".to_string(),
            };
            let reason = format!(
                "{service} is routed by {by}, which takes precedence: this TrafficSplit is ignored"
            );
            self.push(
                Severity::Warning,
                Kind::TrafficSplit,
                &ts.metadata,
                "spec.service".into(),
                reason,
            );
        }
    }

    fn destination_rule_overridden(
        &mut self,
        dr: &DestinationRule,
        winner: &DestinationRule,
        service: &str,
    ) {
        let reason = format!(
            "{service} already has {} (of several DestinationRules for one host, the first by namespace/name applies): this one is ignored",
            named(Kind::DestinationRule, &winner.metadata)
        );
        self.push(
            Severity::Warning,
            Kind::DestinationRule,
            &dr.metadata,
            "spec.host".into(),
            reason,
        );
    }

    /// Fields the waypoint cannot honour, so the user is not surprised.
    pub(super) fn unsupported_by_waypoint(&mut self) {
        let set = self.set;
        for vs in set.virtual_services().filter(|vs| vs.applies_to_mesh()) {
            self.virtual_service_limits(vs);
        }
        for dr in set.destination_rules() {
            let policies = dr
                .spec
                .traffic_policy
                .iter()
                .map(|tp| ("spec.trafficPolicy".to_string(), tp));
            let subsets = dr.spec.subsets.iter().enumerate().filter_map(|(i, s)| {
                s.traffic_policy
                    .as_ref()
                    .map(|tp| (format!("spec.subsets[{i}].trafficPolicy"), tp))
            });
            for (path, tp) in policies.chain(subsets).collect::<Vec<_>>() {
                self.passthrough(&dr.metadata, &path, tp);
            }
        }
        for r in set.http_routes() {
            for (i, rule) in r.spec.rules.iter().enumerate() {
                for (j, f) in rule.filters.iter().enumerate() {
                    let prefix = f
                        .request_redirect
                        .as_ref()
                        .and_then(|rd| rd.path.as_ref())
                        .and_then(|p| p.type_);
                    if prefix == Some(PathModifierType::ReplacePrefixMatch) {
                        let reason = "the waypoint's redirect replaces the whole path: ReplacePrefixMatch drops the rest of the path after the prefix; use ReplaceFullPath".to_string();
                        let path = format!("spec.rules[{i}].filters[{j}].requestRedirect.path");
                        self.push(
                            Severity::Warning,
                            Kind::HttpRoute,
                            &r.metadata,
                            path,
                            reason,
                        );
                    }
                }
            }
        }
    }

    fn virtual_service_limits(&mut self, vs: &VirtualService) {
        let meta = &vs.metadata;
        if !vs.spec.tcp.is_empty() {
            let reason = "TCP routes are not applied by this mesh (ztunnel and the waypoint route by Service only): ignored".to_string();
            self.push(
                Severity::Warning,
                Kind::VirtualService,
                meta,
                "spec.tcp".into(),
                reason,
            );
        }
        for (i, r) in vs.spec.http.iter().enumerate() {
            for (j, m) in r.matches.iter().enumerate() {
                let path = format!("spec.http[{i}].match[{j}]");
                if m.scheme.is_some() {
                    let reason =
                        "scheme matches are not supported by the waypoint: ignored".to_string();
                    self.push(
                        Severity::Warning,
                        Kind::VirtualService,
                        meta,
                        format!("{path}.scheme"),
                        reason,
                    );
                }
                if m.ignore_uri_case {
                    let reason = "case-insensitive uri matches are not supported by the waypoint: the match is case-sensitive".to_string();
                    self.push(
                        Severity::Warning,
                        Kind::VirtualService,
                        meta,
                        format!("{path}.ignoreUriCase"),
                        reason,
                    );
                }
            }
            let Some(fault) = &r.fault else { continue };
            let unset = [
                ("delay", fault.delay.as_ref().map(|d| d.percentage)),
                ("abort", fault.abort.as_ref().map(|a| a.percentage)),
            ];
            for (which, pct) in unset {
                if pct == Some(None) {
                    let reason = format!("no percentage: as in Istio, the {which} is injected into 0% of requests; set percentage.value (100 for all)");
                    self.push(
                        Severity::Warning,
                        Kind::VirtualService,
                        meta,
                        format!("spec.http[{i}].fault.{which}.percentage"),
                        reason,
                    );
                }
            }
        }
    }

    fn passthrough(&mut self, meta: &ObjectMeta, path: &str, tp: &TrafficPolicy) {
        let top = tp
            .load_balancer
            .iter()
            .map(|lb| (format!("{path}.loadBalancer.simple"), lb));
        let ports = tp
            .port_level_settings
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                p.load_balancer.as_ref().map(|lb| {
                    (
                        format!("{path}.portLevelSettings[{i}].loadBalancer.simple"),
                        lb,
                    )
                })
            });
        for (p, lb) in top.chain(ports).collect::<Vec<_>>() {
            if lb.simple == Some(SimpleLb::Passthrough) {
                let reason = "PASSTHROUGH has no meaning behind a Service address at the waypoint: LEAST_REQUEST (Istio's default) is used".to_string();
                self.push(Severity::Warning, Kind::DestinationRule, meta, p, reason);
            }
        }
    }
}
