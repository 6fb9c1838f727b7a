//! Security policy → ztunnel's `istio.security.Authorization` (Istio's wire format for L4 policy).
//!
//! - AuthorizationPolicy bound by `selector` (or none) becomes one Authorization: GLOBAL in the root namespace,
//!   NAMESPACE without a selector, WORKLOAD_SELECTOR with one (then each selected workload lists it in its
//!   `authorization_policies`). Policies with `targetRefs` belong to waypoints and are not sent to ztunnel.
//!   AUDIT has no effect on traffic and is not sent; CUSTOM is rejected by validation.
//! - Attributes only an L7 proxy sees fail closed at L4, as in Istio: an ALLOW rule using one never matches; in a
//!   DENY rule the L7 part is dropped, so the rest of the rule denies regardless of it.
//! - PeerAuthentication is resolved per workload (workload selector over namespace over mesh-wide, UNSET
//!   inherits, default PERMISSIVE, `portLevelMtls` per target port) and STRICT becomes a DENY of connections
//!   without a peer principal, on the strict ports. Workloads with the same outcome share one policy.

use std::collections::{BTreeMap, BTreeSet};

use mesh_proto::istio::security::{
    string_match::MatchType, Action, Address, Authorization, Clause, Match, Rule as PbRule, Scope,
    StringMatch,
};

use mesh_model::validate::parse_cidr;
use mesh_model::{
    labels_match, AuthorizationPolicy, AuthzAction, ConfigSet, MtlsMode, PeerAuthentication, Rule,
};

/// Policies by resource name (`<namespace>/<name>`), and which WORKLOAD_SELECTOR policies bind each workload.
#[derive(Default)]
pub struct Translated {
    pub policies: BTreeMap<String, Authorization>,
}

/// What a workload needs to be bound.
pub struct WorkloadRef<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

pub struct Translator<'a> {
    set: &'a ConfigSet,
    root_namespace: &'a str,
    pub out: Translated,
}

impl<'a> Translator<'a> {
    /// Translates every selector-bound AuthorizationPolicy.
    pub fn new(set: &'a ConfigSet, root_namespace: &'a str) -> Self {
        let mut out = Translated::default();
        for ap in set.authorization_policies() {
            if let Some(p) = authorization(ap, root_namespace) {
                out.policies.insert(key(&p.namespace, &p.name), p);
            }
        }
        Self {
            set,
            root_namespace,
            out,
        }
    }

    /// The WORKLOAD_SELECTOR policies bound to `w` (its selected AuthorizationPolicies and its mTLS policy),
    /// adding the converted PeerAuthentication policy it needs.
    pub fn bind(&mut self, w: &WorkloadRef<'_>) -> Vec<String> {
        let mut names: Vec<String> = self
            .set
            .authorization_policies()
            .filter(|ap| ap.metadata.namespace == w.namespace && is_l4(ap))
            .filter(|ap| {
                ap.spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| labels_match(&s.match_labels, w.labels))
            })
            .filter(|ap| ap.spec.action != AuthzAction::Audit)
            .map(|ap| key(&ap.metadata.namespace, &ap.metadata.name))
            .collect();
        if let Some(p) = self.peer_authentication(w) {
            names.push(key(&p.namespace, &p.name));
            self.out.policies.insert(key(&p.namespace, &p.name), p);
        }
        names
    }

    /// The converted STRICT policy for `w`, if any of its ports is STRICT.
    fn peer_authentication(&self, w: &WorkloadRef<'_>) -> Option<Authorization> {
        let pas: Vec<&PeerAuthentication> = self.set.peer_authentications().collect();
        let mesh = pas
            .iter()
            .find(|p| p.metadata.namespace == self.root_namespace && p.spec.selector.is_none());
        let ns = pas
            .iter()
            .find(|p| p.metadata.namespace == w.namespace && p.spec.selector.is_none());
        // The oldest (here: first by name) of several selecting policies wins, as in Istio.
        let workload = pas.iter().find(|p| {
            p.metadata.namespace == w.namespace
                && p.spec.selector.as_ref().is_some_and(|s| {
                    !s.match_labels.is_empty() && labels_match(&s.match_labels, w.labels)
                })
        });
        let inherit = |m: MtlsMode, parent: MtlsMode| if m == MtlsMode::Unset { parent } else { m };
        let mut mode = MtlsMode::Permissive;
        for p in [mesh, ns, workload].into_iter().flatten() {
            mode = inherit(p.spec.mtls.map(|m| m.mode).unwrap_or_default(), mode);
        }
        let ports: BTreeMap<u32, MtlsMode> = workload
            .map(|p| {
                p.spec
                    .port_level_mtls
                    .iter()
                    .map(|(port, m)| (*port, inherit(m.mode, mode)))
                    .collect()
            })
            .unwrap_or_default();
        let strict_ports: BTreeSet<u32> = ports
            .iter()
            .filter(|(_, m)| **m == MtlsMode::Strict)
            .map(|(p, _)| *p)
            .collect();
        let lax_ports: BTreeSet<u32> = ports
            .iter()
            .filter(|(_, m)| **m != MtlsMode::Strict)
            .map(|(p, _)| *p)
            .collect();
        let no_principal = Match {
            not_principals: vec![presence()],
            ..Default::default()
        };
        let (name, port_match) = match (
            mode == MtlsMode::Strict,
            lax_ports.is_empty(),
            strict_ports.is_empty(),
        ) {
            (true, true, _) => ("strict".to_string(), None),
            (true, false, _) => (
                format!("strict-except-{}", join(&lax_ports)),
                Some(Match {
                    not_destination_ports: lax_ports.into_iter().collect(),
                    ..Default::default()
                }),
            ),
            (false, _, false) => (
                format!("strict-{}", join(&strict_ports)),
                Some(Match {
                    destination_ports: strict_ports.into_iter().collect(),
                    ..Default::default()
                }),
            ),
            (false, _, true) => return None,
        };
        let mut clauses = vec![Clause {
            matches: vec![no_principal],
        }];
        clauses.extend(port_match.map(|m| Clause { matches: vec![m] }));
        Some(Authorization {
            name: format!("converted_peer_authentication_{name}"),
            namespace: w.namespace.to_string(),
            scope: Scope::WorkloadSelector as i32,
            action: Action::Deny as i32,
            rules: vec![PbRule { clauses }],
            dry_run: false,
        })
    }
}

fn join(ports: &BTreeSet<u32>) -> String {
    ports
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join("-")
}

fn key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// Bound to workloads (ztunnel), not to a waypoint or Service.
fn is_l4(ap: &AuthorizationPolicy) -> bool {
    ap.spec.all_target_refs().next().is_none()
}

fn authorization(ap: &AuthorizationPolicy, root_namespace: &str) -> Option<Authorization> {
    if !is_l4(ap) {
        return None;
    }
    let action = match ap.spec.action {
        AuthzAction::Allow => Action::Allow,
        AuthzAction::Deny => Action::Deny,
        AuthzAction::Audit | AuthzAction::Custom => return None,
    };
    let scope = match (&ap.spec.selector, ap.metadata.namespace == root_namespace) {
        (Some(_), _) => Scope::WorkloadSelector,
        (None, true) => Scope::Global,
        (None, false) => Scope::Namespace,
    };
    Some(Authorization {
        name: ap.metadata.name.clone(),
        namespace: ap.metadata.namespace.clone(),
        scope: scope as i32,
        action: action as i32,
        rules: ap
            .spec
            .rules
            .iter()
            .filter_map(|r| rule(r, action))
            .collect(),
        dry_run: false,
    })
}

fn presence() -> StringMatch {
    StringMatch {
        match_type: Some(MatchType::Presence(())),
    }
}

/// Istio's string forms: `*` (present), `abc*`, `*abc`, `abc`.
fn string_match(v: &str) -> StringMatch {
    let t = if v == "*" {
        MatchType::Presence(())
    } else if let Some(p) = v.strip_suffix('*') {
        MatchType::Prefix(p.to_string())
    } else if let Some(s) = v.strip_prefix('*') {
        MatchType::Suffix(s.to_string())
    } else {
        MatchType::Exact(v.to_string())
    };
    StringMatch {
        match_type: Some(t),
    }
}

fn strings(v: &[String]) -> Vec<StringMatch> {
    v.iter().map(|s| string_match(s)).collect()
}

fn cidrs<'a>(v: impl IntoIterator<Item = &'a String>) -> Vec<Address> {
    v.into_iter()
        .filter_map(|c| parse_cidr(c).ok())
        .map(|net| Address {
            address: crate::octets(&net.addr()),
            length: u32::from(net.prefix_len()),
        })
        .collect()
}

fn ports(v: &[String]) -> Vec<u32> {
    v.iter().filter_map(|p| p.parse().ok()).collect()
}

/// One rule; `None` when an ALLOW rule needs an L7 attribute (it can never match at L4).
fn rule(r: &Rule, action: Action) -> Option<PbRule> {
    let mut l7 = false;
    let mut clauses = Vec::new();
    if !r.from.is_empty() {
        let matches = r
            .from
            .iter()
            .map(|f| {
                let s = f.source.clone().unwrap_or_default();
                l7 |= !s.request_principals.is_empty() || !s.not_request_principals.is_empty();
                Match {
                    principals: strings(&s.principals),
                    not_principals: strings(&s.not_principals),
                    namespaces: strings(&s.namespaces),
                    not_namespaces: strings(&s.not_namespaces),
                    source_ips: cidrs(s.ip_blocks.iter().chain(&s.remote_ip_blocks)),
                    not_source_ips: cidrs(s.not_ip_blocks.iter().chain(&s.not_remote_ip_blocks)),
                    ..Default::default()
                }
            })
            .collect();
        clauses.push(Clause { matches });
    }
    if !r.to.is_empty() {
        let matches =
            r.to.iter()
                .map(|t| {
                    let o = t.operation.clone().unwrap_or_default();
                    l7 |= [
                        &o.hosts,
                        &o.not_hosts,
                        &o.methods,
                        &o.not_methods,
                        &o.paths,
                        &o.not_paths,
                    ]
                    .iter()
                    .any(|v| !v.is_empty());
                    Match {
                        destination_ports: ports(&o.ports),
                        not_destination_ports: ports(&o.not_ports),
                        ..Default::default()
                    }
                })
                .collect();
        clauses.push(Clause { matches });
    }
    for c in &r.when {
        let mut m = Match::default();
        match c.key.as_str() {
            "source.ip" | "remote.ip" => {
                m.source_ips = cidrs(&c.values);
                m.not_source_ips = cidrs(&c.not_values);
            }
            "source.namespace" => {
                m.namespaces = strings(&c.values);
                m.not_namespaces = strings(&c.not_values);
            }
            "source.principal" => {
                m.principals = strings(&c.values);
                m.not_principals = strings(&c.not_values);
            }
            "destination.ip" => {
                m.destination_ips = cidrs(&c.values);
                m.not_destination_ips = cidrs(&c.not_values);
            }
            "destination.port" => {
                m.destination_ports = ports(&c.values);
                m.not_destination_ports = ports(&c.not_values);
            }
            _ => {
                l7 = true;
                continue;
            }
        }
        clauses.push(Clause { matches: vec![m] });
    }
    if l7 && action == Action::Allow {
        return None;
    }
    Some(PbRule { clauses })
}
